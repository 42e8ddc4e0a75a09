//! Datasets made in memory: [`TensorDataset`] (images and labels held as
//! arrays) and [`Resized`] (another dataset at another image size).

use std::sync::Arc;

use cnn_tensor::{Error, Result};
use ndarray::Array3;

use crate::Dataset;

/// Samples held in memory: one `[C, H, W]` shape, the values of every
/// sample back to back, a label each (`torch.utils.data.TensorDataset`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDataset {
    shape: [usize; 3],
    values: Vec<f32>,
    labels: Vec<usize>,
    classes: Vec<String>,
}

impl TensorDataset {
    /// Samples of `shape` from `values` (`labels.len() × C·H·W` of them).
    ///
    /// # Errors
    /// [`Error::Shape`] when the values do not fill `labels.len()` samples of
    /// `shape`; [`Error::Config`] for a label without a class name.
    pub fn new(
        shape: [usize; 3],
        values: Vec<f32>,
        labels: Vec<usize>,
        classes: Vec<String>,
    ) -> Result<Self> {
        let size: usize = shape.iter().product();
        if values.len() != size * labels.len() {
            return Err(Error::shape(
                "tensor_dataset",
                format!(
                    "{} values do not make {} samples of {shape:?}",
                    values.len(),
                    labels.len()
                ),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= classes.len()) {
            return Err(Error::config(
                "tensor_dataset",
                format!("label {bad} has no class name ({} classes)", classes.len()),
            ));
        }
        Ok(TensorDataset { shape, values, labels, classes })
    }

    /// Reads every sample of `dataset` into memory, relabelled by `relabel`
    /// (`None` drops the sample): how a test takes digits 5–9 as classes 0–4.
    ///
    /// # Errors
    /// Whatever reading a sample fails with; [`Error::Shape`] when samples
    /// differ in shape or none is kept.
    pub fn collect(
        dataset: &dyn Dataset,
        classes: Vec<String>,
        mut relabel: impl FnMut(usize) -> Option<usize>,
    ) -> Result<Self> {
        let (mut values, mut labels, mut shape) = (Vec::new(), Vec::new(), None);
        for i in 0..dataset.len() {
            let (img, label) = dataset.get(i)?;
            let Some(label) = relabel(label) else { continue };
            let dim = img.dim();
            let dim = [dim.0, dim.1, dim.2];
            if *shape.get_or_insert(dim) != dim {
                return Err(Error::shape(
                    "tensor_dataset",
                    format!("sample {i} is {dim:?}, the first was {:?}", shape.unwrap_or(dim)),
                ));
            }
            values.extend(img.iter().copied());
            labels.push(label);
        }
        let shape = shape
            .ok_or_else(|| Error::shape("tensor_dataset", "no sample was kept".to_string()))?;
        Self::new(shape, values, labels, classes)
    }

    /// The `[C, H, W]` of every sample.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
}

impl Dataset for TensorDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        let label = self.label(index)?;
        let size: usize = self.shape.iter().product();
        let values = self.values[index * size..(index + 1) * size].to_vec();
        let [c, h, w] = self.shape;
        let img = Array3::from_shape_vec((c, h, w), values)
            .map_err(|e| Error::shape("tensor_dataset", e.to_string()))?;
        Ok((img, label))
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.labels.get(index).copied().ok_or_else(|| {
            Error::config(
                "tensor_dataset",
                format!("index {index} out of range for {} samples", self.labels.len()),
            )
        })
    }
}

/// Another dataset's images resized to `[height, width]` (bilinear, as
/// `transforms.Resize` without antialias): the digits at 16×16, say.
#[derive(Clone)]
pub struct Resized {
    inner: Arc<dyn Dataset>,
    size: [usize; 2],
}

impl Resized {
    /// `inner` at `size`.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero size.
    pub fn new(inner: Arc<dyn Dataset>, size: [usize; 2]) -> Result<Self> {
        if size.contains(&0) {
            return Err(Error::config("resized", format!("size must be positive, got {size:?}")));
        }
        Ok(Resized { inner, size })
    }
}

impl Dataset for Resized {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        let (img, label) = self.inner.get(index)?;
        Ok((cnn_augment::resize(img.view(), self.size)?, label))
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.inner.label(index)
    }
    fn source(&self, index: usize) -> Option<String> {
        self.inner.source(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_dataset_round_trips_and_checks() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let d =
            TensorDataset::new([1, 1, 2], vec![1.0, 2.0, 3.0, 4.0], vec![1, 0], classes.clone())
                .unwrap();
        let (img, label) = d.get(1).unwrap();
        assert_eq!((img.iter().copied().collect::<Vec<_>>(), label), (vec![3.0, 4.0], 0));
        assert!(d.get(2).is_err());
        let e = TensorDataset::new([1, 1, 2], vec![1.0], vec![0], classes.clone()).unwrap_err();
        assert_eq!(e.to_string(), "tensor_dataset: 1 values do not make 1 samples of [1, 1, 2]");
        assert!(TensorDataset::new([1, 1, 1], vec![1.0], vec![2], classes.clone()).is_err());
        let odd = TensorDataset::collect(&d, classes, |l| (l == 0).then_some(1)).unwrap();
        assert_eq!((odd.len(), odd.label(0).unwrap()), (1, 1));
        let r = Resized::new(Arc::new(d), [2, 4]).unwrap();
        assert_eq!(r.get(0).unwrap().0.dim(), (1, 2, 4));
    }
}
