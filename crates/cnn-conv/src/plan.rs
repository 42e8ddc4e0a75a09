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
/// A convolution pass with fewer multiply-adds than this is not cut beyond
/// its blocks of samples: cutting the digits model's layers (up to 38M)
/// cost 15% of its training time at 2 threads (CPU time 3.4 s against 2.9 s
/// per run of `cnn train`), and at 16 threads such a layer takes tens of µs.
pub(crate) const MIN_SPLIT_WORK: usize = 64 * MIN_TASK_WORK;

/// The cut of one `rows × cols` GEMM of inner dimension `depth` when
/// `concurrent` of them run side by side in a pass of `total` multiply-adds:
/// none when the pass is under [`MIN_SPLIT_WORK`]; else columns first (their packing is not repeated),
/// then rows, until `concurrent` times the blocks reaches [`MIN_TASKS`], the
/// blocks reach their minimum size, or a block would have less than
/// [`MIN_TASK_WORK`] multiply-adds.
pub(crate) fn gemm_split(
    concurrent: usize,
    (rows, cols, depth): (usize, usize, usize),
    total: usize,
) -> GemmSplit {
    let work = rows * cols * depth;
    if total < MIN_SPLIT_WORK {
        return GemmSplit::ONE;
    }
    let want = MIN_TASKS.div_ceil(concurrent.max(1)).min(work / MIN_TASK_WORK);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv2d::Pass;
    use crate::{Conv2dOptions, ConvGeometry};

    /// `(name, n, c_in, h, c_out, k, stride, padding, groups)`, square maps.
    type Layer = (&'static str, usize, usize, usize, usize, usize, usize, usize, usize);

    /// Every conv of the benchmark shapes (benches/conv.rs's `SHAPES`), of the CIFAR
    /// ResNet-20 train step (batch 128) and of ResNet-18 inference (batch 1 and 8).
    fn layers() -> Vec<Layer> {
        let mut v: Vec<Layer> = vec![
            ("A", 32, 3, 32, 16, 3, 1, 1, 1),
            ("B", 32, 16, 32, 16, 3, 1, 1, 1),
            ("C", 32, 64, 32, 64, 3, 1, 1, 1),
            ("D", 32, 128, 16, 128, 3, 1, 1, 1),
            ("E", 32, 256, 8, 256, 3, 1, 1, 1),
            ("F", 32, 64, 32, 128, 3, 2, 1, 1),
            ("G", 8, 3, 224, 64, 7, 2, 3, 1),
            ("H", 32, 256, 8, 64, 1, 1, 0, 1),
            ("DW", 32, 96, 56, 96, 7, 1, 3, 96),
        ];
        for (c_in, c_out, h, s, k, p) in [
            (3, 16, 32, 1, 3, 1),
            (16, 16, 32, 1, 3, 1),
            (16, 32, 32, 2, 3, 1),
            (16, 32, 32, 2, 1, 0),
            (32, 32, 16, 1, 3, 1),
            (32, 64, 16, 2, 3, 1),
            (32, 64, 16, 2, 1, 0),
            (64, 64, 8, 1, 3, 1),
        ] {
            v.push(("resnet20", 128, c_in, h, c_out, k, s, p, 1));
        }
        for n in [1, 8] {
            for (c_in, c_out, h, s, k, p) in [
                (3, 64, 224, 2, 7, 3),
                (64, 64, 56, 1, 3, 1),
                (64, 128, 56, 2, 3, 1),
                (64, 128, 56, 2, 1, 0),
                (128, 128, 28, 1, 3, 1),
                (128, 256, 28, 2, 3, 1),
                (128, 256, 28, 2, 1, 0),
                (256, 256, 14, 1, 3, 1),
                (256, 512, 14, 2, 3, 1),
                (256, 512, 14, 2, 1, 0),
                (512, 512, 7, 1, 3, 1),
            ] {
                v.push(("resnet18", n, c_in, h, c_out, k, s, p, 1));
            }
        }
        v
    }

    fn geometry(&(_, n, c_in, h, c_out, k, s, p, groups): &Layer) -> ConvGeometry {
        let opts = Conv2dOptions::default().with_stride(s).with_padding(p).with_groups(groups);
        ConvGeometry::new(&[n, c_in, h, h], &[c_out, c_in / groups, k, k], &opts).unwrap()
    }

    /// The GEMM tasks of each pass of `g` (depthwise convs: one task per plane).
    fn tasks(g: &ConvGeometry, pass: Pass) -> Vec<Vec<f64>> {
        if crate::depthwise::applies(g) {
            let plane = (g.out_area() * g.kh * g.kw) as f64;
            return vec![vec![plane; g.n * g.c_out]];
        }
        match (crate::winograd::choose(g).unwrap(), pass) {
            (Some(tile), Pass::Forward) => vec![crate::winograd::gemm_tasks::<f32>(tile, g, false)],
            (Some(tile), Pass::Backward) => {
                let gt = g.dx_as_forward().unwrap();
                vec![
                    crate::winograd::gemm_tasks::<f32>(tile, &gt, false),
                    crate::winograd::gemm_tasks::<f32>(tile, g, true),
                ]
            }
            (None, pass) => vec![crate::conv2d::gemm_tasks::<f32>(g, pass)],
        }
    }

    /// At 16 threads every layer offers at least four tasks per thread in
    /// each parallel stage (stages under [`MIN_SPLIT_WORK`] are not cut),
    /// none more than twice the stage's
    /// mean; the plan (and so every task) is the same on 1, 2, 16 and 64 threads.
    #[test]
    fn every_layer_gives_sixteen_threads_four_similar_tasks_each() {
        let mut report = String::new();
        for layer in layers() {
            let g = geometry(&layer);
            let backward = layer.0 != "resnet18";
            let passes: &[Pass] =
                if backward { &[Pass::Forward, Pass::Backward] } else { &[Pass::Forward] };
            for &pass in passes {
                let want = tasks(&g, pass);
                for threads in [1, 2, 16, 64] {
                    let pool =
                        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    assert_eq!(pool.install(|| tasks(&g, pass)), want, "{layer:?} {threads}");
                }
                for stage in &want {
                    let mean = stage.iter().sum::<f64>() / stage.len() as f64;
                    let max = stage.iter().copied().fold(0.0, f64::max);
                    report += &format!(
                        "{layer:?} {pass:?}: {} tasks, largest {:.2}x the mean\n",
                        stage.len(),
                        max / mean
                    );
                    // Four per thread at 16 threads, unless the stage is too small to
                    // be cut (shape A forward: 14M multiply-adds, one task per sample).
                    let total: f64 = stage.iter().sum();
                    let want = if total >= MIN_SPLIT_WORK as f64 { MIN_TASKS } else { 1 };
                    assert!(stage.len() >= want, "{layer:?} {pass:?}: {} tasks", stage.len());
                    assert!(max <= 2.0 * mean, "{layer:?} {pass:?}: largest {max} mean {mean}");
                }
            }
        }
        println!("{report}");
    }
}
