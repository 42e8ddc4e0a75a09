//! What the four norm layers share: affine parameters, the train-mode cache,
//! and running statistics.

use crate::Statistics;
use cnn_tensor::Mode;
use cnn_tensor::{join_key, ArrayD, Error, Float, IxDyn, Param, Result};
use ndarray::ArrayViewD;

use crate::{
    moments, normalize_backward, normalize_forward, Affine, AffineAxes, NormAxes, NormGrads,
};

/// γ (`weight`, ones) and β (`bias`, zeros) of a norm layer.
#[derive(Debug, Clone)]
pub(crate) struct AffineParams<T: Float> {
    pub(crate) weight: Param<T>,
    pub(crate) bias: Param<T>,
}

impl<T: Float> AffineParams<T> {
    pub(crate) fn new(shape: &[usize]) -> Self {
        AffineParams {
            weight: Param::new(ArrayD::ones(IxDyn(shape))),
            bias: Param::new(ArrayD::zeros(IxDyn(shape))),
        }
    }

    pub(crate) fn view(&self, op: &'static str, axes: AffineAxes) -> Result<Affine<'_, T>> {
        let gamma = self
            .weight
            .value()
            .as_slice()
            .ok_or_else(|| Error::shape(op, "weight is not contiguous"))?;
        let beta = self
            .bias
            .value()
            .as_slice()
            .ok_or_else(|| Error::shape(op, "bias is not contiguous"))?;
        Ok(Affine { gamma, beta, axes })
    }

    pub(crate) fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&join_key(prefix, "weight"), &mut self.weight);
        f(&join_key(prefix, "bias"), &mut self.bias);
    }

    pub(crate) fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        f(&join_key(prefix, "weight"), &self.weight);
        f(&join_key(prefix, "bias"), &self.bias);
    }

    pub(crate) fn add_grads(&mut self, dgamma: &[T], dbeta: &[T]) {
        for (p, d) in [(&mut self.weight, dgamma), (&mut self.bias, dbeta)] {
            if p.trainable {
                p.grad.iter_mut().zip(d).for_each(|(g, &v)| *g += v);
            }
        }
    }
}

/// What backward needs from a train-mode forward.
#[derive(Debug, Clone)]
pub(crate) struct NormCache<T> {
    pub(crate) x: ArrayD<T>,
    pub(crate) axes: NormAxes,
    pub(crate) affine_axes: AffineAxes,
    pub(crate) mean: Vec<T>,
    pub(crate) rstd: Vec<T>,
    pub(crate) stats: Statistics,
}

/// Normalizes `x` with statistics `mean`/`rstd` and the optional affine
/// (then ReLU, its signs written into `relu`, when given), and keeps what
/// backward needs when `train`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_with<T: Float>(
    op: &'static str,
    x: ArrayD<T>,
    axes: NormAxes,
    (mean, rstd): (Vec<T>, Vec<T>),
    affine: Option<(&AffineParams<T>, AffineAxes)>,
    stats: Statistics,
    mode: Mode,
    relu: Option<&mut [u8]>,
) -> Result<(ArrayD<T>, Option<NormCache<T>>)> {
    let train = mode == Mode::Train;
    let x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
    let xs = x.as_slice().ok_or_else(|| Error::shape(op, "input is not contiguous"))?;
    let view = affine.map(|(p, a)| p.view(op, a)).transpose()?;
    let y = match relu {
        Some(signs) => crate::normalize_forward_relu(xs, axes, &mean, &rstd, view, signs)?,
        None => normalize_forward(xs, axes, &mean, &rstd, view)?,
    };
    let y = ArrayD::from_shape_vec(x.raw_dim(), y).map_err(|e| Error::shape(op, e.to_string()))?;
    let whole = AffineAxes { outer: 1, features: 1, inner: x.len() };
    let affine_axes = affine.map_or(whole, |(_, a)| a);
    let cache = train.then(|| NormCache { x, axes, affine_axes, mean, rstd, stats });
    Ok((y, cache))
}

/// Train-or-eval forward with batch statistics of contiguous groups, fused
/// ([`crate::normalize_fused`]); keeps what backward needs when `train`.
pub(crate) fn forward_fused<T: Float>(
    op: &'static str,
    x: ArrayD<T>,
    axes: NormAxes,
    eps: f64,
    affine: Option<(&AffineParams<T>, AffineAxes)>,
    train: bool,
) -> Result<(ArrayD<T>, Option<NormCache<T>>)> {
    let x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
    let xs = x.as_slice().ok_or_else(|| Error::shape(op, "input is not contiguous"))?;
    let view = affine.map(|(p, a)| p.view(op, a)).transpose()?;
    let (y, mean, var) = crate::normalize_fused(xs, axes, eps, view)?;
    let y = ArrayD::from_shape_vec(x.raw_dim(), y).map_err(|e| Error::shape(op, e.to_string()))?;
    let whole = AffineAxes { outer: 1, features: 1, inner: x.len() };
    let affine_axes = affine.map_or(whole, |(_, a)| a);
    let rstd = crate::rstd(&var, eps);
    let cache =
        train.then(|| NormCache { x, axes, affine_axes, mean, rstd, stats: Statistics::Batch });
    Ok((y, cache))
}

/// Backward from a cache: dx, and dγ/dβ added into the affine's grads.
pub(crate) fn backward_with<T: Float>(
    op: &'static str,
    cache: NormCache<T>,
    dy: ArrayViewD<'_, T>,
    affine: Option<&mut AffineParams<T>>,
) -> Result<ArrayD<T>> {
    backward_by(op, cache, dy, affine, |xs, dys, cache, view| match cache.stats {
        Statistics::Batch => {
            crate::normalize_backward_fused(xs, dys, cache.axes, &cache.mean, &cache.rstd, view)
        }
        Statistics::Running => normalize_backward(
            xs,
            dys,
            cache.axes,
            &cache.mean,
            &cache.rstd,
            view,
            Statistics::Running,
        ),
    })
}

/// What every norm's backward shares around the kernel call: `dy` checked
/// against the cached input and made contiguous, the affine view, dγ/dβ added
/// into the grads, dx shaped as `x`. `grads(x, dy, cache, affine)` runs the
/// kernel (synced BatchNorm's sums its statistics across ranks there).
pub(crate) fn backward_by<T: Float>(
    op: &'static str,
    cache: NormCache<T>,
    dy: ArrayViewD<'_, T>,
    affine: Option<&mut AffineParams<T>>,
    grads: impl FnOnce(&[T], &[T], &NormCache<T>, Option<Affine<'_, T>>) -> Result<NormGrads<T>>,
) -> Result<ArrayD<T>> {
    if dy.shape() != cache.x.shape() {
        return Err(Error::shape(
            op,
            format!("dy is {:?}, expected the output shape {:?}", dy.shape(), cache.x.shape()),
        ));
    }
    let dy = dy.as_standard_layout();
    let (xs, dys) = (cache.x.as_slice(), dy.as_slice());
    let (Some(xs), Some(dys)) = (xs, dys) else {
        return Err(Error::shape(op, "tensors are not contiguous"));
    };
    let grads = {
        let view = match &affine {
            Some(p) => Some(p.view(op, cache.affine_axes)?),
            None => None,
        };
        grads(xs, dys, &cache, view)?
    };
    if let Some(p) = affine {
        p.add_grads(&grads.dgamma, &grads.dbeta);
    }
    ArrayD::from_shape_vec(cache.x.raw_dim(), grads.dx).map_err(|e| Error::shape(op, e.to_string()))
}

/// Batch statistics of `x` as (mean, biased var), refusing groups of one value in training.
pub(crate) fn batch_moments<T: Float>(
    op: &'static str,
    x: &ArrayD<T>,
    axes: NormAxes,
    train: bool,
) -> Result<(Vec<T>, Vec<T>)> {
    if train && axes.count() <= 1 {
        return Err(Error::shape(
            op,
            format!(
                "expected more than 1 value per channel when training, got input {:?}",
                x.shape()
            ),
        ));
    }
    let xs = x.as_standard_layout();
    let m =
        moments(xs.as_slice().ok_or_else(|| Error::shape(op, "input is not contiguous"))?, axes)?;
    Ok((m.mean, m.var))
}

/// Running mean and variance, with PyTorch's update rule.
#[derive(Debug, Clone)]
pub(crate) struct RunningStats<T: Float> {
    pub(crate) mean: Param<T>,
    pub(crate) var: Param<T>,
    pub(crate) num_batches_tracked: Param<T>,
}

impl<T: Float> RunningStats<T> {
    pub(crate) fn new(c: usize) -> Self {
        RunningStats {
            mean: Param::buffer(ArrayD::zeros(IxDyn(&[c]))),
            var: Param::buffer(ArrayD::ones(IxDyn(&[c]))),
            num_batches_tracked: Param::buffer(ArrayD::zeros(IxDyn(&[]))),
        }
    }

    /// `running ← (1 − f)·running + f·batch`, with `f = momentum`, or `1/num_batches_tracked`
    /// when momentum is `None` (a cumulative average); the variance fed in is unbiased.
    pub(crate) fn update(&mut self, momentum: Option<f64>, mean: &[T], unbiased_var: &[T]) {
        let n = self.num_batches_tracked.value().first().copied().unwrap_or(T::zero()) + T::one();
        self.num_batches_tracked.value_mut().fill(n);
        let f = momentum.map_or(T::one() / n, T::of);
        for (r, &m) in self.mean.value_mut().iter_mut().zip(mean) {
            *r = (T::one() - f) * *r + f * m;
        }
        for (r, &v) in self.var.value_mut().iter_mut().zip(unbiased_var) {
            *r = (T::one() - f) * *r + f * v;
        }
    }

    pub(crate) fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&join_key(prefix, "running_mean"), &mut self.mean);
        f(&join_key(prefix, "running_var"), &mut self.var);
        f(&join_key(prefix, "num_batches_tracked"), &mut self.num_batches_tracked);
    }

    pub(crate) fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        f(&join_key(prefix, "running_mean"), &self.mean);
        f(&join_key(prefix, "running_var"), &self.var);
        f(&join_key(prefix, "num_batches_tracked"), &self.num_batches_tracked);
    }
}

/// Checks that eps is positive and finite and momentum (if any) in [0, 1].
pub(crate) fn check_settings(op: &'static str, eps: f64, momentum: Option<f64>) -> Result<()> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::config(op, format!("eps must be positive, got {eps}")));
    }
    if let Some(m) = momentum {
        if !(0.0..=1.0).contains(&m) {
            return Err(Error::config(op, format!("momentum must be in [0, 1], got {m}")));
        }
    }
    Ok(())
}

/// `x`'s channel count (axis 1), checked against the layer's.
pub(crate) fn channels(
    op: &'static str,
    x: &[usize],
    min_rank: usize,
    max_rank: usize,
    expected: usize,
) -> Result<usize> {
    if x.len() < min_rank || x.len() > max_rank {
        let ranks = match (min_rank, max_rank) {
            (a, b) if a == b => format!("{a} dimensions"),
            (a, usize::MAX) => format!("at least {a} dimensions"),
            (a, b) => format!("{a} to {b} dimensions"),
        };
        return Err(Error::shape(
            op,
            format!("input must have {ranks} [N, C, ...], got {}-D {x:?}", x.len()),
        ));
    }
    if x[1] != expected {
        return Err(Error::shape(
            op,
            format!("input has {} channels, the layer expects {expected}", x[1]),
        ));
    }
    if x.contains(&0) {
        return Err(Error::shape(op, format!("input {x:?} has a zero-size dimension")));
    }
    Ok(x[1])
}
