//! Reading dataset files: plain or gzipped, with errors that name the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use cnn_tensor::{Error, Result};

/// The most bytes a gzipped dataset file may decompress to: 1 GiB (MNIST's
/// largest file is 47 MB, CIFAR-100's 150 MB), so that a corrupt or hostile
/// stream cannot take all memory.
pub(crate) const MAX_DECOMPRESSED: u64 = 1 << 30;

/// The bytes of `path`, or of `path.gz` decompressed when only that exists.
///
/// # Errors
/// [`Error::Io`] naming the path when neither can be read; [`Error::Format`] for a bad gzip stream.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<(PathBuf, Vec<u8>)> {
    if path.exists() {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io { context: format!("read {}", path.display()), source: e })?;
        return Ok((path.to_path_buf(), bytes));
    }
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    let raw = std::fs::read(&gz).map_err(|e| Error::Io {
        context: format!("read {} (or .gz)", path.display()),
        source: e,
    })?;
    let bytes = gunzip(&raw, MAX_DECOMPRESSED)
        .map_err(|msg| Error::Format { context: gz.display().to_string(), msg })?;
    Ok((gz, bytes))
}

/// Decompresses a gzip stream of at most `max` bytes.
pub(crate) fn gunzip(raw: &[u8], max: u64) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("gzip: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("gzip: decompresses to more than {max} bytes"));
    }
    Ok(bytes)
}

pub(crate) fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { context: path.display().to_string(), msg: msg.into() }
}
