//! BatchNorm2d, GroupNorm and GELU, forward (train mode) and backward, on
//! 32×64×32×32 f32, in bytes moved per second (criterion's "B/s").
//!
//! Bytes: forward reads x and writes y (2 tensors); backward reads x and dy
//! and writes dx (3 tensors); forward + backward counts 5. `cargo bench --bench norm_act`; PyTorch's
//! figures from benches/torch/torch_norm_act.py are in docs/benchmarks.md.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::time::Duration;

mod common;

/// A caching allocator, as a training program would use: glibc's malloc hands
/// multi-megabyte buffers back to the kernel on free and pays a page fault per
/// 4 KiB on the next step (docs/benchmarks.md measures the difference).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnn::prelude::*;
use cnn::tensor::random::normal;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

const SHAPE: [usize; 4] = [32, 64, 32, 32];

/// A named way to build a fresh layer.
type Maker = (&'static str, Box<dyn Fn() -> Box<dyn Layer<f32>>>);

fn layers() -> Vec<Maker> {
    vec![
        (
            "batch_norm2d",
            Box::new(|| {
                Box::new(BatchNorm::<f32>::new_2d(BatchNormConfig::new(64)).expect("valid"))
            }),
        ),
        (
            "group_norm_g32",
            Box::new(|| {
                Box::new(GroupNorm::<f32>::new(GroupNormConfig::new(32, 64)).expect("valid"))
            }),
        ),
        ("gelu", Box::new(|| Box::new(Act::<f32>::gelu()))),
    ]
}

/// The kernels' view of GroupNorm(32, 64) on [`SHAPE`]: 32 groups a sample,
/// γ and β per channel.
fn group_norm_axes(len: usize) -> (cnn::norm::NormAxes, cnn::norm::AffineAxes) {
    let groups = SHAPE[0] * 32;
    let axes = cnn::norm::NormAxes { outer: 1, groups, inner: len / groups };
    let af =
        cnn::norm::AffineAxes { outer: SHAPE[0], features: SHAPE[1], inner: SHAPE[2] * SHAPE[3] };
    (axes, af)
}

fn bench(c: &mut Criterion) {
    let x: ArrayD<f32> = normal(&SHAPE, 0.0, 1.0, &mut seeded_rng(1));
    let dy: ArrayD<f32> = normal(&SHAPE, 0.0, 1.0, &mut seeded_rng(2));
    let bytes = (x.len() * std::mem::size_of::<f32>()) as u64;
    let id = "n32_c64_32x32";
    for (name, make) in layers() {
        let mut fwd = c.benchmark_group(format!("{name}_fwd"));
        fwd.throughput(Throughput::Bytes(2 * bytes));
        let mut layer = make();
        fwd.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter_batched(
                || x.clone(),
                |x| layer.forward(x, Mode::Train).expect("forward"),
                BatchSize::PerIteration,
            )
        });
        if name == "group_norm_g32" {
            // The kernel alone on a borrowed x, as PyTorch's script reads the
            // same x every time. The layer row clones x first (the layer takes
            // x and keeps it for backward), and the pass then meets 8 MB just
            // written instead of an x read again and again: the same kernel on
            // a fresh clone measured as slow as the layer row (1.05 against
            // 0.31 ms on a Zen 2), so the gap is x's cache state, not the layer.
            let (gamma, beta) = (vec![1.0f32; SHAPE[1]], vec![0.0f32; SHAPE[1]]);
            let xs = x.as_slice().expect("contiguous");
            let (axes, af) = group_norm_axes(xs.len());
            fwd.bench_function(BenchmarkId::new("kernel", id), |b| {
                b.iter(|| {
                    let affine = cnn::norm::Affine { gamma: &gamma, beta: &beta, axes: af };
                    cnn::norm::normalize_fused(xs, axes, 1e-5, Some(affine)).expect("kernel")
                })
            });
        }
        if name == "gelu" {
            // Eval mode keeps nothing for backward: the kernel alone, in place.
            fwd.bench_function(BenchmarkId::new("eval", id), |b| {
                b.iter_batched(
                    || x.clone(),
                    |x| layer.forward(x, Mode::Eval).expect("forward"),
                    BatchSize::PerIteration,
                )
            });
        }
        fwd.finish();

        let mut bwd = c.benchmark_group(format!("{name}_bwd"));
        bwd.throughput(Throughput::Bytes(3 * bytes));
        bwd.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter_batched(
                || {
                    let mut layer = make();
                    layer.forward(x.clone(), Mode::Train).expect("forward");
                    (layer, dy.clone())
                },
                |(mut layer, dy)| layer.backward(dy).expect("backward"),
                BatchSize::PerIteration,
            )
        });
        bwd.finish();

        let mut both = c.benchmark_group(format!("{name}_fwd_bwd"));
        both.throughput(Throughput::Bytes(5 * bytes));
        both.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter_batched(
                || (make(), x.clone(), dy.clone()),
                |(mut layer, x, dy)| {
                    layer.forward(x, Mode::Train).expect("forward");
                    layer.backward(dy).expect("backward")
                },
                BatchSize::PerIteration,
            )
        });
        if name == "group_norm_g32" {
            // Both kernels on a borrowed x and dy, as PyTorch's script reads
            // the same x and dy every call (the layer row clones both first:
            // see the forward's kernel row). Same work as the layer: the
            // statistics, y, then dx, dγ and dβ.
            let (gamma, beta) = (vec![1.0f32; SHAPE[1]], vec![0.0f32; SHAPE[1]]);
            let (xs, dys) = (x.as_slice().expect("contiguous"), dy.as_slice().expect("contiguous"));
            let (axes, af) = group_norm_axes(xs.len());
            both.bench_function(BenchmarkId::new("kernel", id), |b| {
                b.iter(|| {
                    let affine = || cnn::norm::Affine { gamma: &gamma, beta: &beta, axes: af };
                    let (y, mean, var) =
                        cnn::norm::normalize_fused(xs, axes, 1e-5, Some(affine())).expect("fwd");
                    let rstd = cnn::norm::rstd(&var, 1e-5);
                    let grads = cnn::norm::normalize_backward_fused(
                        xs,
                        dys,
                        axes,
                        &mean,
                        &rstd,
                        Some(affine()),
                    )
                    .expect("bwd");
                    (y, grads)
                })
            });
        }
        both.finish();
    }
}

fn config() -> Criterion {
    common::keep_freed_pages();
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
