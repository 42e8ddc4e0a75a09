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
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        return Ok((path.to_path_buf(), bytes));
    }
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    let raw = std::fs::read(&gz).map_err(|e| Error::io("read", path, e).with_note("or .gz"))?;
    let bytes = gunzip(&raw, MAX_DECOMPRESSED, &gz.display().to_string())?;
    Ok((gz, bytes))
}

/// Decompresses a gzip stream (every member) of at most `max` bytes; errors
/// and a panic inside the decoder name `file`.
pub(crate) fn gunzip(raw: &[u8], max: u64, file: &str) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::format(file, msg);
    cnn_tensor::untrusted::contain_panic(file, "the gzip decoder", || {
        let mut bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(raw)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("gzip: {e}")))?;
        if bytes.len() as u64 > max {
            return Err(bad(format!("gzip: decompresses to more than {max} bytes")));
        }
        Ok(bytes)
    })
}
