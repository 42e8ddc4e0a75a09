//! conv2d forward and backward on the eight shapes, and the sgemm
//! ceiling, in FLOP/s (criterion's "elem/s" counts FLOPs here); both again
//! in bf16 mixed precision (`_bf16` groups and rows).
//!
//! Forward FLOPs = 2·N·Cout·Ho·Wo·Cin/groups·kh·kw; backward (dx + dW) twice that.
//! `cargo bench --bench conv`; figures and PyTorch's in docs/benchmarks.md.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::hint::black_box;
use std::time::Duration;

/// A caching allocator, as a training program would use: glibc's malloc hands
/// multi-megabyte buffers back to the kernel on free and pays a page fault per
/// 4 KiB on the next step (docs/benchmarks.md measures the difference).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnn::conv::{conv2d_backward, conv2d_forward, Conv2dOptions, ConvGeometry};
use cnn::tensor::random::{normal, seeded_rng};
use cnn::tensor::{with_precision, Precision};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Array4, Ix2, Ix4};
use rayon::prelude::*;

/// (name, N, Cin, H=W, Cout, k, stride, pad, groups).
type Shape = (&'static str, usize, usize, usize, usize, usize, usize, usize, usize);

/// The shapes of the PyTorch reference script (docs/benchmarks.md).
const SHAPES: [Shape; 9] = [
    ("A_n32_c3_32x32_k3", 32, 3, 32, 16, 3, 1, 1, 1),
    ("B_n32_c16_32x32_k3", 32, 16, 32, 16, 3, 1, 1, 1),
    ("C_n32_c64_32x32_k3", 32, 64, 32, 64, 3, 1, 1, 1),
    ("D_n32_c128_16x16_k3", 32, 128, 16, 128, 3, 1, 1, 1),
    ("E_n32_c256_8x8_k3", 32, 256, 8, 256, 3, 1, 1, 1),
    ("F_n32_c64_32x32_k3s2_to128", 32, 64, 32, 128, 3, 2, 1, 1),
    ("G_n8_c3_224x224_k7s2", 8, 3, 224, 64, 7, 2, 3, 1),
    ("H_n32_c256_8x8_k1_to64", 32, 256, 8, 64, 1, 1, 0, 1),
    // ConvNeXt's depthwise 7×7 (the kernel issue's shape).
    ("DW_n32_c96_56x56_k7_dw", 32, 96, 56, 96, 7, 1, 3, 96),
];

fn randn4(shape: [usize; 4], seed: u64) -> Array4<f32> {
    normal(&shape, 0.0, 1.0, &mut seeded_rng(seed)).into_dimensionality::<Ix4>().expect("4-D")
}

fn conv(c: &mut Criterion) {
    for (name, n, cin, hw, cout, k, s, p, groups) in SHAPES {
        let opts = Conv2dOptions::default().with_stride(s).with_padding(p).with_groups(groups);
        let x = randn4([n, cin, hw, hw], 1);
        let w = randn4([cout, cin / groups, k, k], 2);
        let g = ConvGeometry::new(x.shape(), w.shape(), &opts).expect("valid shape");
        let dy = randn4(g.out_shape(), 3);

        for (suffix, precision) in [("", Precision::F32), ("_bf16", Precision::Bf16)] {
            let mut fwd = c.benchmark_group(format!("conv2d_fwd{suffix}"));
            fwd.throughput(Throughput::Elements(g.flops()));
            fwd.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    with_precision(precision, || {
                        black_box(conv2d_forward(x.view(), w.view(), None, &opts).expect("forward"))
                    })
                })
            });
            fwd.finish();

            let mut bwd = c.benchmark_group(format!("conv2d_bwd{suffix}"));
            bwd.throughput(Throughput::Elements(2 * g.flops()));
            bwd.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    with_precision(precision, || {
                        black_box(conv2d_backward(x.view(), w.view(), dy.view(), &opts))
                    })
                })
            });
            bwd.finish();
        }
    }
}

/// matrixmultiply sgemm 2048², on one thread and with rows split over the rayon pool.
fn sgemm(c: &mut Criterion) {
    const M: usize = 2048;
    let randn2 = |seed| {
        normal::<f32, _>(&[M, M], 0.0, 1.0, &mut seeded_rng(seed)).into_dimensionality::<Ix2>()
    };
    let (a, b) = (randn2(4).expect("2-D"), randn2(5).expect("2-D"));
    let mut out = Array2::<f32>::zeros((M, M));
    let mut group = c.benchmark_group("sgemm");
    group.throughput(Throughput::Elements(2 * (M * M * M) as u64));
    group.bench_function("2048_1thread", |bch| {
        bch.iter(|| cnn::tensor::gemm(1.0, a.view(), b.view(), 0.0, out.view_mut()).expect("gemm"))
    });
    let mut scratch = Vec::new();
    // f32 and bf16 (inputs rounded, f32 sums) packed products, 1024² and 2048².
    for size in [1024, 2048] {
        let (a, b) = (a.slice(ndarray::s![..size, ..size]), b.slice(ndarray::s![..size, ..size]));
        let mut out = Array2::<f32>::zeros((size, size));
        group.throughput(Throughput::Elements(2 * (size * size * size) as u64));
        for (suffix, precision) in [("", Precision::F32), ("_bf16", Precision::Bf16)] {
            let packed = with_precision(precision, || cnn::tensor::PackedLhs::new(a, size));
            group.bench_function(format!("{size}_packed{suffix}_1thread"), |bch| {
                bch.iter(|| {
                    cnn::tensor::gemm_packed(&packed, b, 0.0, out.view_mut(), &mut scratch)
                        .expect("gemm")
                })
            });
        }
    }
    group.throughput(Throughput::Elements(2 * (M * M * M) as u64));
    // Every panel shape of the micro-kernel, one thread: how the per-vendor
    // tables in cnn-tensor's packed.rs were (and are to be) chosen.
    for (mr, nv) in cnn::tensor::PANELS {
        let packed = cnn::tensor::PackedLhs::with_panel(a.view(), (mr, nv)).expect("a panel");
        group.bench_function(format!("2048_panel_{mr}x{}_1thread", 16 * nv), |bch| {
            bch.iter(|| {
                cnn::tensor::gemm_packed(&packed, b.view(), 0.0, out.view_mut(), &mut scratch)
                    .expect("gemm")
            })
        });
    }
    let threads = rayon::current_num_threads();
    group.bench_function(format!("2048_{threads}threads"), |bch| {
        bch.iter(|| {
            let rows = M / threads;
            let out_rows = out.as_slice_mut().expect("contiguous");
            out_rows.par_chunks_mut(rows * M).enumerate().for_each(|(i, o)| {
                let a_part = a.slice(ndarray::s![i * rows..(i + 1) * rows, ..]);
                let o = ndarray::ArrayViewMut2::from_shape((rows, M), o).expect("rows of out");
                cnn::tensor::gemm(1.0, a_part, b.view(), 0.0, o).expect("gemm");
            });
        })
    });
    group.finish();
}

/// The weight-gradient product `dW[m, n] = dy[m, k] · col[n, k]ᵀ` on one
/// thread, both operands along their rows: matrixmultiply in the
/// orientation the im2col path used to choose (`dWᵀ = col · dyᵀ` under 64
/// output channels) against cnn-tensor's lane kernel `gemm_nt`. Shapes:
/// ResNet-20's three stages and ResNet-18's first (m channels, n = 9·C_in
/// taps, k output positions of one task), and Winograd's `dU` products;
/// and the same in bf16 (`_bf16` ids).
fn weight_grad(c: &mut Criterion) {
    let mut group = c.benchmark_group("weight_grad");
    for (m, n, k) in [
        (16, 144, 4096),
        (32, 288, 2048),
        (64, 576, 1024),
        (64, 576, 3136),
        (16, 16, 4096),
        (64, 64, 512),
        (256, 2304, 1568),
        (512, 4608, 392),
        (64, 256, 64),
        (64, 256, 128),
        (64, 256, 256),
        (16, 144, 64),
        (16, 144, 128),
    ] {
        let randn2 = |rows, seed| {
            normal::<f32, _>(&[rows, k], 0.0, 1.0, &mut seeded_rng(seed))
                .into_dimensionality::<Ix2>()
                .expect("2-D")
        };
        let (dy, col) = (randn2(m, 6), randn2(n, 7));
        let mut dw = Array2::<f32>::zeros((m, n));
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        let shape = format!("{m}x{n}x{k}");
        group.bench_function(BenchmarkId::new("matrixmultiply", &shape), |bch| {
            bch.iter(|| {
                let done = if m < 64 {
                    cnn::tensor::gemm(1.0, col.view(), dy.t(), 0.0, dw.view_mut().reversed_axes())
                } else {
                    cnn::tensor::gemm(1.0, dy.view(), col.t(), 0.0, dw.view_mut())
                };
                done.expect("gemm")
            })
        });
        group.bench_function(BenchmarkId::new("gemm_nt", &shape), |bch| {
            bch.iter(|| {
                cnn::tensor::gemm_nt(dy.view(), col.view(), 0.0, dw.view_mut()).expect("gemm_nt")
            })
        });
        // In bf16: the one chain of k (`col` packed transposed, as the
        // weight gradients did before their bf16 lanes), and `gemm_nt`,
        // which takes the lanes where its rule does.
        let bf16 = |f: &mut dyn FnMut()| with_precision(Precision::Bf16, f);
        group.bench_function(BenchmarkId::new("gemm_bf16", &shape), |bch| {
            bch.iter(|| {
                bf16(&mut || {
                    cnn::tensor::gemm(1.0, dy.view(), col.t(), 0.0, dw.view_mut()).expect("gemm")
                })
            })
        });
        group.bench_function(BenchmarkId::new("gemm_nt_bf16", &shape), |bch| {
            bch.iter(|| {
                bf16(&mut || {
                    cnn::tensor::gemm_nt(dy.view(), col.view(), 0.0, dw.view_mut())
                        .expect("gemm_nt")
                })
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = sgemm, weight_grad, conv }
criterion_main!(benches);
