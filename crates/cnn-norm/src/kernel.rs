//! The one normalization kernel: `y = γ·(x − mean)/√(var + eps) + β`, with the
//! statistics taken over a chosen set of axes.
//!
//! A contiguous tensor is viewed as `[outer, groups, inner]` ([`NormAxes`]):
//! one mean and variance per group, over all `outer × inner` of its elements.
//! The affine parameters are indexed by their own view `[outer, features,
//! inner]` ([`AffineAxes`]), because GroupNorm's statistics go per group while
//! its γ and β go per channel.
//!
//! | norm | statistics view | affine view |
//! | --- | --- | --- |
//! | BatchNorm | `[N, C, H·W]` | `[N, C, H·W]` |
//! | InstanceNorm | `[1, N·C, H·W]` | `[N, C, H·W]` |
//! | GroupNorm(G) | `[1, N·G, C/G·H·W]` | `[N, C, H·W]` |
//! | LayerNorm(D) | `[1, rows, D]` | `[rows, D, 1]` |
//!
//! Sums run in 64 interleaved lanes (`cnn_tensor::sum` style) in a fixed
//! order, and each group or feature is reduced by one task, so results do not
//! depend on the thread count.

use std::mem::MaybeUninit;

use cnn_tensor::simd::{assume_init, uninit_vec};
use cnn_tensor::{Error, Float, Result};
use rayon::prelude::*;

/// `x` as `[outer, groups, inner]`; statistics per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormAxes {
    /// Blocks that repeat the groups (the batch, for BatchNorm).
    pub outer: usize,
    /// Independent statistics.
    pub groups: usize,
    /// Contiguous elements of one group in one block.
    pub inner: usize,
}

impl NormAxes {
    /// Elements behind one statistic: `outer · inner`.
    pub fn count(&self) -> usize {
        self.outer * self.inner
    }
    fn len(&self) -> usize {
        self.outer * self.groups * self.inner
    }
}

/// `x` as `[outer, features, inner]`; γ and β indexed by feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineAxes {
    /// Blocks that repeat the features.
    pub outer: usize,
    /// Length of γ and β.
    pub features: usize,
    /// Contiguous elements that share one γ.
    pub inner: usize,
}

impl AffineAxes {
    fn len(&self) -> usize {
        self.outer * self.features * self.inner
    }

    /// The run of elements from flat index `i` that share one γ, capped at
    /// `left`: its length and its feature. Loops walk these runs so that
    /// their inner loops are plain slices that vectorize.
    #[inline(always)]
    fn run_at(&self, i: usize, left: usize) -> (usize, usize) {
        ((self.inner - i % self.inner).min(left), (i / self.inner) % self.features)
    }
}

/// γ and β with the view that indexes them.
#[derive(Debug, Clone, Copy)]
pub struct Affine<'a, T> {
    /// Scale, one per feature.
    pub gamma: &'a [T],
    /// Shift, one per feature.
    pub beta: &'a [T],
    /// How elements map to features.
    pub axes: AffineAxes,
}

/// Per-group mean and biased variance.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments<T> {
    /// Mean of each group.
    pub mean: Vec<T>,
    /// Biased variance (divided by the count) of each group.
    pub var: Vec<T>,
}

/// Gradients of [`normalize_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct NormGrads<T> {
    /// dL/dx, in `x`'s layout.
    pub dx: Vec<T>,
    /// dL/dγ, one per feature (empty without affine).
    pub dgamma: Vec<T>,
    /// dL/dβ, one per feature (empty without affine).
    pub dbeta: Vec<T>,
}

/// Partial sums of the reductions, as `cnn_tensor::sum`'s.
pub(crate) const LANES: usize = cnn_tensor::SUM_LANES;

/// `(Σ a, Σ a·(b − shift))`, each summed in lanes.
#[inline(always)]
fn sum_and_dot<T: Float>(a: &[T], b: &[T], shift: T) -> (T, T) {
    let (mut s, mut d) = ([T::zero(); LANES], [T::zero(); LANES]);
    sum_and_dot_lanes(&mut s, &mut d, a, b, shift);
    (fold(s), fold(d))
}

/// [`sum_and_dot`]'s lane sums, added into `s` and `d`: a sum taken piece by
/// piece, every piece but the last a whole number of lane rows, equals the
/// sum over the whole slice bit for bit.
#[inline(always)]
pub(crate) fn sum_and_dot_lanes<T: Float>(
    s: &mut [T; LANES],
    d: &mut [T; LANES],
    a: &[T],
    b: &[T],
    shift: T,
) {
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (ca, cb) in ac.zip(bc) {
        for l in 0..LANES {
            s[l] += ca[l];
            d[l] += ca[l] * (cb[l] - shift);
        }
    }
    for (l, (&x, &y)) in ar.iter().zip(br).enumerate() {
        s[l] += x;
        d[l] += x * (y - shift);
    }
}

/// `Σ (x − shift)²` in lanes.
#[inline(always)]
fn squares<T: Float>(x: &[T], shift: T) -> T {
    let mut q = [T::zero(); LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let v = c[l] - shift;
            q[l] += v * v;
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        let v = v - shift;
        q[l] += v * v;
    }
    fold(q)
}

#[inline(always)]
pub(crate) fn fold<T: Float>(mut acc: [T; LANES]) -> T {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            let upper = acc[i + width];
            acc[i] += upper;
        }
    }
    acc[0]
}

pub(crate) fn check(
    op: &'static str,
    len: usize,
    axes: &NormAxes,
    affine: Option<&AffineAxes>,
) -> Result<()> {
    if axes.len() != len {
        return Err(Error::shape(
            op,
            format!("{len} elements do not fill the statistics view {axes:?}"),
        ));
    }
    if axes.count() == 0 {
        return Err(Error::shape(op, format!("no elements to take statistics over in {axes:?}")));
    }
    if let Some(a) = affine {
        if a.len() != len {
            return Err(Error::shape(
                op,
                format!("{len} elements do not fill the affine view {a:?}"),
            ));
        }
    }
    Ok(())
}

/// Block `a`'s segment (a contiguous run of `inner`) of group `s`.
#[inline(always)]
fn segment<T>(x: &[T], axes: NormAxes, a: usize, s: usize) -> &[T] {
    &x[(a * axes.groups + s) * axes.inner..][..axes.inner]
}

/// Mean and biased variance of each group, in two passes (mean first, then
/// squared deviations from it, which keeps f32 accurate).
///
/// # Errors
/// [`Error::Shape`] when `x` does not fill `axes` or a group is empty.
pub fn moments<T: Float>(x: &[T], axes: NormAxes) -> Result<Moments<T>> {
    check("norm", x.len(), &axes, None)?;
    let stats: Vec<(T, T)> =
        (0..axes.groups).into_par_iter().map(|s| group_moments(x, axes, s)).collect();
    Ok(Moments {
        mean: stats.iter().map(|s| s.0).collect(),
        var: stats.iter().map(|s| s.1).collect(),
    })
}

cnn_tensor::simd_fn! {
    /// Mean and biased variance of group `s`, two passes.
    fn group_moments<T: Float>(x: &[T], axes: NormAxes, s: usize) -> (T, T) = group_moments_body
}

#[inline(always)]
fn group_moments_body<T: Float>(x: &[T], axes: NormAxes, s: usize) -> (T, T) {
    let count = T::of(axes.count() as f64);
    let mut sum = T::zero();
    for a in 0..axes.outer {
        sum += cnn_tensor::sum(segment(x, axes, a, s));
    }
    let mean = sum / count;
    let mut sq = T::zero();
    for a in 0..axes.outer {
        sq += squares(segment(x, axes, a, s), mean);
    }
    (mean, sq / count)
}

cnn_tensor::simd_fn! {
    /// `ys = (xs − m)·r·γ + β` for the segment starting at element `start`.
    fn normalize_segment<T: Float>(
        ys: &mut [MaybeUninit<T>],
        xs: &[T],
        start: usize,
        m: T,
        r: T,
        affine: Option<&Affine<'_, T>>,
    ) = normalize_segment_body
}

#[inline(always)]
fn normalize_segment_body<T: Float>(
    ys: &mut [MaybeUninit<T>],
    xs: &[T],
    start: usize,
    m: T,
    r: T,
    affine: Option<&Affine<'_, T>>,
) {
    let Some(af) = affine else {
        for (y, &x) in ys.iter_mut().zip(xs) {
            y.write((x - m) * r);
        }
        return;
    };
    // Runs of elements that share one γ, as plain loops so they vectorize.
    let mut j = 0;
    while j < xs.len() {
        let i = start + j;
        let (n, k) = af.axes.run_at(i, xs.len() - j);
        let (scale, shift) = (r * af.gamma[k], af.beta[k] - m * r * af.gamma[k]);
        for (y, &x) in ys[j..j + n].iter_mut().zip(&xs[j..j + n]) {
            y.write(x * scale + shift);
        }
        j += n;
    }
}

cnn_tensor::simd_fn! {
    /// `(Σ g, Σ g·x̂)` over group `s`, with `g = dy·γ`.
    fn group_grad_sums<T: Float>(
        x: &[T],
        dy: &[T],
        axes: NormAxes,
        s: usize,
        m: T,
        r: T,
        affine: Option<&Affine<'_, T>>,
    ) -> (T, T) = group_grad_sums_body
}

#[inline(always)]
fn group_grad_sums_body<T: Float>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    s: usize,
    m: T,
    r: T,
    affine: Option<&Affine<'_, T>>,
) -> (T, T) {
    let (mut sg, mut sgx) = (T::zero(), T::zero());
    for a in 0..axes.outer {
        let start = (a * axes.groups + s) * axes.inner;
        let mut j = 0;
        while j < axes.inner {
            let i = start + j;
            let (n, gk) = match affine {
                Some(af) => {
                    let (n, k) = af.axes.run_at(i, axes.inner - j);
                    (n, af.gamma[k])
                }
                None => (axes.inner - j, T::one()),
            };
            let (d, dxm) = sum_and_dot(&dy[i..i + n], &x[i..i + n], m);
            sg += gk * d;
            sgx += gk * dxm * r;
            j += n;
        }
    }
    (sg, sgx)
}

cnn_tensor::simd_fn! {
    /// `dx = r·(dy·γ − mg − x̂·mgx)` for the segment starting at element `start`.
    fn dx_segment<T: Float>(
        out: &mut [MaybeUninit<T>],
        x: &[T],
        dy: &[T],
        start: usize,
        stats: [T; 4],
        affine: Option<&Affine<'_, T>>,
    ) = dx_segment_body
}

#[inline(always)]
pub(crate) fn dx_segment_body<T: Float>(
    out: &mut [MaybeUninit<T>],
    x: &[T],
    dy: &[T],
    start: usize,
    [m, r, mg, mgx]: [T; 4],
    affine: Option<&Affine<'_, T>>,
) {
    let mut j = 0;
    while j < out.len() {
        let i = start + j;
        let (n, gk) = match affine {
            Some(af) => {
                let (n, k) = af.axes.run_at(i, out.len() - j);
                (n, af.gamma[k])
            }
            None => (out.len() - j, T::one()),
        };
        for ((o, &d), &xv) in out[j..j + n].iter_mut().zip(&dy[j..j + n]).zip(&x[j..j + n]) {
            let xhat = (xv - m) * r;
            o.write(r * (d * gk - mg - xhat * mgx));
        }
        j += n;
    }
}

cnn_tensor::simd_fn! {
    /// `(dγ[k], dβ[k])`: sums of `dy·x̂` and `dy` over the elements of feature `k`.
    fn feature_grad_sums<T: Float>(
        x: &[T],
        dy: &[T],
        axes: NormAxes,
        a: AffineAxes,
        k: usize,
        mean: &[T],
        rstd: &[T],
    ) -> (T, T) = feature_grad_sums_body
}

#[inline(always)]
fn feature_grad_sums_body<T: Float>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    a: AffineAxes,
    k: usize,
    mean: &[T],
    rstd: &[T],
) -> (T, T) {
    let (mut dg, mut db) = (T::zero(), T::zero());
    for o in 0..a.outer {
        let start = (o * a.features + k) * a.inner;
        let s = (start / axes.inner) % axes.groups;
        let (d, dxm) = sum_and_dot(&dy[start..][..a.inner], &x[start..][..a.inner], mean[s]);
        db += d;
        dg += dxm * rstd[s];
    }
    (dg, db)
}

/// `y = (x − mean)·rstd·γ + β` with per-group `mean`, `rstd = 1/√(var + eps)`.
///
/// # Errors
/// [`Error::Shape`] when the views do not fit `x` or the statistics and
/// parameters have the wrong lengths.
pub fn normalize_forward<T: Float>(
    x: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
) -> Result<Vec<T>> {
    check("norm", x.len(), &axes, affine.as_ref().map(|a| &a.axes))?;
    check_params(axes, mean, rstd, affine.as_ref())?;
    let mut y = uninit_vec::<T>(x.len());
    y.par_chunks_mut(axes.inner).zip(x.par_chunks(axes.inner)).enumerate().for_each(
        |(seg, (ys, xs))| {
            let s = seg % axes.groups;
            normalize_segment(ys, xs, seg * axes.inner, mean[s], rstd[s], affine.as_ref());
        },
    );
    // SAFETY: the chunks cover `y` and every element of every chunk was written above.
    Ok(unsafe { assume_init(y) })
}

/// [`normalize_forward`] followed by ReLU, in one pass over memory: each
/// segment is rectified while it is still in cache, and `positive[i]`
/// records whether output `i` was positive (all a ReLU's backward needs:
/// `cnn_act::rectifier_backward_masked`). Bit for bit the norm then
/// `cnn_act`'s ReLU (`x` if positive, else `x·0`: −0 for a negative, NaN
/// kept), with the same mask. BatchNorm + ReLU in training.
///
/// # Errors
/// As [`normalize_forward`], and [`Error::Shape`] when `positive` is not `x`'s length.
pub fn normalize_forward_relu<T: Float>(
    x: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
    positive: &mut [u8],
) -> Result<Vec<T>> {
    check("norm", x.len(), &axes, affine.as_ref().map(|a| &a.axes))?;
    check_params(axes, mean, rstd, affine.as_ref())?;
    if positive.len() != x.len() {
        return Err(Error::shape(
            "norm",
            format!("a sign mask of {} for {} values", positive.len(), x.len()),
        ));
    }
    let mut y = uninit_vec::<T>(x.len());
    let segments = y.par_chunks_mut(axes.inner).zip(x.par_chunks(axes.inner));
    segments.zip(positive.par_chunks_mut(axes.inner)).enumerate().for_each(
        |(seg, ((ys, xs), signs))| {
            let s = seg % axes.groups;
            normalize_segment(ys, xs, seg * axes.inner, mean[s], rstd[s], affine.as_ref());
            // SAFETY: `normalize_segment` wrote every value of the segment.
            let ys = unsafe { cnn_tensor::simd::assume_init_mut(ys) };
            cnn_tensor::rectify_with_signs(ys, signs, T::zero());
        },
    );
    // SAFETY: the chunks cover `y` and every element of every chunk was written above.
    Ok(unsafe { assume_init(y) })
}

/// Batch statistics and normalization together, for views whose groups are
/// contiguous (`outer == 1`: GroupNorm, LayerNorm, InstanceNorm): each task
/// takes one group's mean and variance and normalizes it while it is still in
/// cache, so `x` is read from memory once instead of twice. The numbers are
/// those of [`moments`] followed by [`normalize_forward`], bit for bit.
///
/// Returns `(y, mean, var)`.
///
/// # Errors
/// [`Error::Config`] when `outer != 1`; otherwise as [`normalize_forward`].
#[allow(clippy::type_complexity)]
pub fn normalize_fused<T: Float>(
    x: &[T],
    axes: NormAxes,
    eps: f64,
    affine: Option<Affine<'_, T>>,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    if axes.outer != 1 {
        return Err(Error::config(
            "norm",
            format!("normalize_fused needs contiguous groups (outer 1), got {axes:?}"),
        ));
    }
    check("norm", x.len(), &axes, affine.as_ref().map(|a| &a.axes))?;
    if let Some(a) = &affine {
        check_params(axes, &vec![T::zero(); axes.groups], &vec![T::zero(); axes.groups], Some(a))?;
    }
    let one = NormAxes { outer: 1, groups: 1, inner: axes.inner };
    let mut y = uninit_vec::<T>(x.len());
    let stats: Vec<(T, T)> = y
        .par_chunks_mut(axes.inner)
        .zip(x.par_chunks(axes.inner))
        .enumerate()
        .map(|(s, (ys, xs))| {
            let (mean, var) = group_moments(xs, one, 0);
            let r = T::one() / (var + T::of(eps)).sqrt();
            normalize_segment(ys, xs, s * axes.inner, mean, r, affine.as_ref());
            (mean, var)
        })
        .collect();
    // SAFETY: the chunks cover `y` and every element of every chunk was written above.
    let y = unsafe { assume_init(y) };
    Ok((y, stats.iter().map(|s| s.0).collect(), stats.iter().map(|s| s.1).collect()))
}

/// [`normalize_backward`] with batch statistics, fused for contiguous groups
/// (`outer == 1`) and γ runs longer than one element (GroupNorm,
/// InstanceNorm): one task per group sums `dy` and `dy·(x − mean)` per γ run
/// (which give both the group's coefficients and its share of dγ, dβ), then
/// writes the group's dx while it is still in cache. Per-group shares of dγ
/// and dβ are added in group order. Other views go to [`normalize_backward`].
///
/// # Errors
/// As [`normalize_backward`].
pub fn normalize_backward_fused<T: Float>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
) -> Result<NormGrads<T>> {
    let fusable = axes.outer == 1 && affine.as_ref().is_none_or(|a| a.axes.inner > 1);
    if !fusable {
        return normalize_backward(x, dy, axes, mean, rstd, affine, Statistics::Batch);
    }
    check_backward(x, dy, axes, mean, rstd, affine.as_ref())?;
    let count = T::of(axes.count() as f64);
    let mut dx = uninit_vec::<T>(x.len());
    // Per group: its (feature, Σ dy·x̂, Σ dy) runs.
    let shares: Vec<Vec<(usize, T, T)>> = dx
        .par_chunks_mut(axes.inner)
        .enumerate()
        .map(|(s, out)| {
            let start = s * axes.inner;
            let (xs, dys) = (&x[start..start + axes.inner], &dy[start..start + axes.inner]);
            let (m, r) = (mean[s], rstd[s]);
            let runs = run_sums(xs, dys, start, m, affine.as_ref());
            let (mut sg, mut sgx) = (T::zero(), T::zero());
            for &(k, d, e) in &runs {
                let gk = affine.as_ref().map_or(T::one(), |a| a.gamma[k]);
                sg += gk * d;
                sgx += gk * e * r;
            }
            dx_segment(out, xs, dys, start, [m, r, sg / count, sgx / count], affine.as_ref());
            runs.into_iter().map(|(k, d, e)| (k, e * r, d)).collect()
        })
        .collect();
    // SAFETY: the chunks cover `dx` and every element of every chunk was written above.
    let dx = unsafe { assume_init(dx) };
    let (dgamma, dbeta) = match &affine {
        None => (Vec::new(), Vec::new()),
        Some(a) => {
            let (mut dg, mut db) =
                (vec![T::zero(); a.axes.features], vec![T::zero(); a.axes.features]);
            for group in &shares {
                for &(k, g, b) in group {
                    dg[k] += g;
                    db[k] += b;
                }
            }
            (dg, db)
        }
    };
    Ok(NormGrads { dx, dgamma, dbeta })
}

cnn_tensor::simd_fn! {
    /// `(feature, Σ dy, Σ dy·(x − m))` for each run of one γ in a segment.
    fn run_sums<T: Float>(
        x: &[T],
        dy: &[T],
        start: usize,
        m: T,
        affine: Option<&Affine<'_, T>>,
    ) -> Vec<(usize, T, T)> = run_sums_body
}

#[inline(always)]
fn run_sums_body<T: Float>(
    x: &[T],
    dy: &[T],
    start: usize,
    m: T,
    affine: Option<&Affine<'_, T>>,
) -> Vec<(usize, T, T)> {
    let mut runs = Vec::new();
    let mut j = 0;
    while j < x.len() {
        let i = start + j;
        let (n, k) = match affine {
            Some(af) => af.axes.run_at(i, x.len() - j),
            None => (x.len() - j, 0),
        };
        let (d, e) = sum_and_dot(&dy[j..j + n], &x[j..j + n], m);
        runs.push((k, d, e));
        j += n;
    }
    runs
}

pub(crate) fn check_backward<T>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<&Affine<'_, T>>,
) -> Result<()> {
    check("norm", x.len(), &axes, affine.map(|a| &a.axes))?;
    check_params(axes, mean, rstd, affine)?;
    if dy.len() != x.len() {
        return Err(Error::shape(
            "norm",
            format!("dy has {} elements, x has {}", dy.len(), x.len()),
        ));
    }
    Ok(())
}

pub(crate) fn check_params<T>(
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<&Affine<'_, T>>,
) -> Result<()> {
    if mean.len() != axes.groups || rstd.len() != axes.groups {
        return Err(Error::shape(
            "norm",
            format!("{} means and {} rstds for {} groups", mean.len(), rstd.len(), axes.groups),
        ));
    }
    if let Some(a) = affine {
        if a.gamma.len() != a.axes.features || a.beta.len() != a.axes.features {
            return Err(Error::shape(
                "norm",
                format!(
                    "gamma {} and beta {} for {} features",
                    a.gamma.len(),
                    a.beta.len(),
                    a.axes.features
                ),
            ));
        }
    }
    Ok(())
}

/// Where the statistics of a normalization came from, which decides its gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Statistics {
    /// Computed from this `x` (training, or any layer/group/instance norm):
    /// the gradient flows through them too.
    Batch,
    /// Fixed numbers (a BatchNorm's running statistics, in eval mode): they
    /// are constants of the backward pass.
    Running,
}

/// Gradients of [`normalize_forward`] for upstream `dy`.
///
/// With [`Statistics::Batch`] (the statistics came from this `x`, as in training),
/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` with `g = dy·γ`, the means over
/// each group; with [`Statistics::Running`] (BatchNorm in eval mode),
/// `dx = rstd·g`. `dγ = Σ dy·x̂` and `dβ = Σ dy` per feature.
///
/// It is [`grad_sums`] divided by the group size, then [`normalize_backward_from`].
///
/// # Errors
/// As [`normalize_forward`], and [`Error::Shape`] when `dy` is not `x`'s size.
pub fn normalize_backward<T: Float>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
    stats: Statistics,
) -> Result<NormGrads<T>> {
    if stats == Statistics::Batch
        && crate::batch_backward::features_are_groups(axes, affine.as_ref())
    {
        check_backward(x, dy, axes, mean, rstd, affine.as_ref())?;
        let affine = affine.as_ref();
        return Ok(crate::batch_backward::two_pass(x, dy, None, axes, mean, rstd, affine));
    }
    let coef = if stats == Statistics::Batch {
        let count = T::of(axes.count() as f64);
        let sums = grad_sums(x, dy, axes, mean, rstd, affine.as_ref())?;
        sums.into_iter().map(|(sg, sgx)| (sg / count, sgx / count)).collect()
    } else {
        vec![(T::zero(), T::zero()); axes.groups]
    };
    normalize_backward_from(x, dy, axes, mean, rstd, affine, &coef)
}

/// Per group, `(Σ g, Σ g·x̂)` with `g = dy·γ` and `x̂ = (x − mean)·rstd`: the
/// two sums behind batch-statistics backward. Synced BatchNorm adds them
/// across ranks before dividing by the global group size.
///
/// # Errors
/// As [`normalize_backward`].
pub fn grad_sums<T: Float>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<&Affine<'_, T>>,
) -> Result<Vec<(T, T)>> {
    check_backward(x, dy, axes, mean, rstd, affine)?;
    Ok((0..axes.groups)
        .into_par_iter()
        .map(|s| group_grad_sums(x, dy, axes, s, mean[s], rstd[s], affine))
        .collect())
}

/// `dx = rstd·(g − coef.0 − x̂·coef.1)` per group (`coef`: the means of `g`
/// and `g·x̂`, zero for fixed statistics), and `dγ = Σ dy·x̂`, `dβ = Σ dy` per feature.
///
/// # Errors
/// As [`normalize_backward`], and [`Error::Shape`] for a `coef` of another length than the groups.
pub fn normalize_backward_from<T: Float>(
    x: &[T],
    dy: &[T],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
    coef: &[(T, T)],
) -> Result<NormGrads<T>> {
    check_backward(x, dy, axes, mean, rstd, affine.as_ref())?;
    if coef.len() != axes.groups {
        return Err(Error::shape(
            "norm",
            format!("{} coefficient pairs for {} groups", coef.len(), axes.groups),
        ));
    }
    let mut dx = uninit_vec::<T>(x.len());
    dx.par_chunks_mut(axes.inner).enumerate().for_each(|(seg, out)| {
        let s = seg % axes.groups;
        let start = seg * axes.inner;
        let stats = [mean[s], rstd[s], coef[s].0, coef[s].1];
        dx_segment(
            out,
            &x[start..start + axes.inner],
            &dy[start..start + axes.inner],
            start,
            stats,
            affine.as_ref(),
        );
    });
    // SAFETY: the chunks cover `dx` and every element of every chunk was written above.
    let dx = unsafe { assume_init(dx) };

    let (dgamma, dbeta) = match &affine {
        None => (Vec::new(), Vec::new()),
        Some(af) => {
            let a = af.axes;
            let sums: Vec<(T, T)> = (0..a.features)
                .into_par_iter()
                .map(|k| feature_grad_sums(x, dy, axes, a, k, mean, rstd))
                .collect();
            (sums.iter().map(|s| s.0).collect(), sums.iter().map(|s| s.1).collect())
        }
    };
    Ok(NormGrads { dx, dgamma, dbeta })
}

/// Per group, `Σ x`: the first pass of [`moments`], on its own so that
/// synced BatchNorm can add the sums across ranks before taking the mean.
///
/// # Errors
/// As [`moments`].
pub fn group_sums<T: Float>(x: &[T], axes: NormAxes) -> Result<Vec<T>> {
    check("norm", x.len(), &axes, None)?;
    Ok((0..axes.groups)
        .into_par_iter()
        .map(|s| {
            (0..axes.outer)
                .map(|a| cnn_tensor::sum(segment(x, axes, a, s)))
                .fold(T::zero(), |acc, v| acc + v)
        })
        .collect())
}

/// Per group, `Σ (x − mean)²`: the second pass of [`moments`], from a given mean.
///
/// # Errors
/// As [`moments`], and [`Error::Shape`] for a `mean` of another length than the groups.
pub fn group_squares<T: Float>(x: &[T], axes: NormAxes, mean: &[T]) -> Result<Vec<T>> {
    check("norm", x.len(), &axes, None)?;
    if mean.len() != axes.groups {
        return Err(Error::shape(
            "norm",
            format!("{} means for {} groups", mean.len(), axes.groups),
        ));
    }
    Ok((0..axes.groups).into_par_iter().map(|s| group_squares_of(x, axes, s, mean[s])).collect())
}

cnn_tensor::simd_fn! {
    /// `Σ (x − m)²` over group `s`.
    fn group_squares_of<T: Float>(x: &[T], axes: NormAxes, s: usize, m: T) -> T = group_squares_body
}

#[inline(always)]
fn group_squares_body<T: Float>(x: &[T], axes: NormAxes, s: usize, m: T) -> T {
    let mut sq = T::zero();
    for a in 0..axes.outer {
        sq += squares(segment(x, axes, a, s), m);
    }
    sq
}

/// `1/√(var + eps)` for each variance.
pub fn rstd<T: Float>(var: &[T], eps: f64) -> Vec<T> {
    var.iter().map(|&v| T::one() / (v + T::of(eps)).sqrt()).collect()
}
