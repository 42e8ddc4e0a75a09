//! The im2col + GEMM path of conv2d, forward and backward, parallel over
//! blocks of samples.
//!
//! Buffers, for a block of `s` samples and one group `g` (`G` groups):
//! ```text
//! col   [Cg·kh·kw, s·Ho·Wo]   im2col of the block          Cg  = C_in / G
//! W_g   [Cog, Cg·kh·kw]       rows of the weight            Cog = C_out / G
//! out   [Cog, s·Ho·Wo]        W_g · col, then scattered to y[n, g·Cog.., :, :]
//! dW_g  += dy_g · colᵀ        dy_g gathered like out
//! dcol   = W_gᵀ · dy_g        then col2im onto dx
//! ```
//! Blocks depend on the shapes only, never on the thread count, and partial
//! weight gradients are summed in block order: the same numbers on any number
//! of threads.

use cnn_tensor::scratch::Scratch as Pooled;
use cnn_tensor::{
    gemm, gemm_nt, gemm_panels_by_split, with_precision, Float, GemmSplit, PackedLhs,
};
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;
use std::ops::Range;

use crate::epilogue::Finish;
use crate::im2col::{col2im, im2col, TapRanges};
use crate::im2col_panels::Im2colPanels;
use crate::matrix::{mat, mat_mut, product, SharedOut};
use crate::ConvGeometry;

/// Columns a GEMM should see at least: small feature maps are batched so
/// that matrixmultiply's packing pays off (measured: see docs/benchmarks.md).
const TARGET_COLS: usize = 512;
/// Bound on the memory of the per-block partial weight gradients.
const PARTIALS_BYTES: usize = 32 << 20;
/// At most this many blocks in backward: enough to balance 16 threads, few
/// enough that summing the partial weight gradients stays cheap.
const MAX_BLOCKS: usize = 64;
/// Bytes of im2col tile that should stay in a core's L2 cache between being
/// written and being packed by the GEMM.
const TILE_BYTES: usize = 512 * 1024;

/// Which pass a plan is for: forward has no partial sums to bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// `y = conv(x)`.
    Forward,
    /// `dx` and `dW`.
    Backward,
}

/// How the work is cut, from the shapes alone (never from the thread count).
///
/// Blocks of samples run in parallel; inside a block, each GEMM is cut
/// further into `split` row × column blocks of its output when there are
/// too few blocks to give every one of 16 threads four tasks
/// ([`crate::plan::MIN_TASKS`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Samples per block: the unit of parallel work and of partial dW sums.
    pub(crate) samples: usize,
    /// Whether a block's samples sit side by side in one GEMM (small maps),
    /// or go one by one, tile by tile, straight into the output.
    pub(crate) batched: bool,
    /// Output rows per GEMM when not batched.
    pub(crate) tile_rows: usize,
    /// How each GEMM (forward: `W_g·col`; backward: `W_gᵀ·dy_g` and the dW
    /// product, by rows of dW) is cut into parallel tasks.
    pub(crate) split: GemmSplit,
}

impl Plan {
    pub(crate) fn new<T: Float>(g: &ConvGeometry, pass: Pass) -> Self {
        let partial_dw_bytes = g.c_out * g.col_rows() * std::mem::size_of::<T>();
        let max_blocks = match pass {
            Pass::Forward => g.n,
            Pass::Backward => (PARTIALS_BYTES / partial_dw_bytes).clamp(1, MAX_BLOCKS),
        };
        let min_samples = g.n.div_ceil(max_blocks);
        // A pointwise conv reads x and writes y in place, with no copies, so
        // it is never batched. Nor is a forward whose im2col is fused into
        // the product (no column matrix to amortize) on maps of 256 outputs
        // or more (at most an eighth of a product in padding columns).
        let fused = pass == Pass::Forward
            && cnn_tensor::PackedLhs::<T>::uses_kernel()
            && crate::im2col_panels::applies(g)
            && g.out_area() >= 256;
        let batched = !g.is_pointwise() && g.out_area() < TARGET_COLS && g.n > 1 && !fused;
        let samples =
            if batched { TARGET_COLS.div_ceil(g.out_area()).max(min_samples) } else { min_samples };
        let samples = samples.min(g.n);
        let cols = (TILE_BYTES / (g.col_rows() * std::mem::size_of::<T>())).max(TARGET_COLS);
        // Tiles of about equal height: ⌈ho / tiles⌉ rows each.
        let tiles = g.ho.div_ceil((cols / g.wo).clamp(1, g.ho));
        let tile_rows = g.ho.div_ceil(tiles);
        let blocks = g.n.div_ceil(samples);
        let gemm_cols = if batched { samples * g.out_area() } else { tile_rows * g.wo };
        // Forward's GEMM has C_out/G rows; backward's dx product C_in/G·kh·kw.
        let rows = match pass {
            Pass::Forward => g.c_out_g(),
            Pass::Backward => g.c_out_g().min(g.col_rows()),
        };
        let depth = g.c_out_g() * g.col_rows() / rows;
        let total = (g.flops() / 2) as usize;
        // Forward runs an unbatched block's tiles as tasks of their own.
        let per_block = if pass == Pass::Forward && !batched { samples * tiles } else { 1 };
        let concurrent = blocks * g.opts.groups * per_block;
        let small = if pass == Pass::Forward { crate::plan::FEW_TASKS } else { 1 };
        let split = crate::plan::gemm_split(concurrent, (rows, gemm_cols, depth), total, small);
        Plan { samples, batched, tile_rows, split }
    }

    /// Columns of the largest GEMM operand: the size of the scratch buffers.
    pub(crate) fn max_cols(&self, g: &ConvGeometry) -> usize {
        if self.batched {
            self.samples * g.out_area()
        } else {
            self.tile_rows * g.wo
        }
    }

    /// Output-row ranges of the tiles of one sample.
    pub(crate) fn tiles(&self, g: &ConvGeometry) -> impl Iterator<Item = Range<usize>> {
        let (step, ho) = (self.tile_rows, g.ho);
        (0..ho).step_by(step).map(move |r| r..(r + step).min(ho))
    }

    /// Blocks of samples: `(first sample, samples)`.
    #[cfg(test)]
    pub(crate) fn blocks(&self, g: &ConvGeometry) -> impl Iterator<Item = (usize, usize)> {
        let (step, n) = (self.samples, g.n);
        (0..n).step_by(step).map(move |n0| (n0, step.min(n - n0)))
    }
}

/// Each group's weight `W_g [C_out/G, rows]` (or its transpose, for dx)
/// packed once for the whole call.
pub(crate) fn pack_weights<T: Float>(
    g: &ConvGeometry,
    plan: &Plan,
    ws: &[T],
    transposed: bool,
) -> Vec<PackedLhs<T>> {
    let (rows, cog) = (g.col_rows(), g.c_out_g());
    (0..g.opts.groups)
        .map(|grp| {
            let w_g = mat(&ws[grp * cog * rows..], cog, rows, rows);
            PackedLhs::new(if transposed { w_g.t() } else { w_g }, plan.max_cols(g))
        })
        .collect()
}

/// `y = finish(conv(x))` by im2col + GEMM, `weights` the groups' packed
/// `W_g` ([`pack_weights`] for `plan`). `y` is `[n, c_out, ho, wo]`, written whole.
///
/// Small maps go by blocks of samples side by side; larger ones by tiles of
/// output rows, each (sample, group, tile) a task of its own, so that one
/// sample (batch-1 inference) still keeps every core busy with im2col and
/// products. Each output element is summed the same way whichever task or
/// thread makes it: the same bits on any thread count.
pub(crate) fn forward<T: Float>(
    g: &ConvGeometry,
    plan: &Plan,
    xs: &[T],
    weights: &[PackedLhs<T>],
    finish: Finish<'_, T>,
    y: &mut [T],
) {
    let per_sample_in = g.c_in * g.h * g.w;
    let per_sample_out = g.c_out * g.out_area();
    if plan.batched {
        y.par_chunks_mut(plan.samples * per_sample_out).enumerate().for_each_init(
            || Scratch::new(g, plan),
            |scratch, (blk, y_blk)| {
                let n0 = blk * plan.samples;
                let s = y_blk.len() / per_sample_out;
                let x_blk = &xs[n0 * per_sample_in..(n0 + s) * per_sample_in];
                forward_samples(g, plan.split, x_blk, weights, y_blk, s, finish, scratch);
            },
        );
        return;
    }
    let tiles: Vec<Range<usize>> = plan.tiles(g).collect();
    let per_sample = g.opts.groups * tiles.len();
    assert_eq!(y.len(), g.n * per_sample_out, "y is [n, c_out, ho, wo]");
    let out = SharedOut(y.as_mut_ptr());
    (0..g.n * per_sample).into_par_iter().for_each_init(
        || Scratch::new(g, plan),
        |scratch, task| {
            let (n, grp, tile) =
                (task / per_sample, task % per_sample / tiles.len(), task % tiles.len());
            let x_n = &xs[n * per_sample_in..][..per_sample_in];
            // SAFETY: `y` holds `n` samples of `per_sample_out` elements (asserted above); task
            // (n, grp, tile) alone writes sample n's channels of group `grp`, rows `tile`, and
            // `y` stays borrowed mutably until every task has returned.
            let y_tile = unsafe { out.tile(g, n * per_sample_out, grp, &tiles[tile]) };
            forward_tile(
                g,
                plan.split,
                x_n,
                grp,
                &weights[grp],
                &tiles[tile],
                y_tile,
                finish,
                scratch,
            );
        },
    );
}

/// The forward's output `y`, shared by the (sample, group, tile) tasks.
impl<T> SharedOut<T> {
    /// The `[C_out/G, rows·Wo]` view (rows `Ho·Wo` apart) of output rows
    /// `tile` of group `grp`'s channels of the sample starting at `sample`.
    ///
    /// # Safety
    /// The sample lies inside the buffer, and no other live view covers
    /// the same (sample, group, tile).
    unsafe fn tile(
        &self,
        g: &ConvGeometry,
        sample: usize,
        grp: usize,
        tile: &Range<usize>,
    ) -> ArrayViewMut2<'_, T> {
        let (area, cog) = (g.out_area(), g.c_out_g());
        let first = sample + grp * cog * area + tile.start * g.wo;
        // SAFETY: the caller's contract: `cog` rows of `tile.len()·wo` elements, `area` apart,
        // from `first`, lie inside the sample (the last ends at row `tile.end ≤ ho` of its plane).
        unsafe {
            ArrayViewMut2::from_shape_ptr(
                (cog, tile.len() * g.wo).strides((area, 1)),
                self.0.add(first),
            )
        }
    }
}
/// Buffers of one worker, taken from its thread's scratch pool (kept between
/// calls: the same shapes next step find them there, with no fresh pages).
/// Every one is written before it is read.
struct Scratch<T: Float> {
    /// im2col tile, or its gradient.
    col: Pooled<T>,
    /// GEMM output (forward) or gathered dy (backward) of a multi-sample block.
    out: Pooled<T>,
    /// Input rows split by phase of a horizontal stride (see `im2col`).
    phases: Pooled<T>,
    /// The right operand of `gemm_packed`, packed.
    packed: Pooled<T>,
    /// Each tap's valid output range, for every im2col and col2im of the call.
    taps: TapRanges,
}

impl<T: Float> Scratch<T> {
    fn new(g: &ConvGeometry, plan: &Plan) -> Self {
        let cols = plan.max_cols(g);
        // A pointwise conv needs no im2col buffer, an unbatched one no gather buffer.
        let col_len = if g.is_pointwise() { 0 } else { g.col_rows() * cols };
        let out_len = if plan.batched { g.c_out_g() * cols } else { 0 };
        Scratch {
            col: Pooled::take(col_len),
            out: Pooled::take(out_len),
            phases: Pooled::take(0),
            packed: Pooled::take(0),
            taps: TapRanges::new(g),
        }
    }
}

/// One tile of output rows `tile` of one sample's group `grp`: im2col (none
/// for a pointwise conv, whose input is its own column matrix), the product
/// straight into `y_tile`, then the bias and epilogue while it is in cache.
#[allow(clippy::too_many_arguments)]
fn forward_tile<T: Float>(
    g: &ConvGeometry,
    split: GemmSplit,
    x: &[T],
    grp: usize,
    w_g: &PackedLhs<T>,
    tile: &Range<usize>,
    mut y_tile: ArrayViewMut2<'_, T>,
    finish: Finish<'_, T>,
    scratch: &mut Scratch<T>,
) {
    let (area, rows, cg) = (g.out_area(), g.col_rows(), g.c_in_g());
    let cols = tile.len() * g.wo;
    let channels = grp * g.c_out_g()..(grp + 1) * g.c_out_g();
    // Each panel of the column matrix written from x just before the
    // micro-kernel reads it; a cut of the product's columns is a range of
    // whole panels a task (the same sums for every output, so the same bits).
    let fused = (split.rows == 1 && w_g.rhs_panels(cols).is_some())
        .then(|| Im2colPanels::new(g, &scratch.taps, x, grp * cg, tile.clone()))
        .flatten();
    if let Some(source) = fused {
        let fill = |panel, k0, kc, buf: &mut [T]| source.fill(panel, k0, kc, buf);
        gemm_panels_by_split(w_g, cols, T::zero(), y_tile.view_mut(), split.cols, fill)
            .expect("shapes agree by construction");
        #[cfg(test)]
        FUSED_TILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        finish.apply(y_tile, channels);
        return;
    }
    let col = if g.is_pointwise() {
        mat(&x[grp * cg * area + tile.start * g.wo..], cg, cols, area)
    } else {
        let (col, phases) = (&mut scratch.col, scratch.phases.vec_mut());
        im2col(g, &scratch.taps, x, grp * cg, tile.clone(), col, cols, phases);
        mat(&scratch.col, rows, cols, cols)
    };
    product(w_g, col, y_tile.view_mut(), split, scratch.packed.vec_mut());
    finish.apply(y_tile, channels);
}

/// Tiles whose product ran with the im2col fused in, counted for the test
/// that the fused path engages.
#[cfg(test)]
static FUSED_TILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Weight-gradient products that ran in `gemm_nt`'s lane kernel, counted for
/// the test that it engages.
#[cfg(test)]
static LANE_DW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The im2col matrices of group `grp` of the `s` samples of `x_blk`, side by
/// side in `scratch.col` (`[rows, s·Ho·Wo]`).
fn im2col_side_by_side<T: Float>(
    g: &ConvGeometry,
    x_blk: &[T],
    grp: usize,
    s: usize,
    scratch: &mut Scratch<T>,
) {
    let (area, per_in) = (g.out_area(), g.c_in * g.h * g.w);
    for (si, x) in x_blk.chunks(per_in).take(s).enumerate() {
        im2col(
            g,
            &scratch.taps,
            x,
            grp * g.c_in_g(),
            0..g.ho,
            &mut scratch.col[si * area..],
            s * area,
            scratch.phases.vec_mut(),
        );
    }
}

/// Several small samples side by side in one GEMM, then scattered into `y`.
#[allow(clippy::too_many_arguments)]
fn forward_samples<T: Float>(
    g: &ConvGeometry,
    split: GemmSplit,
    x_blk: &[T],
    weights: &[PackedLhs<T>],
    y_blk: &mut [T],
    s: usize,
    finish: Finish<'_, T>,
    scratch: &mut Scratch<T>,
) {
    let (area, rows, cog) = (g.out_area(), g.col_rows(), g.c_out_g());
    let cols = s * area;
    let per_out = g.c_out * area;
    for (grp, w_g) in weights.iter().enumerate() {
        im2col_side_by_side(g, x_blk, grp, s, scratch);
        let mut out = mat_mut(&mut scratch.out, cog, cols, cols);
        let packed = scratch.packed.vec_mut();
        product(w_g, mat(&scratch.col, rows, cols, cols), out.view_mut(), split, packed);
        finish.apply(out, grp * cog..(grp + 1) * cog);
        for si in 0..s {
            for o in 0..cog {
                let dst = &mut y_blk[si * per_out + (grp * cog + o) * area..][..area];
                dst.copy_from_slice(&scratch.out[o * cols + si * area..][..area]);
            }
        }
    }
}

/// `dx` (written whole) and `dW` (`dw_flat`, written whole) by im2col + GEMM.
pub(crate) fn backward<T: Float>(
    g: &ConvGeometry,
    xs: &[T],
    ws: &[T],
    dys: &[T],
    dx_slice: &mut [T],
    dw_flat: &mut [T],
) {
    let per_in = g.c_in * g.h * g.w;
    let per_out = g.c_out * g.out_area();
    let plan = Plan::new::<T>(g, Pass::Backward);
    let weights_t = pack_weights(g, &plan, ws, true);
    let dw_len = ws.len();
    // One partial dW per block, side by side in one pooled buffer.
    let mut partials = Pooled::<T>::zeroed(g.n.div_ceil(plan.samples) * dw_len);
    // The dW products (not packed here) read the precision in each task.
    let precision = cnn_tensor::precision();
    dx_slice
        .par_chunks_mut(plan.samples * per_in)
        .zip(partials.par_chunks_mut(dw_len))
        .enumerate()
        .for_each_init(
            || Scratch::new(g, &plan),
            |scratch, (blk, (dx_blk, dw))| {
                with_precision(precision, || {
                    let n0 = blk * plan.samples;
                    let s = dx_blk.len() / per_in;
                    let x_blk = &xs[n0 * per_in..(n0 + s) * per_in];
                    let dy_blk = &dys[n0 * per_out..(n0 + s) * per_out];
                    if plan.batched {
                        backward_samples(
                            g, plan.split, x_blk, &weights_t, dy_blk, dx_blk, dw, s, scratch,
                        );
                    } else {
                        let samples = x_blk
                            .chunks(per_in)
                            .zip(dy_blk.chunks(per_out))
                            .zip(dx_blk.chunks_mut(per_in));
                        for ((x_n, dy_n), dx_n) in samples {
                            backward_sample(g, &plan, x_n, &weights_t, dy_n, dx_n, dw, scratch);
                        }
                    }
                })
            },
        );

    // Fixed order: block 0 + block 1 + … whatever thread made each.
    crate::plan::add_partials(dw_flat, &partials, false);
}

/// The work (multiply-adds) of each parallel GEMM task of the im2col path
/// on `g`: what the plan test counts.
#[cfg(test)]
pub(crate) fn gemm_tasks<T: Float>(g: &ConvGeometry, pass: Pass) -> Vec<f64> {
    let plan = Plan::new::<T>(g, pass);
    let (rows, cog) = (g.col_rows(), g.c_out_g());
    let mut tasks = Vec::new();
    let mut product = |cols: usize| match pass {
        Pass::Forward => {
            let blocks = plan.split.blocks(cog, cols, (8, 48));
            tasks.extend(blocks.iter().map(|&(r, c)| (r * c * rows) as f64));
        }
        Pass::Backward => {
            let blocks = plan.split.blocks(rows, cols, (8, 48));
            tasks.extend(blocks.iter().map(|&(r, c)| (r * c * cog) as f64));
            let parts = crate::plan::shared_axis_parts(plan.split, cols);
            tasks.extend((0..parts).map(|_| (cog * rows * cols / parts) as f64));
        }
    };
    for (_, s) in plan.blocks(g) {
        for _ in 0..g.opts.groups {
            if plan.batched {
                product(s * g.out_area());
            } else {
                for _ in 0..s {
                    plan.tiles(g).for_each(|t| product(t.len() * g.wo));
                }
            }
        }
    }
    tasks
}

/// `dW_g += dy_g · colᵀ`, cut into `split.rows·split.cols` parallel parts.
///
/// The cut runs along the long shared axis (output positions): each part
/// multiplies its own columns of `dy_g` and `col` into a partial dW of its
/// own, and the partials are added in part order (fixed by the shapes). So
/// no operand is packed twice; cutting by output channels or taps instead
/// repacked the other operand once per part (shape G backward 18.7 → 34.7
/// ms, and 27.7 with the cut along the larger operand).
fn add_weight_grad<T: Float>(
    dy_g: ArrayView2<'_, T>,
    col: ArrayView2<'_, T>,
    mut dw_g: ArrayViewMut2<'_, T>,
    split: GemmSplit,
) {
    let (m, n, k) = (dy_g.nrows(), col.nrows(), dy_g.ncols());
    let thin = m < 64;
    let parts = crate::plan::shared_axis_parts(split, k);
    if parts == 1 {
        weight_grad_product(dy_g, col, dw_g, thin, T::one());
        return;
    }
    // Every partial is written whole (β = 0) before it is read.
    let mut partials = Pooled::<T>::take(parts * m * n);
    let precision = cnn_tensor::precision();
    partials.par_chunks_mut(m * n).enumerate().for_each(|(p, part)| {
        let cols = ndarray::s![.., p * k / parts..(p + 1) * k / parts];
        let (dy_p, col_p) = (dy_g.slice(cols), col.slice(cols));
        with_precision(precision, || {
            weight_grad_product(dy_p, col_p, mat_mut(part, m, n, n), thin, T::zero());
        });
    });
    for part in partials.chunks(m * n) {
        dw_g += &mat(part, m, n, n);
    }
}

/// `dW ← dy · colᵀ + β·dW`: both operands along their rows (output
/// positions), by [`gemm_nt`]'s lane kernel where it runs (no packing), else
/// by matrixmultiply in the orientation it packs faster.
///
/// Neither operand is laid out as matrixmultiply's packing likes, so its
/// orientation was measured: with few output channels (`thin`: fewer than
/// 64 rows of `dy`) computing `dWᵀ = col · dyᵀ` was 45% faster (shape B),
/// with many it was 5–10% slower (D, F, H).
fn weight_grad_product<T: Float>(
    dy: ArrayView2<'_, T>,
    col: ArrayView2<'_, T>,
    dw: ArrayViewMut2<'_, T>,
    thin: bool,
    beta: T,
) {
    let done = if cnn_tensor::gemm_nt_uses_kernel(&dy, &col) {
        #[cfg(test)]
        LANE_DW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gemm_nt(dy, col, beta, dw)
    } else if thin {
        gemm(T::one(), col, dy.t(), beta, dw.reversed_axes())
    } else {
        gemm(T::one(), dy, col.t(), beta, dw)
    };
    done.expect("shapes agree by construction");
}

/// One sample's dx (into `dx`) and its dW (added into `dw`), tile by tile.
#[allow(clippy::too_many_arguments)]
fn backward_sample<T: Float>(
    g: &ConvGeometry,
    plan: &Plan,
    x: &[T],
    weights_t: &[PackedLhs<T>],
    dy: &[T],
    dx: &mut [T],
    dw: &mut [T],
    scratch: &mut Scratch<T>,
) {
    let (area, rows, cog, cg, wo) = (g.out_area(), g.col_rows(), g.c_out_g(), g.c_in_g(), g.wo);
    for grp in 0..g.opts.groups {
        for tile in plan.tiles(g) {
            let cols = tile.len() * wo;
            let offset = tile.start * wo;
            let dy_t = mat(&dy[grp * cog * area + offset..], cog, cols, area);
            let dw_g = mat_mut(&mut dw[grp * cog * rows..], cog, rows, rows);
            if g.is_pointwise() {
                let x_t = mat(&x[grp * cg * area + offset..], cg, cols, area);
                add_weight_grad(dy_t, x_t, dw_g, plan.split);
                let dx_t = mat_mut(&mut dx[grp * cg * area + offset..], cg, cols, area);
                product(&weights_t[grp], dy_t, dx_t, plan.split, scratch.packed.vec_mut());
            } else {
                im2col(
                    g,
                    &scratch.taps,
                    x,
                    grp * cg,
                    tile.clone(),
                    &mut scratch.col,
                    cols,
                    scratch.phases.vec_mut(),
                );
                let col = mat(&scratch.col, rows, cols, cols);
                add_weight_grad(dy_t, col, dw_g, plan.split);
                let dcol = mat_mut(&mut scratch.col, rows, cols, cols);
                product(&weights_t[grp], dy_t, dcol, plan.split, scratch.packed.vec_mut());
                let (col, phases) = (&scratch.col, scratch.phases.vec_mut());
                col2im(g, &scratch.taps, col, cols, tile, grp * cg, dx, phases);
            }
        }
    }
}

/// Several small samples side by side: dy gathered into one matrix per group.
#[allow(clippy::too_many_arguments)]
fn backward_samples<T: Float>(
    g: &ConvGeometry,
    split: GemmSplit,
    x_blk: &[T],
    weights_t: &[PackedLhs<T>],
    dy_blk: &[T],
    dx_blk: &mut [T],
    dw: &mut [T],
    s: usize,
    scratch: &mut Scratch<T>,
) {
    let (area, rows, cog, cg) = (g.out_area(), g.col_rows(), g.c_out_g(), g.c_in_g());
    let cols = s * area;
    let (per_in, per_out) = (g.c_in * g.h * g.w, g.c_out * area);
    for grp in 0..g.opts.groups {
        for si in 0..s {
            for o in 0..cog {
                let src = &dy_blk[si * per_out + (grp * cog + o) * area..][..area];
                scratch.out[o * cols + si * area..][..area].copy_from_slice(src);
            }
        }
        im2col_side_by_side(g, x_blk, grp, s, scratch);
        let dy_g = mat(&scratch.out, cog, cols, cols);
        let dw_g = mat_mut(&mut dw[grp * cog * rows..], cog, rows, rows);
        add_weight_grad(dy_g, mat(&scratch.col, rows, cols, cols), dw_g, split);
        let dcol = mat_mut(&mut scratch.col, rows, cols, cols);
        product(&weights_t[grp], dy_g, dcol, split, scratch.packed.vec_mut());
        for si in 0..s {
            let dx = &mut dx_blk[si * per_in..(si + 1) * per_in];
            col2im(
                g,
                &scratch.taps,
                &scratch.col[si * area..],
                cols,
                0..g.ho,
                grp * cg,
                dx,
                scratch.phases.vec_mut(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epilogue::Epilogue;
    use crate::Conv2dOptions;
    use std::sync::atomic::Ordering;

    /// The weight gradient of ResNet-20's first stage (16 → 16 channels,
    /// 32×32, a sample block's output positions as the shared axis) and of
    /// a 1×1 conv on a 32×32 map runs in `gemm_nt`'s lane kernel at the
    /// vector levels, and equals the naive kernel within f32 rounding.
    #[test]
    fn weight_gradients_run_in_the_lane_kernel() {
        for (c_in, c_out, k) in [(16, 16, 3), (32, 16, 1)] {
            let opts = Conv2dOptions::default().with_padding(k / 2);
            let shape = [4, c_in, 32, 32];
            let x = ndarray::Array4::from_shape_fn(shape, |(n, c, i, j)| {
                ((n * 7 + c * 5 + i * 3 + j) as f32 * 0.37).sin()
            });
            let w = ndarray::Array4::from_shape_fn((c_out, c_in, k, k), |(o, c, i, j)| {
                ((o * 5 + c * 3 + i * 2 + j) as f32 * 0.11).cos()
            });
            let dy = ndarray::Array4::from_shape_fn((4, c_out, 32, 32), |(n, o, i, j)| {
                ((n + o * 3 + i * 5 + j * 7) as f32 * 0.23).sin()
            });
            let before = LANE_DW.load(Ordering::Relaxed);
            let got = crate::conv2d_backward(x.view(), w.view(), dy.view(), &opts).unwrap();
            let ran = LANE_DW.load(Ordering::Relaxed) > before;
            let vector = cnn_tensor::simd::level() >= cnn_tensor::simd::SimdLevel::Avx2;
            assert_eq!(ran, vector, "{c_in}->{c_out} k{k}: lane kernel ran {ran}");
            let want =
                crate::naive::conv2d_backward_naive(x.view(), w.view(), dy.view(), &opts).unwrap();
            let scale = want.dw.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in got.dw.iter().zip(&want.dw) {
                assert!((a - b).abs() <= 1e-5 * scale, "{c_in}->{c_out} k{k}: {a} vs {b}");
            }
        }
    }

    /// Under a bf16 scope the same weight gradients take `gemm_nt`'s bf16
    /// lanes at every SIMD level (portable included: the rule is the shape's
    /// alone) and stay within the bound of bf16 products against the naive
    /// kernel on the unrounded inputs, `(2⁻⁷ + 2⁻¹⁶)·S + 2n·u·S`.
    #[test]
    fn bf16_weight_gradients_run_in_the_bf16_lanes() {
        use cnn_tensor::{with_precision, Precision};
        let (c_in, c_out) = (16, 16);
        let opts = Conv2dOptions::default().with_padding(1);
        let x = ndarray::Array4::from_shape_fn([4, c_in, 32, 32], |(n, c, i, j)| {
            ((n * 7 + c * 5 + i * 3 + j) as f32 * 0.37).sin()
        });
        let w = ndarray::Array4::from_shape_fn((c_out, c_in, 3, 3), |(o, c, i, j)| {
            ((o * 5 + c * 3 + i * 2 + j) as f32 * 0.11).cos()
        });
        let dy = ndarray::Array4::from_shape_fn((4, c_out, 32, 32), |(n, o, i, j)| {
            ((n + o * 3 + i * 5 + j * 7) as f32 * 0.23).sin()
        });
        let before = LANE_DW.load(Ordering::Relaxed);
        let got = with_precision(Precision::Bf16, || {
            crate::conv2d_backward(x.view(), w.view(), dy.view(), &opts).unwrap()
        });
        assert!(LANE_DW.load(Ordering::Relaxed) > before, "the bf16 lanes ran");
        let f64_of = |a: &ndarray::Array4<f32>| a.mapv(f64::from);
        let (x64, w64, dy64) = (f64_of(&x), f64_of(&w), f64_of(&dy));
        let want = crate::naive::conv2d_backward_naive(x64.view(), w64.view(), dy64.view(), &opts)
            .unwrap();
        let abs = |a: &ndarray::Array4<f64>| a.mapv(f64::abs);
        let s = crate::naive::conv2d_backward_naive(
            abs(&x64).view(),
            abs(&w64).view(),
            abs(&dy64).view(),
            &opts,
        )
        .unwrap();
        let n = (4 * 32 * 32) as f64;
        let factor = 1.0 / 128.0 + 1.0 / 65536.0 + 2.0 * n / f64::from(1u32 << 24);
        for ((&a, &b), &s) in got.dw.iter().zip(&want.dw).zip(&s.dw) {
            assert!((f64::from(a) - b).abs() <= factor * s, "{a} vs {b} (S {s})");
        }
    }

    /// [`bf16_weight_gradients_run_in_the_bf16_lanes`] in a child process per SIMD level.
    #[test]
    fn bf16_lanes_run_at_every_level() {
        for level in cnn_tensor::simd::levels() {
            let env = [("CNN_SIMD", level.name())];
            cnn_tensor::simd::rerun_tests("bf16_weight_gradients_run_in_the_bf16_lanes", &env)
                .unwrap();
        }
    }

    /// A forward tile whose product is cut by columns (shape F at 32
    /// samples is cut in two) still fuses its im2col, a range of whole
    /// panels a task, and gives the bits of the uncut fused product and of
    /// the column-matrix path (taken with a cut by rows): for stride 1 and
    /// 2, ragged tile widths, cuts into 2, 3 and more parts than panels.
    #[test]
    fn a_column_cut_keeps_the_im2col_fused_and_the_bits() {
        for (c_in, side, stride, c_out, tile) in
            [(64, 32, 2, 128, 0..16), (16, 32, 1, 16, 3..20), (8, 30, 2, 24, 1..14)]
        {
            let opts = Conv2dOptions::default().with_stride(stride).with_padding(1);
            let g = ConvGeometry::new(&[1, c_in, side, side], &[c_out, c_in, 3, 3], &opts).unwrap();
            let x: Vec<f32> = (0..c_in * side * side).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..c_out * c_in * 9).map(|i| (i as f32 * 0.11).cos()).collect();
            let plan = Plan::new::<f32>(&g, Pass::Forward);
            let w_g = &pack_weights(&g, &plan, &w, false)[0];
            let cols = tile.len() * g.wo;
            let run = |split: GemmSplit| {
                let mut y = ndarray::Array2::<f32>::zeros((c_out, cols));
                let mut scratch = Scratch::new(&g, &plan);
                scratch.col = Pooled::take(g.col_rows() * cols); // tiles of any height
                let finish = Finish { bias: None, epilogue: Epilogue::None };
                let before = FUSED_TILES.load(Ordering::Relaxed);
                forward_tile(&g, split, &x, 0, w_g, &tile, y.view_mut(), finish, &mut scratch);
                (y, FUSED_TILES.load(Ordering::Relaxed) > before)
            };
            let (plain, fused) = run(GemmSplit { rows: 2, cols: 1 });
            assert!(!fused, "a cut by rows takes the column matrix");
            for parts in [1, 2, 3, 64] {
                let (y, fused) = run(GemmSplit { rows: 1, cols: parts });
                if !PackedLhs::<f32>::uses_kernel() {
                    assert!(!fused);
                    continue; // no micro-kernel at this SIMD level: nothing to fuse
                }
                assert!(fused, "{c_in} {side} stride {stride}: {parts} parts not fused");
                let diff = y.iter().zip(&plain).filter(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(diff.count(), 0, "{c_in} {side} stride {stride}: {parts} parts");
            }
        }
    }
}
