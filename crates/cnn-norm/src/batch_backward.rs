//! Batch-statistics backward of a view whose γ runs are its groups'
//! segments (BatchNorm: statistics and γ both per channel), in two passes
//! over `x` and `dy` instead of three, and optionally through a ReLU's signs.
//!
//! The general backward ([`crate::normalize_backward`]) reads `x` and `dy`
//! three times: the per-group sums `(Σ g, Σ g·x̂)`, then dx, then the
//! per-feature sums for dγ and dβ. When features are groups, the per-segment
//! sums of the first pass are the very sums the third adds up (in the same
//! order), so both come out of one pass. With a ReLU after the norm
//! (`relu(bn(x))` in training) its backward is folded in as well: `dy` is
//! masked by the ReLU's signs one piece at a time in a stack buffer, instead
//! of in a pass of its own that writes a masked copy. Bit for bit the ReLU's
//! backward (`dy` where positive, else 0) then the three-pass backward.
//!
//! ```text
//! per group s (task):   for each segment (a, s):  piece of dy masked → (Σ g, Σ g·(x − m))
//!                       → Σ γg, Σ γg·x̂ (the coefficients) and dβ, dγ
//! per segment (task):   piece of dy masked → dx = r·(γg − mg − x̂·mgx)
//! ```

use std::mem::MaybeUninit;

use cnn_tensor::simd::{assume_init, assume_init_mut, uninit_vec};
use cnn_tensor::{Error, Float, Result};
use rayon::prelude::*;

use crate::kernel::{
    check_backward, dx_segment_body, fold, sum_and_dot_lanes, Affine, NormAxes, NormGrads, LANES,
};

/// Elements masked at a time: whole lane rows (so the lane sums run as over
/// the whole segment), 4 KiB of f32 in L1.
const PIECE: usize = 16 * LANES;

/// Whether each γ run of `affine` is one whole segment of one group, with
/// the group as its feature (BatchNorm's `[N, C, H·W]` on both views), or
/// there is no affine: then the first pass also gives dγ and dβ.
pub(crate) fn features_are_groups<T>(axes: NormAxes, affine: Option<&Affine<'_, T>>) -> bool {
    affine.is_none_or(|a| {
        a.axes.outer == axes.outer && a.axes.features == axes.groups && a.axes.inner == axes.inner
    })
}

/// [`crate::normalize_backward`] with batch statistics for `relu(norm(x))`:
/// the ReLU's backward (`dy` where `positive[i] != 0`, else 0) folded into
/// the norm's, which runs in two passes over `x` and `dy` when the affine's
/// features are the groups (BatchNorm), else masks `dy` into a copy first.
/// Bit for bit `cnn_act::rectifier_backward_masked` then the norm's backward.
///
/// # Errors
/// As [`crate::normalize_backward`], and [`Error::Shape`] when `positive`
/// is not `x`'s length.
pub fn normalize_backward_relu<T: Float>(
    x: &[T],
    dy: &[T],
    positive: &[u8],
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<Affine<'_, T>>,
) -> Result<NormGrads<T>> {
    check_backward(x, dy, axes, mean, rstd, affine.as_ref())?;
    if positive.len() != x.len() {
        return Err(Error::shape(
            "norm",
            format!("a sign mask of {} for {} values", positive.len(), x.len()),
        ));
    }
    if !features_are_groups(axes, affine.as_ref()) {
        let masked: Vec<T> = dy.iter().zip(positive).map(|(&g, &m)| select(g, m)).collect();
        let stats = crate::Statistics::Batch;
        return crate::normalize_backward(x, &masked, axes, mean, rstd, affine, stats);
    }
    Ok(two_pass(x, dy, Some(positive), axes, mean, rstd, affine.as_ref()))
}

/// The two-pass backward; `x`, `dy` (and `positive`) checked by the caller
/// against `axes`, and [`features_are_groups`] holds.
pub(crate) fn two_pass<T: Float>(
    x: &[T],
    dy: &[T],
    positive: Option<&[u8]>,
    axes: NormAxes,
    mean: &[T],
    rstd: &[T],
    affine: Option<&Affine<'_, T>>,
) -> NormGrads<T> {
    let count = T::of(axes.count() as f64);
    // [Σ γg, Σ γg·x̂, dγ, dβ] per group.
    let sums: Vec<[T; 4]> = (0..axes.groups)
        .into_par_iter()
        .map(|s| {
            let gamma = affine.map_or(T::one(), |a| a.gamma[s]);
            group_sums_all(x, dy, positive, axes, s, [mean[s], rstd[s], gamma])
        })
        .collect();
    let mut dx = uninit_vec::<T>(x.len());
    dx.par_chunks_mut(axes.inner).enumerate().for_each(|(seg, out)| {
        let s = seg % axes.groups;
        let start = seg * axes.inner;
        let stats = [mean[s], rstd[s], sums[s][0] / count, sums[s][1] / count];
        let (xs, dys) = (&x[start..start + axes.inner], &dy[start..start + axes.inner]);
        let signs = positive.map(|p| &p[start..start + axes.inner]);
        dx_masked(out, xs, dys, signs, start, stats, affine);
    });
    // SAFETY: the chunks cover `dx` and every element of every chunk was written above.
    let dx = unsafe { assume_init(dx) };
    let (dgamma, dbeta) = match affine {
        None => (Vec::new(), Vec::new()),
        Some(_) => (sums.iter().map(|s| s[2]).collect(), sums.iter().map(|s| s[3]).collect()),
    };
    NormGrads { dx, dgamma, dbeta }
}

/// The ReLU's backward of one gradient: kept where the output was positive,
/// else 0 (selected, not multiplied: NaN·0 would be NaN).
#[inline(always)]
fn select<T: Float>(g: T, positive: u8) -> T {
    if positive != 0 {
        g
    } else {
        T::zero()
    }
}

/// A piece's buffer for masked gradients: never zeroed (each use writes
/// the part it reads).
type Piece<T> = [MaybeUninit<T>; PIECE];

/// `dy` (at most [`PIECE`] long) masked by `signs` into `buf`, or `dy`
/// itself without signs.
#[inline(always)]
fn masked<'a, T: Float>(dy: &'a [T], signs: Option<&[u8]>, buf: &'a mut Piece<T>) -> &'a [T] {
    match signs {
        None => dy,
        Some(signs) => {
            let part = &mut buf[..dy.len()];
            for ((b, &g), &m) in part.iter_mut().zip(dy).zip(signs) {
                b.write(select(g, m));
            }
            // SAFETY: every element of `part` was written just above.
            unsafe { assume_init_mut(part) }
        }
    }
}

cnn_tensor::simd_fn! {
    /// Group `s`'s `[Σ γg, Σ γg·x̂, Σ g·x̂, Σ g]` with `g` = `dy` masked by
    /// `positive`, from `[mean, rstd, γ]`: the sums of `group_grad_sums`
    /// and `feature_grad_sums`, segment by segment in their order.
    fn group_sums_all<T: Float>(
        x: &[T],
        dy: &[T],
        positive: Option<&[u8]>,
        axes: NormAxes,
        s: usize,
        stats: [T; 3],
    ) -> [T; 4] = group_sums_all_body
}

#[inline(always)]
fn group_sums_all_body<T: Float>(
    x: &[T],
    dy: &[T],
    positive: Option<&[u8]>,
    axes: NormAxes,
    s: usize,
    [m, r, gamma]: [T; 3],
) -> [T; 4] {
    let (mut sg, mut sgx, mut dg, mut db) = (T::zero(), T::zero(), T::zero(), T::zero());
    let mut buf: Piece<T> = [MaybeUninit::uninit(); PIECE];
    for a in 0..axes.outer {
        let start = (a * axes.groups + s) * axes.inner;
        let (xs, dys) = (&x[start..start + axes.inner], &dy[start..start + axes.inner]);
        let signs = positive.map(|p| &p[start..start + axes.inner]);
        let (mut ls, mut ld) = ([T::zero(); LANES], [T::zero(); LANES]);
        for (j, (xp, dp)) in xs.chunks(PIECE).zip(dys.chunks(PIECE)).enumerate() {
            let sp = signs.map(|p| &p[j * PIECE..j * PIECE + dp.len()]);
            sum_and_dot_lanes(&mut ls, &mut ld, masked(dp, sp, &mut buf), xp, m);
        }
        let (d, e) = (fold(ls), fold(ld));
        sg += gamma * d;
        sgx += gamma * e * r;
        db += d;
        dg += e * r;
    }
    [sg, sgx, dg, db]
}

cnn_tensor::simd_fn! {
    /// One segment's dx (`dx_segment`) from `dy` masked by `signs`, a piece at a time.
    fn dx_masked<T: Float>(
        out: &mut [MaybeUninit<T>],
        x: &[T],
        dy: &[T],
        signs: Option<&[u8]>,
        start: usize,
        stats: [T; 4],
        affine: Option<&Affine<'_, T>>,
    ) = dx_masked_body
}

#[inline(always)]
fn dx_masked_body<T: Float>(
    out: &mut [MaybeUninit<T>],
    x: &[T],
    dy: &[T],
    signs: Option<&[u8]>,
    start: usize,
    stats: [T; 4],
    affine: Option<&Affine<'_, T>>,
) {
    let mut buf: Piece<T> = [MaybeUninit::uninit(); PIECE];
    let pieces = out.chunks_mut(PIECE).zip(x.chunks(PIECE)).zip(dy.chunks(PIECE));
    for (j, ((o, xp), dp)) in pieces.enumerate() {
        let sp = signs.map(|s| &s[j * PIECE..j * PIECE + dp.len()]);
        dx_segment_body(o, xp, masked(dp, sp, &mut buf), start + j * PIECE, stats, affine);
    }
}
