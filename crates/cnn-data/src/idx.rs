//! MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST).

use std::path::Path;

use cnn_tensor::{Error, Result};
use ndarray::Array3;

use crate::files::read_maybe_gz;
use crate::Dataset;

/// Images and labels from a pair of IDX files: `1×rows×cols` in [0, 1], classes 0–9.
#[derive(Debug, Clone)]
pub struct IdxDataset {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
    classes: Vec<String>,
}

fn be_u32(bytes: &[u8], at: usize) -> Option<usize> {
    bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Parses IDX image bytes: magic `0x00000803`, count, rows, cols, then pixels.
pub(crate) fn parse_images(bytes: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    if bytes.len() < 16 {
        return Err(Error::format(
            path.display(),
            format!("{} bytes is too short for an IDX image header", bytes.len()),
        ));
    }
    if bytes[..4] != [0, 0, 8, 3] {
        return Err(Error::format(
            path.display(),
            format!("magic {:02x?} is not an IDX image file (00 00 08 03)", &bytes[..4]),
        ));
    }
    let (n, rows, cols) = (
        be_u32(bytes, 4).unwrap_or(0),
        be_u32(bytes, 8).unwrap_or(0),
        be_u32(bytes, 12).unwrap_or(0),
    );
    let want = n
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| Error::format(path.display(), "sizes overflow"))?;
    if bytes.len() - 16 != want {
        return Err(Error::format(
            path.display(),
            format!(
                "{n} images of {rows}x{cols} need {want} bytes, the file has {}",
                bytes.len() - 16
            ),
        ));
    }
    Ok((n, rows, cols, bytes[16..].to_vec()))
}

/// Parses IDX label bytes: magic `0x00000801`, count, then labels 0–9.
pub(crate) fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if bytes.len() < 8 {
        return Err(Error::format(
            path.display(),
            format!("{} bytes is too short for an IDX label header", bytes.len()),
        ));
    }
    if bytes[..4] != [0, 0, 8, 1] {
        return Err(Error::format(
            path.display(),
            format!("magic {:02x?} is not an IDX label file (00 00 08 01)", &bytes[..4]),
        ));
    }
    let n = be_u32(bytes, 4).unwrap_or(0);
    if bytes.len() - 8 != n {
        return Err(Error::format(
            path.display(),
            format!("{n} labels announced, {} present", bytes.len() - 8),
        ));
    }
    if let Some((i, &l)) = bytes[8..].iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(Error::format(path.display(), format!("label {l} at {i} is outside 0-9")));
    }
    Ok(bytes[8..].to_vec())
}

impl IdxDataset {
    /// Reads a pair of files (each plain or `.gz`).
    ///
    /// # Errors
    /// [`Error::Io`] for a missing file; [`Error::Format`] naming the file for a
    /// short file, a wrong magic number, sizes that disagree with the header,
    /// labels outside 0–9, or image and label counts that differ.
    pub fn from_files(images: &Path, labels: &Path) -> Result<Self> {
        let (ipath, ibytes) = read_maybe_gz(images)?;
        let (lpath, lbytes) = read_maybe_gz(labels)?;
        let (n, rows, cols, pixels) = parse_images(&ibytes, &ipath)?;
        let labels = parse_labels(&lbytes, &lpath)?;
        if labels.len() != n {
            return Err(Error::format(
                lpath.display(),
                format!("{} labels for {n} images in {}", labels.len(), ipath.display()),
            ));
        }
        Ok(IdxDataset {
            pixels,
            labels,
            rows,
            cols,
            classes: (0..10).map(|d| d.to_string()).collect(),
        })
    }

    /// The train and test sets of a directory laid out as MNIST's
    /// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-…`), each plain or `.gz`.
    ///
    /// # Errors
    /// As [`IdxDataset::from_files`].
    pub fn load_dir(dir: &Path) -> Result<(Self, Self)> {
        if !dir.is_dir() {
            return Err(Error::io(
                "open",
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        let train = Self::from_files(
            &dir.join("train-images-idx3-ubyte"),
            &dir.join("train-labels-idx1-ubyte"),
        )?;
        let test = Self::from_files(
            &dir.join("t10k-images-idx3-ubyte"),
            &dir.join("t10k-labels-idx1-ubyte"),
        )?;
        Ok((train, test))
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        if index >= self.labels.len() {
            return Err(Error::config(
                "idx",
                format!("index {index} out of range for {} samples", self.labels.len()),
            ));
        }
        let size = self.rows * self.cols;
        let px = &self.pixels[index * size..(index + 1) * size];
        let img = Array3::from_shape_vec(
            (1, self.rows, self.cols),
            px.iter().map(|&p| p as f32 / 255.0).collect(),
        )
        .map_err(|e| Error::shape("idx", e.to_string()))?;
        Ok((img, self.labels[index] as usize))
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.labels.get(index).map(|&l| l as usize).ok_or_else(|| {
            Error::config(
                "idx",
                format!("index {index} out of range for {} samples", self.labels.len()),
            )
        })
    }
}
