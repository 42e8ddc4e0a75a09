//! What the trainer minimizes: [`Loss`], cross-entropy by default.

use cnn_tensor::{cross_entropy, ArrayD, Result};

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
}
