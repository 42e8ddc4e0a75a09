//! timm's `LayerNorm2d`: LayerNorm over the channels of each pixel.
//!
//! The normalization formula is the crate's, on the view `[outer = C,
//! groups = H·W, inner = 1]` of each sample: one mean and variance per
//! pixel over its C channels. The generic kernel walks a group at a time,
//! which for this view means a stride of H·W between neighbours; so the
//! kernels here walk whole channel rows instead (contiguous, vectorizable),
//! accumulating the per-pixel sums row by row. Their naive twin is the
//! generic LayerNorm on the channels-last permute (the tests hold them equal).

use cnn_tensor::{join_key, ArrayD, Error, Float, IxDyn, Layer, Mode, Param, Result};
use rayon::prelude::*;

/// Per-pixel mean and `1/√(var + eps)` of one sample `x: [C, P]`.
///
/// # Shapes
/// `x: [C·P]` row-major → `(mean: [P], rstd: [P])`.
fn pixel_moments<T: Float>(x: &[T], p: usize, eps: f64) -> (Vec<T>, Vec<T>) {
    let c = x.len() / p;
    let inv = T::one() / T::of(c as f64);
    let mut mean = vec![T::zero(); p];
    for row in x.chunks_exact(p) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m *= inv);
    let mut var = vec![T::zero(); p];
    for row in x.chunks_exact(p) {
        var.iter_mut().zip(row).zip(&mean).for_each(|((s, &v), &m)| *s += (v - m) * (v - m));
    }
    let rstd = var.iter().map(|&v| T::one() / (v * inv + T::of(eps)).sqrt()).collect();
    (mean, rstd)
}

/// Forward of one sample: `y[c, p] = (x[c, p] − mean[p])·rstd[p]·γ[c] + β[c]`.
fn forward_sample<T: Float>(x: &[T], y: &mut [T], (mean, rstd): (&[T], &[T]), g: &[T], b: &[T]) {
    let p = mean.len();
    for (((xr, yr), &gc), &bc) in x.chunks_exact(p).zip(y.chunks_exact_mut(p)).zip(g).zip(b) {
        for (((yv, &xv), &m), &r) in yr.iter_mut().zip(xr).zip(mean).zip(rstd) {
            *yv = (xv - m) * r * gc + bc;
        }
    }
}

/// Backward of one sample, batch statistics: with `ĝ = dy·γ` and
/// `x̂ = (x − mean)·rstd`, `dx = rstd·(ĝ − mean_c ĝ − x̂·mean_c(ĝ·x̂))`;
/// returns this sample's `(dγ, dβ)`.
fn backward_sample<T: Float>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    (mean, rstd): (&[T], &[T]),
    g: &[T],
) -> (Vec<T>, Vec<T>) {
    let p = mean.len();
    let inv = T::one() / T::of(g.len() as f64);
    let (mut sg, mut sgx) = (vec![T::zero(); p], vec![T::zero(); p]);
    let (mut dg, mut db) = (vec![T::zero(); g.len()], vec![T::zero(); g.len()]);
    for ((((xr, dr), &gc), dgc), dbc) in
        x.chunks_exact(p).zip(dy.chunks_exact(p)).zip(g).zip(&mut dg).zip(&mut db)
    {
        for i in 0..p {
            let xh = (xr[i] - mean[i]) * rstd[i];
            let gh = dr[i] * gc;
            sg[i] += gh;
            sgx[i] += gh * xh;
            *dgc += dr[i] * xh;
            *dbc += dr[i];
        }
    }
    for ((xr, dr), (dxr, &gc)) in
        x.chunks_exact(p).zip(dy.chunks_exact(p)).zip(dx.chunks_exact_mut(p).zip(g))
    {
        for i in 0..p {
            let xh = (xr[i] - mean[i]) * rstd[i];
            dxr[i] = rstd[i] * (dr[i] * gc - sg[i] * inv - xh * sgx[i] * inv);
        }
    }
    (dg, db)
}

/// What backward needs: the input and each sample's per-pixel statistics.
#[derive(Debug, Clone)]
struct Cache<T> {
    x: ArrayD<T>,
    mean: Vec<T>,
    rstd: Vec<T>,
}

/// Settings of a [`LayerNorm2d`] layer, with timm's defaults
/// (`LayerNorm2d(num_channels, eps=1e-6, affine=True)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNorm2dConfig {
    /// Channels `C`.
    pub num_channels: usize,
    /// Added to the variance. Default `1e-6` (timm's, and ConvNeXt's).
    pub eps: f64,
}

impl LayerNorm2dConfig {
    /// timm's defaults for `num_channels` channels.
    pub fn new(num_channels: usize) -> Self {
        LayerNorm2dConfig { num_channels, eps: 1e-6 }
    }
    cnn_tensor::setters! {
        /// Another eps.
        with_eps: eps: f64;
    }
}

/// LayerNorm over the channel axis of each pixel of an NCHW tensor, with a
/// per-channel γ and β (timm's `LayerNorm2d`, ConvNeXt's norm; eps 1e-6 there).
/// Samples run in parallel; dγ and dβ add the samples' shares in order, so
/// results do not depend on the thread count.
///
/// Keys: `weight`, `bias`.
///
/// # Shapes
/// `x: [N, C, H, W]` → `y: [N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct LayerNorm2d<T: Float = f32> {
    eps: f64,
    weight: Param<T>,
    bias: Param<T>,
    cache: Option<Cache<T>>,
}

impl<T: Float> LayerNorm2d<T> {
    /// LayerNorm2d from its settings; γ = 1, β = 0.
    ///
    /// # Errors
    /// [`Error::Config`] for zero channels or a non-positive eps.
    pub fn new(config: LayerNorm2dConfig) -> Result<Self> {
        let LayerNorm2dConfig { num_channels: channels, eps } = config;
        if channels == 0 || !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::config(
                "layer_norm2d",
                format!("channels and eps must be positive, got {channels} and {eps}"),
            ));
        }
        Ok(LayerNorm2d {
            eps,
            weight: Param::new(ArrayD::ones(IxDyn(&[channels]))),
            bias: Param::new(ArrayD::zeros(IxDyn(&[channels]))),
            cache: None,
        })
    }

    /// The ε added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    fn channels(&self) -> usize {
        self.weight.value().len()
    }

    fn params(&self) -> Result<(&[T], &[T])> {
        let g = self
            .weight
            .value()
            .as_slice()
            .ok_or_else(|| Error::shape("layer_norm2d", "weight is not contiguous"))?;
        let b = self
            .bias
            .value()
            .as_slice()
            .ok_or_else(|| Error::shape("layer_norm2d", "bias is not contiguous"))?;
        Ok((g, b))
    }
}

impl<T: Float> Layer<T> for LayerNorm2d<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let c = self.channels();
        if x.ndim() != 4 || x.shape()[1] != c || x.is_empty() {
            return Err(Error::shape(
                "layer_norm2d",
                format!("input must be [N, {c}, H, W], got {:?}", x.shape()),
            ));
        }
        let x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
        let p = x.shape()[2] * x.shape()[3];
        let xs =
            x.as_slice().ok_or_else(|| Error::shape("layer_norm2d", "input is not contiguous"))?;
        let (g, b) = self.params()?;
        let mut y = vec![T::zero(); xs.len()];
        let stats: Vec<(Vec<T>, Vec<T>)> = xs
            .par_chunks(c * p)
            .zip(y.par_chunks_mut(c * p))
            .map(|(xn, yn)| {
                let (mean, rstd) = pixel_moments(xn, p, self.eps);
                forward_sample(xn, yn, (&mean, &rstd), g, b);
                (mean, rstd)
            })
            .collect();
        let y = ArrayD::from_shape_vec(x.raw_dim(), y)
            .map_err(|e| Error::shape("layer_norm2d", e.to_string()))?;
        self.cache = (mode == Mode::Train).then(|| Cache {
            mean: stats.iter().flat_map(|s| s.0.iter().copied()).collect(),
            rstd: stats.iter().flat_map(|s| s.1.iter().copied()).collect(),
            x,
        });
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let cache = self.cache.take().ok_or(Error::NoForward { op: "layer_norm2d" })?;
        if dy.shape() != cache.x.shape() {
            return Err(Error::shape(
                "layer_norm2d",
                format!("dy is {:?}, expected the output shape {:?}", dy.shape(), cache.x.shape()),
            ));
        }
        let dy = dy.as_standard_layout();
        let (xs, dys) = (cache.x.as_slice(), dy.as_slice());
        let (Some(xs), Some(dys)) = (xs, dys) else {
            return Err(Error::shape("layer_norm2d", "tensors are not contiguous"));
        };
        let c = self.channels();
        let p = cache.x.shape()[2] * cache.x.shape()[3];
        let (g, _) = self.params()?;
        let mut dx = vec![T::zero(); xs.len()];
        let shares: Vec<(Vec<T>, Vec<T>)> = xs
            .par_chunks(c * p)
            .zip(dys.par_chunks(c * p))
            .zip(dx.par_chunks_mut(c * p))
            .zip(cache.mean.par_chunks(p).zip(cache.rstd.par_chunks(p)))
            .map(|(((xn, dyn_), dxn), (m, r))| backward_sample(xn, dyn_, dxn, (m, r), g))
            .collect();
        for (dg, db) in &shares {
            if self.weight.trainable {
                self.weight.grad.iter_mut().zip(dg).for_each(|(a, &v)| *a += v);
            }
            if self.bias.trainable {
                self.bias.grad.iter_mut().zip(db).for_each(|(a, &v)| *a += v);
            }
        }
        ArrayD::from_shape_vec(cache.x.raw_dim(), dx)
            .map_err(|e| Error::shape("layer_norm2d", e.to_string()))
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&join_key(prefix, "weight"), &mut self.weight);
        f(&join_key(prefix, "bias"), &mut self.bias);
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        f(&join_key(prefix, "weight"), &self.weight);
        f(&join_key(prefix, "bias"), &self.bias);
    }
}
