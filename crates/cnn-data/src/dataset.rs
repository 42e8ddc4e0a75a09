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
    /// The class of sample `index` without its image (splits and class counts
    /// use it); the default reads the whole sample, datasets that hold their
    /// labels override it.
    ///
    /// # Errors
    /// As [`Dataset::get`].
    fn label(&self, index: usize) -> Result<usize> {
        self.get(index).map(|(_, label)| label)
    }
    /// Where sample `index` is read from, for messages and lists of unreadable
    /// samples (an image folder: the file's path); `None` for data held in
    /// memory or in one file, whose errors name that file themselves.
    fn source(&self, index: usize) -> Option<String> {
        let _ = index;
        None
    }
}

/// A stratified split of `dataset`: within each class (in class order) the
/// samples are shuffled by one generator seeded from `seed`, and
/// `fraction` of them (rounded) go to the second subset. Both subsets keep
/// the dataset's order. Returns `(rest, held_out)`.
///
/// # Errors
/// [`Error::Config`] for a fraction outside [0, 1]; whatever reading a label fails with.
pub fn stratified_split(
    dataset: Arc<dyn Dataset>,
    fraction: f64,
    seed: u64,
) -> Result<(Subset, Subset)> {
    use rand::seq::SliceRandom;
    if !(0.0..=1.0).contains(&fraction) {
        return Err(Error::config("split", format!("fraction must be in [0, 1], got {fraction}")));
    }
    let labels = (0..dataset.len()).map(|i| dataset.label(i)).collect::<Result<Vec<_>>>()?;
    let classes = labels.iter().max().map_or(0, |m| m + 1).max(dataset.classes().len());
    let mut by_class = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut rng = cnn_tensor::random::seeded_rng(seed);
    let (mut rest, mut held) = (Vec::new(), Vec::new());
    for mut idx in by_class {
        idx.shuffle(&mut rng);
        let n_held = (idx.len() as f64 * fraction).round() as usize;
        held.extend_from_slice(&idx[..n_held]);
        rest.extend_from_slice(&idx[n_held..]);
    }
    rest.sort_unstable();
    held.sort_unstable();
    Ok((Subset::new(dataset.clone(), rest)?, Subset::new(dataset, held)?))
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

    /// The underlying dataset's index of sample `index`.
    fn inner_index(&self, index: usize) -> Result<usize> {
        self.indices.get(index).copied().ok_or_else(|| {
            Error::config(
                "subset",
                format!("index {index} out of range for {} samples", self.indices.len()),
            )
        })
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        self.inner.get(self.inner_index(index)?)
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.inner.label(self.inner_index(index)?)
    }
    fn source(&self, index: usize) -> Option<String> {
        self.inner.source(self.inner_index(index).ok()?)
    }
}
