//! The parallel work of every conv the project ships is cut into tasks that
//! balance 16 threads, the same cut on any thread count: a check over the
//! dispatcher and all three kernels, so it lives above them.

use crate::conv2d::{route, Route};
use crate::im2col_gemm::Pass;
use crate::plan::{FEW_TASKS, MIN_SPLIT_WORK, MIN_TASKS};
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
    match (route(g).unwrap(), pass) {
        (Route::Depthwise, _) => {
            let plane = (g.out_area() * g.kh * g.kw) as f64;
            vec![vec![plane; g.n * g.c_out]]
        }
        (Route::Winograd(tile), Pass::Forward) => {
            vec![crate::winograd::gemm_tasks::<f32>(tile, g, false)]
        }
        (Route::Winograd(tile), Pass::Backward) => {
            let gt = g.dx_as_forward().unwrap();
            vec![
                crate::winograd::gemm_tasks::<f32>(tile, &gt, false),
                crate::winograd::gemm_tasks::<f32>(tile, g, true),
            ]
        }
        (Route::Im2col, pass) => vec![crate::im2col_gemm::gemm_tasks::<f32>(g, pass)],
    }
}

/// At 16 threads every layer offers at least four tasks per thread in
/// each parallel stage (stages under [`MIN_SPLIT_WORK`]: forward
/// [`FEW_TASKS`], as many as 2 M multiply-adds a task allow), none more than twice the stage's
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
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
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
                // Four per thread at 16 threads, unless the stage is small (shape
                // A forward: 14M multiply-adds; ResNet-18's 1×1 projections at batch 1).
                let total: f64 = stage.iter().sum();
                let want = if total >= MIN_SPLIT_WORK as f64 {
                    MIN_TASKS
                } else if pass == Pass::Forward {
                    FEW_TASKS.min((total / (2 << 20) as f64) as usize).max(1)
                } else {
                    1
                };
                assert!(stage.len() >= want, "{layer:?} {pass:?}: {} tasks", stage.len());
                assert!(max <= 2.0 * mean, "{layer:?} {pass:?}: largest {max} mean {mean}");
            }
        }
    }
    println!("{report}");
}
