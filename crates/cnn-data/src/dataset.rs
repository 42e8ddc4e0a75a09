//! The `Dataset` trait and index subsets.

use std::sync::Arc;

use cnn_tensor::{Error, Result};
use ndarray::Array3;

/// A labelled image dataset: CHW f32 images and class indices.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index`: the image and its class.
    ///
    /// # Errors
    /// [`Error::Config`] for an index out of range (and whatever reading the sample can fail with).
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)>;
    /// The class names, by class index.
    fn classes(&self) -> &[String];
}

/// The samples of another dataset at the given indices, in that order.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// A view of `inner` at `indices`.
    ///
    /// # Errors
    /// [`Error::Config`] when an index is out of range.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::config(
                "subset",
                format!("index {bad} out of range for {} samples", inner.len()),
            ));
        }
        Ok(Subset { inner, indices })
    }

    /// The indices into the underlying dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        let i = *self.indices.get(index).ok_or_else(|| {
            Error::config(
                "subset",
                format!("index {index} out of range for {} samples", self.indices.len()),
            )
        })?;
        self.inner.get(i)
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
}
