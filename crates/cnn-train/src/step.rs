//! One training step, split at the seam where data-parallel training reduces
//! gradients: [`compute_gradients`] (forward, loss, backward) and
//! [`apply_gradients`] (schedule, optimizer).

use cnn_optim::{Optimizer, Schedule};
use cnn_tensor::{random::mix_seed, Result};
use cnn_tensor::{ArrayD, Error, Float, Layer};
use ndarray::{Array2, ArrayView2, Ix2};

use crate::Loss;

/// What one step saw: the batch's mean loss and how many it classified right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The batch's mean loss (the trainer's [`Loss`]: cross-entropy with the
    /// run's label smoothing by default).
    pub loss: f64,
    /// Samples whose top-1 class was the label.
    pub correct: usize,
    /// Samples in the batch.
    pub count: usize,
}

/// Views a model's output as `[n, classes]` logits.
///
/// # Errors
/// [`Error::Shape`] when the output is not two-dimensional with one row per sample.
pub fn as_logits<T: Float>(output: ArrayD<T>, n: usize) -> Result<Array2<T>> {
    let shape = output.shape().to_vec();
    let logits = output.into_dimensionality::<Ix2>().map_err(|_| {
        Error::shape(
            "train",
            format!("the model must output [batch, classes] logits, got {shape:?}"),
        )
    })?;
    if logits.nrows() != n {
        return Err(Error::shape(
            "train",
            format!("the model output {} rows for a batch of {n}", logits.nrows()),
        ));
    }
    Ok(logits)
}

/// Data-loader images (f32) as `T`: moved for f32, widened for f64.
pub(crate) fn images_as<T: Float>(images: ArrayD<f32>) -> ArrayD<T> {
    let shape = images.raw_dim();
    let images =
        if images.is_standard_layout() { images } else { images.as_standard_layout().into_owned() };
    let (values, offset) = images.into_raw_vec_and_offset();
    debug_assert!(offset.unwrap_or(0) == 0, "an owned standard-layout array starts its buffer");
    ArrayD::from_shape_vec(shape, T::from_f32_vec(values)).expect("the same length")
}

/// Samples whose top-`k` classes hold their label (ties broken toward the lower class).
pub fn top_k_correct<T: Float>(logits: ArrayView2<'_, T>, labels: &[usize], k: usize) -> usize {
    logits
        .outer_iter()
        .zip(labels)
        .filter(|(row, &label)| {
            let v = row[label];
            // The label is in the top k when fewer than k classes beat it.
            let beaten_by =
                row.iter().enumerate().filter(|&(j, &u)| u > v || (u == v && j < label)).count();
            beaten_by < k
        })
        .count()
}

/// Forward in train mode, the mean `loss`, backward: on return every
/// trainable [`cnn_tensor::Param::grad`] holds dL/dθ for this batch alone
/// (gradients are zeroed first). Random layers are re-seeded from
/// `(seed, step)` so that a resumed run draws the same dropout masks.
///
/// Everything before the model's frozen boundary ([`crate::frozen_boundary`]:
/// its leading children with nothing to train, and so on inside the first
/// child that has something) runs in eval mode and backward stops there, so a frozen backbone's statistics stay as they were and no
/// gradient is computed that nothing needs.
///
/// This is half a step: a data-parallel trainer averages the gradients across
/// processes here, then calls [`apply_gradients`].
///
/// # Shapes
/// `images: [n, C, H, W]`, `labels: [n]`; the model must output `[n, classes]`.
///
/// # Errors
/// Whatever the model's forward or backward returns; [`Error::Shape`] for an
/// output that is not `[n, classes]` or a label out of range.
pub fn compute_gradients<T: Float>(
    model: &mut dyn Layer<T>,
    images: ArrayD<T>,
    labels: &[usize],
    loss: &dyn Loss,
    seed: u64,
    step: u64,
) -> Result<StepStats> {
    compute_shard_gradients(model, images, labels, labels.len(), loss, seed, step)
}

/// [`compute_gradients`] for one rank's share of a global batch of
/// `batch_size` samples (data-parallel training): the loss is the global
/// batch's mean restricted to these samples (each sample's loss over
/// `batch_size`, not over `labels.len()`), so that the gradients summed over
/// the ranks are the global batch's. The returned loss is still the mean over
/// these samples.
///
/// # Errors
/// As [`compute_gradients`]; [`Error::Config`] when `batch_size` is smaller than the share.
pub fn compute_shard_gradients<T: Float>(
    model: &mut dyn Layer<T>,
    images: ArrayD<T>,
    labels: &[usize],
    batch_size: usize,
    loss: &dyn Loss,
    seed: u64,
    step: u64,
) -> Result<StepStats> {
    let n = labels.len();
    if batch_size < n {
        return Err(Error::config(
            "train",
            format!("a share of {n} samples of a global batch of {batch_size}"),
        ));
    }
    model.zero_grad();
    model.reseed(mix_seed(seed, step));
    let boundary = crate::frozen_boundary(model);
    let logits = as_logits(crate::frozen::forward_past_frozen(model, images, &boundary)?, n)?;
    let correct = top_k_correct(logits.view(), labels, 1);
    let (mean, mut dlogits) = crate::loss::mean_and_grad(loss, &logits.into_dyn(), labels)?;
    if batch_size != n {
        // d(Σ loss_i / batch_size) = d(mean over the share) · n / batch_size.
        dlogits.mapv_inplace(|v| v * (T::of(n as f64) / T::of(batch_size as f64)));
    }
    crate::frozen::backward_to_frozen(model, dlogits, &boundary)?;
    Ok(StepStats { loss: mean.as_f64(), correct, count: n })
}

/// Sets the optimizer's lr from `schedule` at iteration `step` and updates
/// every trainable parameter from its gradient. Returns the lr used.
///
/// # Errors
/// As [`Optimizer::step`].
pub fn apply_gradients<T: Float>(
    optimizer: &mut Optimizer<T>,
    schedule: &Schedule,
    model: &mut dyn Layer<T>,
    step: u64,
) -> Result<f64> {
    optimizer.schedule(schedule, step as usize);
    optimizer.step(model)?;
    Ok(optimizer.groups().last().map_or(0.0, |g| g.lr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn top_k_counts_ties_toward_lower_class() {
        let logits = array![[0.1f32, 0.9, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]];
        assert_eq!(top_k_correct(logits.view(), &[1, 0, 0], 1), 2);
        assert_eq!(top_k_correct(logits.view(), &[1, 1, 0], 1), 1);
        assert_eq!(top_k_correct(logits.view(), &[1, 1, 0], 2), 2);
        assert_eq!(top_k_correct(logits.view(), &[1, 1, 0], 3), 3);
    }

    #[test]
    fn wrong_output_rank_is_an_error() {
        let e = as_logits(ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 3, 4])), 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "train: the model must output [batch, classes] logits, got [2, 3, 4]"
        );
        assert!(as_logits(ArrayD::<f32>::zeros(ndarray::IxDyn(&[3, 4])), 2).is_err());
    }
}
