//! Files written so that a crash never leaves half of one.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `data` to `path` atomically: a temporary file beside it, flushed to
/// disk, then renamed over `path`. Readers see the old file or the new one,
/// never a mix.
///
/// # Errors
/// [`Error::Io`] naming the path and the step that failed.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let io = |what: &str, source| Error::io(what, path, source);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::config("write", format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(data).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| io("rename into", e))
    })();
    if written.is_err() {
        // A full disk leaves a half-written temporary: give its space back.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("cnn-write-atomic-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("target/inside")).unwrap();
        std::fs::write(dir.join("kept"), b"old").unwrap();
        write_atomic(&dir.join("kept"), b"new").unwrap();
        assert_eq!(std::fs::read(dir.join("kept")).unwrap(), b"new");
        // Renaming over a non-empty directory fails after the data was written.
        let e = write_atomic(&dir.join("target"), b"data").unwrap_err().to_string();
        assert!(e.starts_with("rename into ") && e.contains("target"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
