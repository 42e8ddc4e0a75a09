//! How a convolution's work is cut into parallel tasks, from the shapes alone.
//!
//! Every path (im2col + GEMM, Winograd, depthwise) cuts its work by the
//! shapes, never by the thread count, so each output is summed in one fixed
//! order and partial weight gradients are added in a fixed order: the same
//! bits on any number of threads. What the shapes give too few of (blocks of
//! samples, channels, Winograd's α² products) is made up by cutting each GEMM
//! into row × column blocks of its output ([`cnn_tensor::GemmSplit`]), so that
//! 16 threads get at least [`MIN_TASKS`] / 16 tasks each.

use cnn_tensor::{Float, GemmSplit};

/// Tasks a convolution should offer: four per thread at 16 threads, so that
/// uneven progress between threads evens out.
pub(crate) const MIN_TASKS: usize = 64;
/// A GEMM block has at least this many columns (one 8 x 48 panel wide)...
const MIN_COLS: usize = 48;
/// ...and at least this many rows (one panel of eight).
const MIN_ROWS: usize = 8;

/// Multiply-adds a task should have at least (about 20 µs of one core).
const MIN_TASK_WORK: usize = 1 << 20;
/// A convolution pass with fewer multiply-adds than this is cut little or
/// not at all (see [`gemm_split`]): cutting the digits model's layers (up to 38M) for 16
/// threads cost 15% of its training time at 2 threads (CPU time 3.4 s
/// against 2.9 s per run of `cnn train`), and at 16 threads such a layer
/// takes tens of µs.
pub(crate) const MIN_SPLIT_WORK: usize = 64 * MIN_TASK_WORK;
/// Tasks a forward pass under [`MIN_SPLIT_WORK`] is cut into, when its
/// products are big enough: a lone product (batch-1 inference's stride-2 and
/// 1×1 layers, 6–58M multiply-adds) would otherwise leave every core but one
/// idle. Backward passes keep such layers whole: their weight-gradient parts
/// would be summed in another order, changing the small training runs' bits.
pub(crate) const FEW_TASKS: usize = 4;

/// The cut of one `rows × cols` GEMM of inner dimension `depth` when
/// `concurrent` of them run side by side in a pass of `total` multiply-adds:
/// columns first (their packing is not repeated), then rows, until
/// `concurrent` times the blocks reaches [`MIN_TASKS`] (`small` for a pass
/// under [`MIN_SPLIT_WORK`]: 1, or [`FEW_TASKS`]), the blocks reach their
/// minimum size, or a block would have less than [`MIN_TASK_WORK`]
/// multiply-adds.
pub(crate) fn gemm_split(
    concurrent: usize,
    (rows, cols, depth): (usize, usize, usize),
    total: usize,
    small: usize,
) -> GemmSplit {
    let work = rows * cols * depth;
    let target = if total < MIN_SPLIT_WORK { small } else { MIN_TASKS };
    let want = target.div_ceil(concurrent.max(1)).min(work / MIN_TASK_WORK);
    if want <= 1 {
        return GemmSplit::ONE;
    }
    let col_parts = (cols / MIN_COLS).clamp(1, want);
    let row_parts = want.div_ceil(col_parts).min(rows / MIN_ROWS).max(1);
    GemmSplit { rows: row_parts, cols: col_parts }
}

/// Parts to cut the shared (inner) axis of length `k` of a product into, one
/// task each, as many as `split` has blocks, each at least 64 long: for the
/// weight gradient and Winograd's `dU`, whose outputs are small and whose
/// inner axis (output positions, tiles) is long. Each part writes a partial
/// that [`add_partials`] sums in order, so no operand is packed twice.
pub(crate) fn shared_axis_parts(split: GemmSplit, k: usize) -> usize {
    (split.rows * split.cols).min(k / 64).max(1)
}

/// `dst ← Σ_p partials[p]` (`overwrite`) or `dst += Σ_p partials[p]`, the
/// partials (each `dst.len()` long, side by side) added in order: the fixed
/// order that keeps the sums the same on any number of threads.
pub(crate) fn add_partials<T: Float>(dst: &mut [T], partials: &[T], overwrite: bool) {
    for (p, part) in partials.chunks(dst.len()).enumerate() {
        if overwrite && p == 0 {
            dst.copy_from_slice(part);
        } else {
            dst.iter_mut().zip(part).for_each(|(d, &v)| *d += v);
        }
    }
}
