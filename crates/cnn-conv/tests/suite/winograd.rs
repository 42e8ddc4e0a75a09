//! Winograd F(2×2, 3×3) and F(4×4, 3×3) against the naive kernel: forward,
//! dx and dW (both by Winograd: dx as the forward conv of dy, dW as α²
//! products over the tiles), every padding the dx path covers,
//! maps smaller than a tile, groups, batch 1; its f32 error bound; the
//! algorithm switch; determinism across thread counts.
#![allow(clippy::unwrap_used)]

use crate::common;

use cnn_conv::naive::{conv2d_backward_naive, conv2d_forward_naive};
use cnn_conv::{conv2d_backward, conv2d_forward, Conv2dOptions, ConvAlgorithm};
use common::{proptest_config, randn4, rel_err, Case};
use proptest::prelude::*;

fn case() -> impl Strategy<Value = Case> {
    (
        (1..4usize, 1..5usize, 1..5usize, 1..3usize),
        (1..12usize, 1..12usize, 0..4usize, 0..4usize),
        any::<bool>(),
        prop_oneof![Just(ConvAlgorithm::Winograd2), Just(ConvAlgorithm::Winograd4)],
    )
        .prop_filter_map(
            "kernel must fit the padded input",
            |((n, cg, cog, groups), (h, w, ph, pw), bias, algo)| {
                let opts = Conv2dOptions {
                    padding: [ph, pw],
                    groups,
                    algorithm: algo,
                    ..Default::default()
                };
                (h + 2 * ph >= 3 && w + 2 * pw >= 3).then_some(Case {
                    x: [n, cg * groups, h, w],
                    w: [cog * groups, cg, 3, 3],
                    opts,
                    bias,
                })
            },
        )
}

proptest! {
    #![proptest_config(proptest_config(128))]

    #[test]
    fn winograd_equals_naive_in_f64(c in case(), seed in 0u64..1000) {
        let errors = common::conv_errors_against_naive(&c, seed);
        prop_assert!(errors.iter().all(|e| e.1 < 1e-9), "{errors:?}");
    }
}

/// The f32 error of each tile against the f64 naive kernel, on N(0, 1) data,
/// as the channel count (the length of each sum) grows.
fn f32_error(algo: ConvAlgorithm, c_in: usize, hw: usize) -> [f64; 3] {
    let opts = Conv2dOptions::default().with_padding(1).with_algorithm(algo);
    let (x, w) = (randn4([2, c_in, hw, hw], 7), randn4([8, c_in, 3, 3], 8));
    let (x32, w32) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32));
    let (x, w) = (x32.mapv(f64::from), w32.mapv(f64::from));
    let want = conv2d_forward_naive(x.view(), w.view(), None, &opts).unwrap();
    let got = conv2d_forward(x32.view(), w32.view(), None, &opts).unwrap();
    let dy = randn4(want.dim().into(), 9);
    let dy32 = dy.mapv(|v| v as f32);
    let gw = conv2d_backward_naive(x.view(), w.view(), dy32.mapv(f64::from).view(), &opts).unwrap();
    let g = conv2d_backward(x32.view(), w32.view(), dy32.view(), &opts).unwrap();
    [
        rel_err(&got.mapv(f64::from), &want),
        rel_err(&g.dx.mapv(f64::from), &gw.dx),
        rel_err(&g.dw.mapv(f64::from), &gw.dw),
    ]
}

#[test]
fn winograd_equals_naive_in_f32_within_the_stated_bound() {
    for c_in in [16, 128, 512] {
        let f2 = f32_error(ConvAlgorithm::Winograd2, c_in, 12);
        let f4 = f32_error(ConvAlgorithm::Winograd4, c_in, 12);
        let show = |e: [f64; 3]| e.map(|v| format!("{v:.1e}")).join(", ");
        eprintln!("C_in {c_in}: fwd, dx, dW: F(2x2) {}; F(4x4) {}", show(f2), show(f4));
        assert!(f2.iter().all(|&e| e < 1e-6), "F(2x2) at C_in {c_in}: {f2:?}");
        assert!(f4.iter().all(|&e| e < 1e-4), "F(4x4) at C_in {c_in}: {f4:?}");
    }
}

#[test]
fn auto_picks_winograd_only_where_it_applies_and_agrees_with_im2col() {
    if std::env::var_os("CNN_CONV_ALGORITHM").is_some() {
        return; // this test is about `Auto` with no process-wide override
    }
    // 32 channels on 16×16: the rule's Winograd; the same numbers as im2col within f32 rounding.
    let (x, w) = (randn4([3, 32, 16, 16], 1), randn4([40, 32, 3, 3], 2));
    let (x, w) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32));
    let auto = Conv2dOptions::default().with_padding(1);
    let im2col = auto.with_algorithm(ConvAlgorithm::Im2col);
    let a = conv2d_forward(x.view(), w.view(), None, &auto).unwrap();
    let b = conv2d_forward(x.view(), w.view(), None, &im2col).unwrap();
    assert!(rel_err(&a.mapv(f64::from), &b.mapv(f64::from)) < 1e-4);
    assert_ne!(a, b, "Auto should have taken Winograd here (different rounding)");
}

#[test]
fn forcing_winograd_where_it_cannot_run_is_an_error() {
    let (x, w) = (randn4([1, 4, 9, 9], 1), randn4([4, 4, 3, 3], 2));
    for opts in [Conv2dOptions::default().with_stride(2), Conv2dOptions::default().with_dilation(2)]
    {
        let err =
            conv2d_forward(x.view(), w.view(), None, &opts.with_algorithm(ConvAlgorithm::Winograd))
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with(
                "conv2d: invalid setting: algorithm Winograd needs a 3x3 kernel with stride 1"
            ),
            "{err}"
        );
    }
    let w5 = randn4([4, 4, 5, 5], 3);
    let opts = Conv2dOptions::default().with_algorithm(ConvAlgorithm::Winograd2);
    assert!(conv2d_forward(x.view(), w5.view(), None, &opts).is_err());
}

#[test]
fn winograd_is_the_same_on_one_two_three_and_sixteen_threads() {
    let (x, w) = (randn4([5, 48, 14, 14], 1), randn4([64, 48, 3, 3], 2));
    let (x, w) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32));
    for algo in [ConvAlgorithm::Winograd2, ConvAlgorithm::Winograd4] {
        let opts = Conv2dOptions::default().with_padding(1).with_algorithm(algo);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = conv2d_forward(x.view(), w.view(), None, &opts).unwrap();
                let g = conv2d_backward(x.view(), w.view(), y.view(), &opts).unwrap();
                (y, g.dx, g.dw)
            })
        };
        let one = run(1);
        for threads in [2, 3, 16] {
            assert!(run(threads) == one, "{algo:?} on {threads} threads");
        }
    }
}

/// Every vector path (AVX-512, AVX2, portable) of the transforms and GEMMs.
#[test]
fn every_simd_level_equals_the_naive_kernel() {
    for level in cnn_tensor::simd::levels() {
        cnn_tensor::simd::rerun_tests("winograd_equals_naive", &[("CNN_SIMD", level.name())])
            .unwrap();
    }
}

#[test]
fn with_conv_algorithm_overrides_auto_in_its_scope_only() {
    if std::env::var_os("CNN_CONV_ALGORITHM").is_some() {
        return; // this test is about `Auto` with no process-wide override
    }
    let (x, w) = (randn4([4, 32, 12, 12], 1), randn4([32, 32, 3, 3], 2)); // 36 tiles: Auto picks F(4x4)
    let (x, w) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32));
    let auto = Conv2dOptions::default().with_padding(1);
    let run = |o: &Conv2dOptions| conv2d_forward(x.view(), w.view(), None, o).unwrap();
    let im2col = run(&auto.with_algorithm(ConvAlgorithm::Im2col));
    let winograd = run(&auto.with_algorithm(ConvAlgorithm::Winograd4));
    assert_eq!(cnn_conv::with_conv_algorithm(ConvAlgorithm::Im2col, || run(&auto)), im2col);
    assert_eq!(run(&auto), winograd, "restored after the scope");
    // An explicit option wins over the scope.
    let explicit = auto.with_algorithm(ConvAlgorithm::Winograd4);
    assert_eq!(cnn_conv::with_conv_algorithm(ConvAlgorithm::Im2col, || run(&explicit)), winograd);
}

/// Eval mode keeps the weights prepared for the kernel (Winograd's
/// transform, the im2col path's packing, each with and without a folded
/// norm) until they change, through any write to the layer's fields: each
/// output equals, bit for bit, that of a layer built afresh from the same
/// values (nothing cached), and differs from the one before the write.
#[test]
fn eval_mode_keeps_prepared_weights_until_a_field_write() {
    use cnn_conv::{ChannelAffine, Conv2d, Conv2dConfig, Epilogue};
    use cnn_tensor::{Layer, Mode, Param};
    let mut rng = cnn_tensor::random::seeded_rng(3);
    let x = cnn_tensor::random::normal::<f32, _>(&[2, 32, 10, 10], 0.0, 1.0, &mut rng);
    let (scale, shift) = (vec![0.5f32; 32], vec![0.25f32; 32]);
    let norm = ChannelAffine { scale: &scale, shift: &shift };
    let x4 = || x.view().into_dimensionality::<ndarray::Ix4>().unwrap();
    for algorithm in [ConvAlgorithm::Winograd4, ConvAlgorithm::Im2col] {
        for folded in [false, true] {
            let cfg = Conv2dConfig::new(32, 32, 3).with_padding(1);
            let mut conv = Conv2d::<f32>::new(cfg, &mut rng).unwrap();
            conv.options = conv.options.with_algorithm(algorithm);
            let run = |conv: &mut Conv2d<f32>| {
                if folded {
                    conv.forward_fused(x4(), Some(norm), Epilogue::Relu).unwrap().into_dyn()
                } else {
                    conv.forward(x.clone(), Mode::Eval).unwrap()
                }
            };
            let fresh = |conv: &Conv2d<f32>| {
                let w = conv.weight.value().clone();
                let b = conv.bias.as_ref().map(|b| b.value().clone());
                run(&mut Conv2d::from_weights(w, b, conv.options).unwrap())
            };
            let case = format!("{algorithm:?}, folded: {folded}");
            let mut before = run(&mut conv);
            assert_eq!(run(&mut conv), before, "{case}: the cached weights");
            type Write<'a> = (&'a str, &'a dyn Fn(&mut Conv2d<f32>));
            let writes: [Write<'_>; 4] = [
                ("an element through value_mut", &|c| c.weight.value_mut()[[0, 0, 1, 1]] += 1.0),
                ("set_value", &|c| {
                    let w = c.weight.value() * 0.5;
                    c.weight.set_value(w);
                }),
                ("a new Param in the field", &|c| {
                    c.weight = Param::new(c.weight.value().mapv(|v| v - 0.01));
                }),
                ("the bias", &|c| c.bias.as_mut().unwrap().value_mut()[3] += 2.0),
            ];
            for (what, write) in writes {
                write(&mut conv);
                let now = run(&mut conv);
                assert_eq!(now, fresh(&conv), "{case}: stale after {what}");
                assert_ne!(now, before, "{case}: {what} changed nothing");
                before = now;
            }
        }
    }
}

fn small_case() -> impl Strategy<Value = Case> {
    (
        (1..3usize, 1..3usize, 1..3usize, 1..3usize),
        (1..7usize, 1..7usize, 0..3usize),
        any::<bool>(),
        prop_oneof![Just(ConvAlgorithm::Winograd2), Just(ConvAlgorithm::Winograd4)],
    )
        .prop_filter_map(
            "kernel must fit the padded input",
            |((n, cg, cog, groups), (h, w, p), bias, algo)| {
                let opts = Conv2dOptions::default()
                    .with_padding(p)
                    .with_groups(groups)
                    .with_algorithm(algo);
                (h + 2 * p >= 3 && w + 2 * p >= 3).then_some(Case {
                    x: [n, cg * groups, h, w],
                    w: [cog * groups, cg, 3, 3],
                    opts,
                    bias,
                })
            },
        )
}

proptest! {
    #![proptest_config(proptest_config(32))]

    /// The public gradient checker on a `Conv2d` layer forced through
    /// Winograd: backward (dx, dW by Winograd; db) against central differences,
    /// and the layer contract (a second backward adds into the gradients).
    #[test]
    fn winograd_layer_passes_the_gradient_checker(c in small_case(), seed in 0u64..1000) {
        use cnn_conv::{Conv2d, Conv2dConfig};
        let cfg = Conv2dConfig {
            in_channels: c.x[1],
            out_channels: c.w[0],
            kernel_size: [3, 3],
            options: c.opts,
            bias: c.bias,
        };
        let mut conv = Conv2d::<f64>::new(cfg, &mut cnn_tensor::random::seeded_rng(seed)).unwrap();
        let x = randn4(c.x, seed).into_dyn();
        let report = cnn_tensor::gradcheck::check_layer(&mut conv, &x, seed, &Default::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }
}
