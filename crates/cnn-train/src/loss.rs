//! What the trainer minimizes: [`Loss`], cross-entropy by default.

use cnn_tensor::{cross_entropy, ArrayD, Error, Float, Result};
use ndarray::IxDyn;

/// A training loss over a batch of logits: its mean over the batch and the
/// gradient of that mean with respect to the logits, written by hand as
/// every op here is. [`crate::Trainer::with_loss`] takes one; the default
/// is [`CrossEntropy`] with the config's label smoothing.
///
/// ```
/// use cnn_tensor::{cross_entropy, ArrayD, Result};
/// use cnn_train::Loss;
///
/// /// Cross-entropy weighted by a constant: the simplest loss of one's own.
/// struct Scaled(f32);
///
/// impl Loss for Scaled {
///     fn mean_and_grad(&self, logits: &ArrayD<f32>, labels: &[usize]) -> Result<(f32, ArrayD<f32>)> {
///         let (loss, grad) = cross_entropy(logits, labels, 0.0)?;
///         Ok((self.0 * loss, grad * self.0))
///     }
/// }
/// ```
pub trait Loss: Send + Sync {
    /// `(mean over the batch, d mean / d logits)` for `[n, classes]` logits
    /// and `n` labels.
    ///
    /// # Errors
    /// [`cnn_tensor::Error::Shape`] for logits that are not `[n, classes]`
    /// or a label out of range.
    fn mean_and_grad(&self, logits: &ArrayD<f32>, labels: &[usize]) -> Result<(f32, ArrayD<f32>)>;

    /// [`Loss::mean_and_grad`] in f64, for a trainer run in f64 (the exact
    /// checks of data-parallel training). By default an error: a loss
    /// written for training needs only the f32 form.
    ///
    /// # Errors
    /// As [`Loss::mean_and_grad`]; [`cnn_tensor::Error::Config`] when the loss has no f64 form.
    fn mean_and_grad_f64(
        &self,
        _logits: &ArrayD<f64>,
        _labels: &[usize],
    ) -> Result<(f64, ArrayD<f64>)> {
        Err(Error::config("loss", "this loss has no f64 form (implement Loss::mean_and_grad_f64)"))
    }
}

/// `loss` on logits of either precision: the form for `T`.
///
/// # Errors
/// As [`Loss::mean_and_grad`].
pub(crate) fn mean_and_grad<T: Float>(
    loss: &dyn Loss,
    logits: &ArrayD<T>,
    labels: &[usize],
) -> Result<(T, ArrayD<T>)> {
    let shape = IxDyn(logits.shape());
    let values = logits.as_standard_layout();
    let values = values.as_slice().expect("standard layout is contiguous");
    match T::as_f32(values) {
        // The training path: the gradient moves back as it is, no copy.
        Some(v) => {
            let logits = ArrayD::from_shape_vec(shape, v.to_vec()).expect("the same shape");
            let (m, g) = loss.mean_and_grad(&logits, labels)?;
            // The loss's own gradient shape (a wrong one is the backward's error, not a panic here).
            let g = if g.is_standard_layout() { g } else { g.as_standard_layout().into_owned() };
            let dim = g.raw_dim();
            let grad = T::from_f32_vec(g.into_raw_vec_and_offset().0);
            Ok((T::of(f64::from(m)), ArrayD::from_shape_vec(dim, grad).expect("its own length")))
        }
        None => {
            let v: Vec<f64> = values.iter().map(|x| x.as_f64()).collect();
            let logits = ArrayD::from_shape_vec(shape, v).expect("the same shape");
            let (m, g) = loss.mean_and_grad_f64(&logits, labels)?;
            Ok((T::of(m), g.mapv(T::of)))
        }
    }
}

/// Softmax cross-entropy with label smoothing ε: `nn.CrossEntropyLoss(label_smoothing=ε)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CrossEntropy {
    /// ε in [0, 1]: the target puts `1 − ε` on the label and `ε` spread over
    /// every class. Default 0.
    pub label_smoothing: f64,
}

impl CrossEntropy {
    /// Cross-entropy with label smoothing `label_smoothing`.
    pub fn new(label_smoothing: f64) -> Self {
        CrossEntropy { label_smoothing }
    }
}

impl Loss for CrossEntropy {
    fn mean_and_grad(&self, logits: &ArrayD<f32>, labels: &[usize]) -> Result<(f32, ArrayD<f32>)> {
        cross_entropy(logits, labels, self.label_smoothing)
    }

    fn mean_and_grad_f64(
        &self,
        logits: &ArrayD<f64>,
        labels: &[usize],
    ) -> Result<(f64, ArrayD<f64>)> {
        cross_entropy(logits, labels, self.label_smoothing)
    }
}
