//! The naive twin of the norm kernel: the definitions as plain loops over
//! `[outer, groups, inner]`, one element at a time, in f64-friendly order.
//! The fast kernel ([`crate::moments`], [`crate::normalize_forward`],
//! [`crate::normalize_fused`], [`crate::normalize_backward`],
//! [`crate::normalize_backward_fused`]) is held equal to these by proptests.

use crate::Statistics;
use cnn_tensor::{Float, Result};

use crate::kernel::{check, check_backward, check_params};
use crate::{Affine, Moments, NormAxes, NormGrads};

/// Flat index of element `(o, s, i)` of the `[outer, groups, inner]` view.
fn at(axes: NormAxes, o: usize, s: usize, i: usize) -> usize {
    (o * axes.groups + s) * axes.inner + i
}

/// γ and β of the element at flat index `k` (1 and 0 without affine).
fn gamma_beta<T: Float>(affine: Option<&Affine<'_, T>>, k: usize) -> (T, T) {
    affine.map_or((T::one(), T::zero()), |a| {
        let f = (k / a.axes.inner) % a.axes.features;
        (a.gamma[f], a.beta[f])
    })
}

/// Per-group mean and biased variance, two passes.
///
/// # Errors
/// [`cnn_tensor::Error::Shape`] when `axes` does not fill `x`.
pub fn moments<T: Float>(x: &[T], axes: NormAxes) -> Result<Moments<T>> {
    check("norm", x.len(), &axes, None)?;
    let count = T::of(axes.count() as f64);
    let (mut mean, mut var) = (vec![T::zero(); axes.groups], vec![T::zero(); axes.groups]);
    for s in 0..axes.groups {
        for o in 0..axes.outer {
            for i in 0..axes.inner {
                mean[s] += x[at(axes, o, s, i)];
            }
        }
        mean[s] /= count;
        for o in 0..axes.outer {
            for i in 0..axes.inner {
                let d = x[at(axes, o, s, i)] - mean[s];
                var[s] += d * d;
            }
        }
        var[s] /= count;
    }
    Ok(Moments { mean, var })
}

/// `y = (x − mean)·rstd·γ + β`, element by element.
///
/// # Errors
/// As [`crate::normalize_forward`].
pub fn normalize_forward<T: Float>(
    x: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
) -> Result<Vec<T>> {
    check("norm", x.len(), &axes, affine.as_ref().map(|a| &a.axes))?;
    check_params(axes, mean, rstd, affine.as_ref())?;
    let mut y = vec![T::zero(); x.len()];
    for o in 0..axes.outer {
        for s in 0..axes.groups {
            for i in 0..axes.inner {
                let k = at(axes, o, s, i);
                let (g, b) = gamma_beta(affine.as_ref(), k);
                y[k] = (x[k] - mean[s]) * rstd[s] * g + b;
            }
        }
    }
    Ok(y)
}

/// Gradients of [`normalize_forward`]: with [`Statistics::Batch`],
/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, `g = dy·γ`; with running ones, `dx = rstd·g`;
/// `dγ = Σ dy·x̂`, `dβ = Σ dy` per feature.
///
/// # Errors
/// As [`crate::normalize_backward`].
pub fn normalize_backward<T: Float>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
    stats: Statistics,
) -> Result<NormGrads<T>> {
    check_backward(x, dy, axes, mean, rstd, affine.as_ref())?;
    let count = T::of(axes.count() as f64);
    let xhat = |k: usize, s: usize| (x[k] - mean[s]) * rstd[s];
    // The two means of the batch-statistics term, per group.
    let (mut mg, mut mgx) = (vec![T::zero(); axes.groups], vec![T::zero(); axes.groups]);
    if stats == Statistics::Batch {
        for s in 0..axes.groups {
            for o in 0..axes.outer {
                for i in 0..axes.inner {
                    let k = at(axes, o, s, i);
                    let g = dy[k] * gamma_beta(affine.as_ref(), k).0;
                    mg[s] += g;
                    mgx[s] += g * xhat(k, s);
                }
            }
            mg[s] /= count;
            mgx[s] /= count;
        }
    }
    let features = affine.as_ref().map_or(0, |a| a.axes.features);
    let (mut dgamma, mut dbeta) = (vec![T::zero(); features], vec![T::zero(); features]);
    let mut dx = vec![T::zero(); x.len()];
    for o in 0..axes.outer {
        for s in 0..axes.groups {
            for i in 0..axes.inner {
                let k = at(axes, o, s, i);
                let g = dy[k] * gamma_beta(affine.as_ref(), k).0;
                dx[k] = rstd[s] * (g - mg[s] - xhat(k, s) * mgx[s]);
                if let Some(a) = &affine {
                    let f = (k / a.axes.inner) % a.axes.features;
                    dgamma[f] += dy[k] * xhat(k, s);
                    dbeta[f] += dy[k];
                }
            }
        }
    }
    Ok(NormGrads { dx, dgamma, dbeta })
}
