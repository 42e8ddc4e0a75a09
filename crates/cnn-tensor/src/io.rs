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
    let io =
        |what: &str, source| Error::Io { context: format!("{what} {}", path.display()), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::config("write", format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    file.write_all(data).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io("rename into", e))?;
    Ok(())
}
