//! Reading dataset files: plain or gzipped, with errors that name the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use cnn_tensor::{Error, Result};

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
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut bytes).map_err(|e| {
        Error::Format { context: gz.display().to_string(), msg: format!("gzip: {e}") }
    })?;
    Ok((gz, bytes))
}

pub(crate) fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { context: path.display().to_string(), msg: msg.into() }
}
