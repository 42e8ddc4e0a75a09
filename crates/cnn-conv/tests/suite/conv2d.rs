//! conv2d: the fast kernel against its naive twin, backward against central
//! differences (through the public gradient checker), determinism across
//! thread counts, and errors on bad input.

#![allow(clippy::unwrap_used)] // test helpers unwrap like the tests themselves

use crate::common;

use cnn_conv::naive::{conv2d_backward_naive, conv2d_forward_naive};
use cnn_conv::{
    conv2d_backward, conv2d_forward, conv2d_forward_with, Conv2d, Conv2dConfig, Conv2dOptions,
    ConvAlgorithm, ConvGeometry, Epilogue,
};
use cnn_tensor::gradcheck::{check_fn, check_layer, GradCheckConfig};
use cnn_tensor::{random, ArrayD, Error, Layer, Mode};
use common::{proptest_config, randn4, rel_err, Case};
use ndarray::{Array1, Ix1, Ix4};
use proptest::prelude::*;

pub(crate) fn case(max_hw: usize) -> impl Strategy<Value = Case> {
    (
        1..4usize,
        1..4usize,
        1..4usize,
        1..4usize,
        (1..4usize, 1..4usize),
        (1..3usize, 1..3usize),
        (0..3usize, 0..3usize),
    )
        .prop_flat_map(move |(n, cg, cog, groups, (kh, kw), (sh, sw), (ph, pw))| {
            (
                Just((n, cg, cog, groups, kh, kw, sh, sw, ph, pw)),
                (1..3usize, 1..3usize),
                1..=max_hw,
                1..=max_hw,
                any::<bool>(),
            )
        })
        .prop_filter_map(
            "kernel must fit the padded input",
            |((n, cg, cog, groups, kh, kw, sh, sw, ph, pw), (dh, dw), h, w, bias)| {
                let opts = Conv2dOptions {
                    stride: [sh, sw],
                    padding: [ph, pw],
                    dilation: [dh, dw],
                    groups,
                    ..Default::default()
                };
                let c =
                    Case { x: [n, cg * groups, h, w], w: [cog * groups, cg, kh, kw], opts, bias };
                ConvGeometry::new(&c.x, &c.w, &c.opts).ok().map(|_| c)
            },
        )
}

proptest! {
    #![proptest_config(proptest_config(96))]

    #[test]
    fn fast_kernel_equals_naive(c in case(9), seed in 0u64..1000) {
        let errors = common::conv_errors_against_naive(&c, seed);
        prop_assert!(errors.iter().all(|e| e.1 < 1e-12), "{errors:?}");
    }

    #[test]
    fn f32_kernel_matches_f64_naive(c in case(9), seed in 0u64..1000) {
        // The f32 path has its own GEMM micro-kernel (AVX-512 where present).
        let (x, w) = (randn4(c.x, seed), randn4(c.w, seed + 1));
        let (x32, w32) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32));
        let (x, w) = (x32.mapv(f64::from), w32.mapv(f64::from));
        let y32 = conv2d_forward(x32.view(), w32.view(), None, &c.opts).unwrap();
        let y = conv2d_forward_naive(x.view(), w.view(), None, &c.opts).unwrap();
        prop_assert!(rel_err(&y32.mapv(f64::from), &y) < 1e-5);
        let dy32 = randn4(y.dim().into(), seed + 2).mapv(|v| v as f32);
        let g32 = conv2d_backward(x32.view(), w32.view(), dy32.view(), &c.opts).unwrap();
        let g = conv2d_backward_naive(x.view(), w.view(), dy32.mapv(f64::from).view(), &c.opts).unwrap();
        prop_assert!(rel_err(&g32.dx.mapv(f64::from), &g.dx) < 1e-5);
        prop_assert!(rel_err(&g32.dw.mapv(f64::from), &g.dw) < 1e-5);
    }

    #[test]
    fn backward_matches_central_differences(c in case(6), seed in 0u64..1000) {
        let opts = c.opts;
        let bias = c.bias;
        let forward = |t: &[ArrayD<f64>]| {
            let x = t[0].view().into_dimensionality::<Ix4>().unwrap();
            let w = t[1].view().into_dimensionality::<Ix4>().unwrap();
            let b = t[2].view().into_dimensionality::<Ix1>().unwrap();
            Ok(conv2d_forward(x, w, bias.then_some(b), &opts)?.into_dyn())
        };
        let backward = |t: &[ArrayD<f64>], dy: &ArrayD<f64>| {
            let x = t[0].view().into_dimensionality::<Ix4>().unwrap();
            let w = t[1].view().into_dimensionality::<Ix4>().unwrap();
            let dy = dy.view().into_dimensionality::<Ix4>().unwrap();
            let g = conv2d_backward(x, w, dy, &opts)?;
            let db = if bias { g.db.into_dyn() } else { ArrayD::zeros(vec![t[2].len()]) };
            Ok(vec![g.dx.into_dyn(), g.dw.into_dyn(), db])
        };
        let inputs = [randn4(c.x, seed).into_dyn(), randn4(c.w, seed + 1).into_dyn(), ArrayD::zeros(vec![c.w[0]])];
        let report = check_fn(forward, backward, &inputs, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }
}

#[test]
fn layer_passes_the_gradient_checker() {
    let mut rng = random::seeded_rng(9);
    let cfg = Conv2dConfig::new(4, 6, 3).with_stride_hw(2, 1).with_padding_hw(1, 2).with_groups(2);
    let mut conv = Conv2d::<f64>::new(cfg, &mut rng).unwrap();
    let x = random::normal(&[2, 4, 7, 6], 0.0, 1.0, &mut rng);
    let report = check_layer(&mut conv, &x, 3, &GradCheckConfig::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.tensors.len(), 3, "input, weight and bias are checked");
}

/// The plan depends on the shapes only: 1, 2, 3 and 16 threads (a pool of
/// 16 oversubscribes this machine, which is fine here) give the same bits.
#[test]
fn same_numbers_on_one_two_three_and_sixteen_threads() {
    // Several sample blocks (small maps), one block per sample, a batch of one
    // whose GEMMs are cut in rows and columns, a stride-2 conv, Winograd
    // F(4×4) by the shape rule (4 samples of 3×3 tiles: 36 ≥ 32; with 3
    // samples, 27 tiles, the rule takes im2col), and batches of one cut into
    // row tiles that run as tasks of their own (four tiles each).
    for (x_shape, w_shape, stride) in [
        ([1, 32, 80, 80], [16, 32, 3, 3], 2),
        ([1, 3, 112, 112], [16, 3, 7, 7], 2),
        ([32, 8, 8, 8], [16, 8, 3, 3], 1),
        ([6, 3, 20, 20], [4, 3, 5, 5], 1),
        ([9, 16, 4, 4], [8, 16, 1, 1], 1),
        ([1, 64, 12, 12], [96, 64, 3, 3], 2),
        ([1, 40, 14, 14], [80, 40, 1, 1], 1),
        ([4, 32, 9, 9], [64, 32, 3, 3], 1),
    ] {
        let x = randn4(x_shape, 1).mapv(|v| v as f32);
        let w = randn4(w_shape, 2).mapv(|v| v as f32);
        let opts = Conv2dOptions::default().with_padding(w_shape[2] / 2).with_stride(stride);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = conv2d_forward(x.view(), w.view(), None, &opts).unwrap();
                let g = conv2d_backward(x.view(), w.view(), y.view(), &opts).unwrap();
                (y, g)
            })
        };
        let bits = |a: ndarray::ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let (y1, g1) = run(1);
        for threads in [2, 3, 16] {
            let (y, g) = run(threads);
            let case = format!("{x_shape:?} {w_shape:?} on {threads} threads");
            assert_eq!(bits(y1.clone().into_dyn()), bits(y.into_dyn()), "y {case}");
            assert_eq!(bits(g1.dx.clone().into_dyn()), bits(g.dx.into_dyn()), "dx {case}");
            assert_eq!(bits(g1.dw.clone().into_dyn()), bits(g.dw.into_dyn()), "dw {case}");
            assert_eq!(bits(g1.db.clone().into_dyn()), bits(g.db.into_dyn()), "db {case}");
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let x = randn4([2, 3, 8, 8], 0);
    let w = randn4([4, 3, 3, 3], 1);
    let o = Conv2dOptions::default();
    let msg = |r: Result<ndarray::Array4<f64>, Error>| r.unwrap_err().to_string();
    let w4 = randn4([4, 4, 3, 3], 1);
    assert_eq!(
        msg(conv2d_forward(x.view(), w4.view(), None, &o)),
        "conv2d: input has 3 channels, weight expects 4 (groups=1)"
    );
    let big = randn4([4, 3, 11, 11], 1);
    assert!(msg(conv2d_forward(x.view(), big.view(), None, &o.with_padding(1)))
        .contains("larger than the padded input 10x10"));
    let b = Array1::<f64>::zeros(5);
    assert!(
        msg(conv2d_forward(x.view(), w.view(), Some(b.view()), &o)).contains("bias has 5 entries")
    );
    let dy = randn4([2, 4, 5, 5], 3);
    assert!(conv2d_backward(x.view(), w.view(), dy.view(), &o)
        .unwrap_err()
        .to_string()
        .contains("dy is [2, 4, 5, 5]"));

    let mut rng = random::seeded_rng(0);
    let mut conv = Conv2d::<f32>::new(Conv2dConfig::new(3, 4, 3), &mut rng).unwrap();
    let err = conv.forward(ArrayD::zeros(vec![3, 8, 8]), Mode::Train).unwrap_err();
    assert_eq!(err.to_string(), "conv2d: input must be 4-D [N, C, H, W], got 3-D [3, 8, 8]");
    assert!(matches!(
        conv.backward(ArrayD::zeros(vec![1, 4, 6, 6])),
        Err(Error::NoForward { op: "conv2d" })
    ));
    // Eval mode keeps nothing for backward.
    conv.forward(ArrayD::zeros(vec![1, 3, 8, 8]), Mode::Eval).unwrap();
    assert!(matches!(conv.backward(ArrayD::zeros(vec![1, 4, 6, 6])), Err(Error::NoForward { .. })));
    assert!(Conv2d::<f32>::new(Conv2dConfig::new(3, 4, 3).with_groups(2), &mut rng).is_err());
    assert!(Conv2d::<f32>::new(Conv2dConfig::new(3, 4, 0), &mut rng).is_err());
}

#[test]
fn default_init_is_pytorchs() {
    // nn.Conv2d(64, 32, 3): weight and bias in U(±1/√(64·9)).
    let mut rng = random::seeded_rng(4);
    let conv = Conv2d::<f64>::new(Conv2dConfig::new(64, 32, 3), &mut rng).unwrap();
    let bound = 1.0 / 576f64.sqrt();
    let w = &conv.weight.value();
    assert!(w.iter().all(|v| v.abs() <= bound));
    let var = w.mapv(|v| v * v).mean().unwrap();
    assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.05, "variance {var}");
    let b = conv.bias.as_ref().unwrap().value().view().into_dimensionality::<Ix1>().unwrap();
    assert!(b.iter().all(|v| v.abs() <= bound));
}

#[test]
fn large_maps_cut_into_row_tiles_equal_naive() {
    // One sample per block and several row tiles per sample (576 col rows, 40x40 output).
    for (x_shape, w_shape, opts) in [
        ([2, 64, 40, 40], [8, 64, 3, 3], Conv2dOptions::default().with_padding(1)),
        (
            [1, 32, 45, 39],
            [6, 16, 3, 5],
            Conv2dOptions {
                stride: [2, 1],
                padding: [1, 2],
                dilation: [1, 2],
                groups: 2,
                ..Default::default()
            },
        ),
        ([2, 300, 30, 30], [4, 300, 1, 1], Conv2dOptions::default()),
        ([1, 16, 64, 63], [8, 16, 3, 3], Conv2dOptions::default().with_stride(2).with_padding(1)),
        (
            [1, 8, 70, 70],
            [4, 8, 7, 7],
            Conv2dOptions {
                stride: [2, 3],
                padding: [3, 3],
                dilation: [1, 1],
                groups: 1,
                ..Default::default()
            },
        ),
        ([37, 4, 24, 24], [6, 2, 3, 3], Conv2dOptions::default().with_padding(1).with_groups(2)),
        ([35, 16, 3, 3], [8, 16, 1, 1], Conv2dOptions::default()),
    ] {
        let (x, w) = (randn4(x_shape, 11), randn4(w_shape, 12));
        let b = Array1::linspace(-1.0, 1.0, w_shape[0]);
        let fast = conv2d_forward(x.view(), w.view(), Some(b.view()), &opts).unwrap();
        let slow = conv2d_forward_naive(x.view(), w.view(), Some(b.view()), &opts).unwrap();
        assert!(rel_err(&fast, &slow) < 1e-12, "forward {x_shape:?}");
        let dy = randn4(fast.dim().into(), 13);
        let gf = conv2d_backward(x.view(), w.view(), dy.view(), &opts).unwrap();
        let gs = conv2d_backward_naive(x.view(), w.view(), dy.view(), &opts).unwrap();
        assert!(rel_err(&gf.dx, &gs.dx) < 1e-12, "dx {x_shape:?}");
        assert!(rel_err(&gf.dw, &gs.dw) < 1e-12, "dw {x_shape:?}");
        // And the f32 path, whose GEMM is its own.
        let (x32, w32, dy32) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32), dy.mapv(|v| v as f32));
        let y32 = conv2d_forward(x32.view(), w32.view(), None, &opts).unwrap();
        let y = conv2d_forward_naive(
            x32.mapv(f64::from).view(),
            w32.mapv(f64::from).view(),
            None,
            &opts,
        )
        .unwrap();
        assert!(rel_err(&y32.mapv(f64::from), &y) < 1e-5, "f32 forward {x_shape:?}");
        let g32 = conv2d_backward(x32.view(), w32.view(), dy32.view(), &opts).unwrap();
        let g = conv2d_backward_naive(
            x32.mapv(f64::from).view(),
            w32.mapv(f64::from).view(),
            dy32.mapv(f64::from).view(),
            &opts,
        )
        .unwrap();
        assert!(rel_err(&g32.dx.mapv(f64::from), &g.dx) < 1e-5, "f32 dx {x_shape:?}");
        assert!(rel_err(&g32.dw.mapv(f64::from), &g.dw) < 1e-5, "f32 dw {x_shape:?}");
    }
}

/// A random depthwise convolution (groups = C_in = C_out): the direct kernel's domain.
fn depthwise_case() -> impl Strategy<Value = Case> {
    (
        1..4usize,
        2..6usize,
        1..8usize,
        1..8usize,
        1..3usize,
        0..4usize,
        1..3usize,
        1..13usize,
        1..13usize,
        any::<bool>(),
    )
        .prop_filter_map(
            "kernel must fit the padded input",
            |(n, c, kh, kw, s, p, d, h, w, bias)| {
                let opts = Conv2dOptions {
                    stride: [s, s],
                    padding: [p, p],
                    dilation: [d, d],
                    groups: c,
                    ..Default::default()
                };
                let case = Case { x: [n, c, h, w], w: [c, 1, kh, kw], opts, bias };
                ConvGeometry::new(&case.x, &case.w, &case.opts).ok().map(|_| case)
            },
        )
}

proptest! {
    #![proptest_config(proptest_config(96))]

    /// The direct depthwise kernel against the naive twin, forward and every gradient.
    #[test]
    fn depthwise_kernel_equals_naive(c in depthwise_case(), seed in 0u64..1000) {
        let errors = common::conv_errors_against_naive(&c, seed);
        prop_assert!(errors.iter().all(|e| e.1 < 1e-12), "{errors:?}");
    }
}

/// The depthwise forward in f32 (its 16-lane blocks on AVX-512; the name
/// has "naive", so it runs again on every SIMD level) against the f64 naive
/// kernel: rows narrower than a block, one block and a bit, kernels 1–7
/// wide, with and without padding and bias.
#[test]
fn depthwise_f32_blocks_equal_the_naive_kernel() {
    for (h, w, k, p, bias) in [
        (5, 3, 3, 1, true),
        (9, 16, 7, 3, false),
        (6, 17, 5, 2, true),
        (4, 40, 7, 3, true),
        (7, 33, 1, 0, false),
        (3, 2, 3, 1, true),
    ] {
        let (x64, w64) = (randn4([2, 5, h, w], 3), randn4([5, 1, k, k], 4));
        let b64 = Array1::from_iter((0..5).map(|i| 0.1 * i as f64 - 0.2));
        let opts = Conv2dOptions::default().with_padding(p).with_groups(5);
        let want =
            conv2d_forward_naive(x64.view(), w64.view(), bias.then(|| b64.view()), &opts).unwrap();
        let (x, wt, b) = (x64.mapv(|v| v as f32), w64.mapv(|v| v as f32), b64.mapv(|v| v as f32));
        let got = conv2d_forward(x.view(), wt.view(), bias.then(|| b.view()), &opts).unwrap();
        let err = rel_err(&got.mapv(f64::from).into_dyn(), &want.into_dyn());
        assert!(err < 1e-5, "{h}x{w}, k {k}, p {p}: {err:e}");
    }
}

/// ConvNeXt's depthwise 7×7 at a real size, and a strided 3×3: same numbers on one and two threads.
#[test]
fn depthwise_is_the_same_on_one_and_two_threads() {
    for (x, w, opts) in [
        ([3, 16, 28, 28], [16, 1, 7, 7], Conv2dOptions::default().with_padding(3).with_groups(16)),
        (
            [2, 8, 15, 15],
            [8, 1, 3, 3],
            Conv2dOptions {
                stride: [2, 2],
                padding: [1, 1],
                dilation: [1, 1],
                groups: 8,
                ..Default::default()
            },
        ),
    ] {
        let (x, w) = (randn4(x, 1).mapv(|v| v as f32), randn4(w, 2).mapv(|v| v as f32));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = conv2d_forward(x.view(), w.view(), None, &opts).unwrap();
                let g = conv2d_backward(x.view(), w.view(), y.view(), &opts).unwrap();
                (y, g.dx, g.dw, g.db)
            })
        };
        assert_eq!(run(1), run(2));
    }
}

/// Every vector path (AVX-512 micro-kernel, AVX2, portable) against the naive
/// kernels: the fast-vs-naive tests again in a child process per SIMD level.
#[test]
fn every_simd_level_equals_the_naive_kernel() {
    for level in cnn_tensor::simd::levels() {
        cnn_tensor::simd::rerun_tests("naive", &[("CNN_SIMD", level.name())]).unwrap();
    }
}

/// The ReLU epilogue equals a ReLU after the convolution, bit for bit, on
/// every path: im2col one sample at a time, batched small maps, pointwise,
/// a batch of one cut into GEMM blocks, Winograd F(2x2) and F(4x4), depthwise.
#[test]
fn relu_epilogue_equals_relu_after_the_conv() {
    let cases: [([usize; 4], [usize; 4], Conv2dOptions); 7] = [
        ([2, 5, 30, 30], [7, 5, 3, 3], Conv2dOptions::default().with_padding(1)),
        ([9, 6, 6, 6], [8, 6, 3, 3], Conv2dOptions::default().with_stride(2)),
        ([3, 16, 8, 8], [24, 16, 1, 1], Conv2dOptions::default()),
        (
            [1, 32, 9, 9],
            [64, 32, 3, 3],
            Conv2dOptions::default().with_algorithm(ConvAlgorithm::Im2col),
        ),
        (
            [2, 8, 10, 10],
            [8, 8, 3, 3],
            Conv2dOptions::default().with_padding(1).with_algorithm(ConvAlgorithm::Winograd2),
        ),
        (
            [2, 8, 10, 10],
            [8, 8, 3, 3],
            Conv2dOptions::default().with_padding(1).with_algorithm(ConvAlgorithm::Winograd4),
        ),
        ([2, 6, 11, 11], [6, 1, 5, 5], Conv2dOptions::default().with_padding(2).with_groups(6)),
    ];
    for (i, (xs, ws, opts)) in cases.into_iter().enumerate() {
        let (x, w) = (randn4(xs, 10 + i as u64), randn4(ws, 20 + i as u64));
        let b = Array1::from_iter((0..ws[0]).map(|o| o as f64 * 0.25 - 1.0));
        let plain = conv2d_forward(x.view(), w.view(), Some(b.view()), &opts).unwrap();
        let fused = conv2d_forward_with(x.view(), w.view(), Some(b.view()), &opts, Epilogue::Relu);
        assert_eq!(fused.unwrap(), plain.mapv(|v| if v > 0.0 { v } else { 0.0 }), "case {i} f64");
        let none = conv2d_forward_with(x.view(), w.view(), Some(b.view()), &opts, Epilogue::None);
        assert_eq!(none.unwrap(), plain, "case {i}: no epilogue is the plain conv");
        let (x, w, b) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32), b.mapv(|v| v as f32));
        let plain = conv2d_forward(x.view(), w.view(), Some(b.view()), &opts).unwrap();
        let fused = conv2d_forward_with(x.view(), w.view(), Some(b.view()), &opts, Epilogue::Relu);
        assert_eq!(fused.unwrap(), plain.mapv(|v| if v > 0.0 { v } else { 0.0 }), "case {i} f32");
    }
}
