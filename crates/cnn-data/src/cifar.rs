//! CIFAR-10 and CIFAR-100 binary files.

use std::path::Path;

use cnn_tensor::{Error, Result};
use ndarray::Array3;

use crate::files::read_maybe_gz;
use crate::Dataset;

const PIXELS: usize = 3 * 32 * 32;

/// CIFAR images `3×32×32` in [0, 1] with their labels.
#[derive(Debug, Clone)]
pub struct Cifar {
    pixels: Vec<u8>,
    labels: Vec<u16>,
    coarse: Vec<u16>,
    classes: Vec<String>,
}

/// Parses records of `label_bytes` labels followed by 3072 pixels (R, G, B planes).
pub(crate) fn parse_records(
    bytes: &[u8],
    path: &Path,
    label_bytes: usize,
    classes: &[usize],
) -> Result<(Vec<u8>, Vec<Vec<u16>>)> {
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(Error::format(
            path.display(),
            format!("{} bytes is not a whole number of {record}-byte records", bytes.len()),
        ));
    }
    let mut pixels = Vec::with_capacity(bytes.len() / record * PIXELS);
    let mut labels = vec![Vec::new(); label_bytes];
    for (r, rec) in bytes.chunks_exact(record).enumerate() {
        for (k, &l) in rec[..label_bytes].iter().enumerate() {
            if l as usize >= classes[k] {
                return Err(Error::format(
                    path.display(),
                    format!("record {r}: label {l} outside 0-{}", classes[k] - 1),
                ));
            }
            labels[k].push(l as u16);
        }
        pixels.extend_from_slice(&rec[label_bytes..]);
    }
    Ok((pixels, labels))
}

fn names(path: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| {
            t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>()
        })
        .filter(|v| v.len() == n)
        .unwrap_or_else(|| (0..n).map(|i| i.to_string()).collect())
}

impl Cifar {
    /// CIFAR-10 from its binary directory: `data_batch_1..5.bin` (train) and
    /// `test_batch.bin`; class names from `batches.meta.txt` when present.
    ///
    /// # Errors
    /// [`Error::Io`] for a missing file; [`Error::Format`] naming the file for a
    /// size that is not whole records or a label outside 0–9.
    pub fn cifar10(dir: &Path) -> Result<(Self, Self)> {
        let classes = names(&dir.join("batches.meta.txt"), 10);
        let read = |files: &[String]| -> Result<Cifar> {
            let (mut pixels, mut labels) = (Vec::new(), Vec::new());
            for f in files {
                let (path, bytes) = read_maybe_gz(&dir.join(f))?;
                let (p, l) = parse_records(&bytes, &path, 1, &[10])?;
                pixels.extend(p);
                labels.extend(l.into_iter().next().unwrap_or_default());
            }
            Ok(Cifar { pixels, labels, coarse: Vec::new(), classes: classes.clone() })
        };
        let train: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
        Ok((read(&train)?, read(&["test_batch.bin".to_string()])?))
    }

    /// CIFAR-100 from its binary directory: `train.bin` and `test.bin`, each
    /// record a coarse and a fine label; the fine label is the class.
    ///
    /// # Errors
    /// As [`Cifar::cifar10`], with fine labels in 0–99 and coarse in 0–19.
    pub fn cifar100(dir: &Path) -> Result<(Self, Self)> {
        let classes = names(&dir.join("fine_label_names.txt"), 100);
        let read = |file: &str| -> Result<Cifar> {
            let (path, bytes) = read_maybe_gz(&dir.join(file))?;
            let (pixels, mut l) = parse_records(&bytes, &path, 2, &[20, 100])?;
            let fine = l.pop().unwrap_or_default();
            let coarse = l.pop().unwrap_or_default();
            Ok(Cifar { pixels, labels: fine, coarse, classes: classes.clone() })
        };
        Ok((read("train.bin")?, read("test.bin")?))
    }

    /// CIFAR-100's coarse (superclass) label of sample `index` (None for CIFAR-10).
    pub fn coarse_label(&self, index: usize) -> Option<usize> {
        self.coarse.get(index).map(|&c| c as usize)
    }
}

impl Dataset for Cifar {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        if index >= self.labels.len() {
            return Err(Error::config(
                "cifar",
                format!("index {index} out of range for {} samples", self.labels.len()),
            ));
        }
        let px = &self.pixels[index * PIXELS..(index + 1) * PIXELS];
        let img =
            Array3::from_shape_vec((3, 32, 32), px.iter().map(|&p| p as f32 / 255.0).collect())
                .map_err(|e| Error::shape("cifar", e.to_string()))?;
        Ok((img, self.labels[index] as usize))
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.labels.get(index).map(|&l| l as usize).ok_or_else(|| {
            Error::config(
                "cifar",
                format!("index {index} out of range for {} samples", self.labels.len()),
            )
        })
    }
}
