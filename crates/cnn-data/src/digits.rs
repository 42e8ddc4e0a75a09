//! The UCI optical handwritten digits, embedded (1797 images of 8×8, 10 classes).

use std::sync::Arc;

use cnn_tensor::{Error, Result};
use ndarray::Array3;

use crate::{stratified_split, Dataset, Subset};

/// The gzipped CSV: 64 pixel values 0–16 and the label on each line.
/// E. Alpaydin and C. Kaynak, UCI Machine Learning Repository, CC BY 4.0.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("data/digits.csv.gz");

/// The digits set, images `1×8×8` scaled from 0–16 to [0, 1], labels 0–9.
#[derive(Debug, Clone)]
pub struct Digits {
    images: Vec<[f32; 64]>,
    labels: Vec<usize>,
    classes: Vec<String>,
}

impl Digits {
    /// Parses the embedded copy.
    ///
    /// # Errors
    /// [`Error::Format`] if the embedded bytes are damaged (they are checked by the tests).
    pub fn load() -> Result<Self> {
        Self::parse_gz(DIGITS_CSV_GZ, "embedded digits.csv.gz")
    }

    /// Parses a gzipped digits CSV (the same format as the embedded one).
    ///
    /// # Errors
    /// [`Error::Format`] naming the line for a bad gzip stream, a line without
    /// 65 values, a pixel outside 0–16 or a label outside 0–9.
    pub fn parse_gz(bytes: &[u8], context: &str) -> Result<Self> {
        let bad = |msg: String| Error::format(context, msg);
        let raw = crate::files::gunzip(bytes, crate::files::MAX_DECOMPRESSED, context)?;
        let text = String::from_utf8(raw).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let values: Vec<&str> = line.trim().split(',').collect();
            if values.len() != 65 {
                return Err(bad(format!("line {}: {} values, expected 65", n + 1, values.len())));
            }
            let mut img = [0f32; 64];
            for (k, v) in values[..64].iter().enumerate() {
                let p: u8 = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("line {}: pixel {v:?} is not a number", n + 1)))?;
                if p > 16 {
                    return Err(bad(format!("line {}: pixel {p} outside 0-16", n + 1)));
                }
                img[k] = p as f32 / 16.0;
            }
            let label: usize =
                values[64].trim().parse().map_err(|_| bad(format!("line {}: bad label", n + 1)))?;
            if label > 9 {
                return Err(bad(format!("line {}: label {label} outside 0-9", n + 1)));
            }
            images.push(img);
            labels.push(label);
        }
        Ok(Digits { images, labels, classes: (0..10).map(|d| d.to_string()).collect() })
    }

    /// A stratified split: within each class, the samples are shuffled from
    /// `seed` and `test_fraction` of them (rounded) go to the test subset.
    ///
    /// # Errors
    /// [`Error::Config`] for a fraction outside [0, 1].
    pub fn split(self, test_fraction: f64, seed: u64) -> Result<(Subset, Subset)> {
        stratified_split(Arc::new(self), test_fraction, seed)
    }
}

impl Dataset for Digits {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        let img = self.images.get(index).ok_or_else(|| {
            Error::config(
                "digits",
                format!("index {index} out of range for {} samples", self.images.len()),
            )
        })?;
        let a = Array3::from_shape_vec((1, 8, 8), img.to_vec())
            .map_err(|e| Error::shape("digits", e.to_string()))?;
        Ok((a, self.labels[index]))
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.labels.get(index).copied().ok_or_else(|| {
            Error::config(
                "digits",
                format!("index {index} out of range for {} samples", self.labels.len()),
            )
        })
    }
}
