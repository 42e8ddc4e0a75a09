//! Norm layers: gradients against central differences (proptest, f64),
//! the equivalences between them, running statistics, determinism, errors.

#![allow(clippy::unwrap_used)]

use cnn_norm::{
    AffineAxes, BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm2d,
    InstanceNormConfig, LayerNorm, LayerNorm2d, LayerNorm2dConfig, LayerNormConfig, NormAxes,
    Statistics,
};
use cnn_tensor::gradcheck::{check_layer, GradCheckConfig};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{ArrayD, Error, Layer, Mode, Param};
use cnn_test_support::{max_abs_diff, proptest_config as config};
use ndarray::{s, Axis};
use proptest::prelude::*;

/// Random γ and β so that the affine gradients are not trivially symmetric.
fn randomize_affine(layer: &mut dyn Layer<f64>, seed: u64) {
    let mut rng = seeded_rng(seed);
    layer.visit_mut("", &mut |key, p: &mut Param<f64>| {
        if key == "weight" || key == "bias" {
            let new_value = normal(p.value().shape(), 0.5, 1.0, &mut rng);
            p.set_value(new_value);
        }
    });
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn batch_norm_gradients(n in 2..5usize, c in 1..4usize, h in 1..4usize, w in 1..4usize, affine: bool, seed in 0u64..1000) {
        let mut bn = BatchNorm::<f64>::new_2d(BatchNormConfig::new(c).with_affine(affine)).unwrap();
        randomize_affine(&mut bn, seed);
        let x = normal(&[n, c, h, w], 1.0, 2.0, &mut seeded_rng(seed));
        let report = check_layer(&mut bn, &x, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }

    #[test]
    fn batch_norm_1d_gradients(n in 2..6usize, c in 1..5usize, affine: bool, seed in 0u64..1000) {
        let mut bn = BatchNorm::<f64>::new_1d(BatchNormConfig::new(c).with_affine(affine)).unwrap();
        randomize_affine(&mut bn, seed);
        let x = normal(&[n, c], 0.0, 1.0, &mut seeded_rng(seed));
        let report = check_layer(&mut bn, &x, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }

    #[test]
    fn group_norm_gradients(n in 1..4usize, g in 1..4usize, cpg in 1..3usize, h in 1..4usize, w in 1..4usize, affine: bool, seed in 0u64..1000) {
        prop_assume!(cpg * h * w > 1);
        let mut gn = GroupNorm::<f64>::new(GroupNormConfig::new(g, g * cpg).with_affine(affine)).unwrap();
        randomize_affine(&mut gn, seed);
        let x = normal(&[n, g * cpg, h, w], 0.0, 1.0, &mut seeded_rng(seed));
        let report = check_layer(&mut gn, &x, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }

    #[test]
    fn instance_norm_gradients(n in 1..4usize, c in 1..4usize, h in 1..4usize, w in 2..4usize, affine: bool, seed in 0u64..1000) {
        let mut inorm = InstanceNorm2d::<f64>::new(InstanceNormConfig::new(c).with_affine(affine)).unwrap();
        randomize_affine(&mut inorm, seed);
        let x = normal(&[n, c, h, w], 0.0, 1.0, &mut seeded_rng(seed));
        let report = check_layer(&mut inorm, &x, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }

    #[test]
    fn layer_norm2d_gradients(n in 1..3usize, c in 2..5usize, h in 1..4usize, w in 1..4usize, seed in 0u64..1000) {
        let mut ln = LayerNorm2d::<f64>::new(LayerNorm2dConfig::new(c)).unwrap();
        randomize_affine(&mut ln, seed);
        let x = normal(&[n, c, h, w], 0.5, 2.0, &mut seeded_rng(seed));
        let report = check_layer(&mut ln, &x, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }

    /// The row-wise LayerNorm2d kernels against their naive twin: the generic
    /// LayerNorm on the channels-last permute, forward and backward.
    #[test]
    fn layer_norm2d_equals_layer_norm_on_the_permute(n in 1..4usize, c in 1..9usize, h in 1..6usize, w in 1..6usize, seed in 0u64..1000) {
        let mut fast = LayerNorm2d::<f64>::new(LayerNorm2dConfig::new(c)).unwrap();
        randomize_affine(&mut fast, seed);
        let mut naive = LayerNorm::<f64>::new(LayerNormConfig::new(&[c]).with_eps(1e-6)).unwrap();
        let mut params = Vec::new();
        fast.visit_mut("", &mut |_, p| params.push(p.value().clone()));
        let mut i = 0;
        naive.visit_mut("", &mut |_, p| { p.set_value(params[i].clone()); i += 1; });
        let x = normal(&[n, c, h, w], 0.5, 2.0, &mut seeded_rng(seed));
        let dy = normal(&[n, c, h, w], 0.0, 1.0, &mut seeded_rng(seed + 1));
        let nhwc = |a: &ArrayD<f64>| a.view().permuted_axes(vec![0, 2, 3, 1]).as_standard_layout().into_owned();
        let nchw = |a: ArrayD<f64>| a.permuted_axes(vec![0, 3, 1, 2]).as_standard_layout().into_owned();
        let y_fast = fast.forward(x.clone(), Mode::Train).unwrap();
        let y_naive = nchw(naive.forward(nhwc(&x), Mode::Train).unwrap());
        let close = |a: &ArrayD<f64>, b: &ArrayD<f64>| a.iter().zip(b.iter()).all(|(u, v)| (u - v).abs() <= 1e-12 * (1.0 + v.abs()));
        prop_assert!(close(&y_fast, &y_naive));
        let dx_fast = fast.backward(dy.clone()).unwrap();
        let dx_naive = nchw(naive.backward(nhwc(&dy)).unwrap());
        prop_assert!(close(&dx_fast, &dx_naive));
        let (mut gf, mut gn) = (Vec::new(), Vec::new());
        fast.visit_mut("", &mut |_, p| gf.push(p.grad.clone()));
        naive.visit_mut("", &mut |_, p| gn.push(p.grad.clone()));
        for (a, b) in gf.iter().zip(&gn) {
            prop_assert!(close(a, b));
        }
    }

    #[test]
    fn layer_norm_gradients(rows in 1..4usize, d1 in 1..4usize, d2 in 2..5usize, affine: bool, seed in 0u64..1000) {
        let mut ln = LayerNorm::<f64>::new(LayerNormConfig::new(&[d1, d2]).with_elementwise_affine(affine)).unwrap();
        randomize_affine(&mut ln, seed);
        let x = normal(&[rows, d1, d2], 0.0, 1.0, &mut seeded_rng(seed));
        let report = check_layer(&mut ln, &x, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }
}

#[test]
fn group_norm_with_one_group_is_layer_norm_over_chw() {
    let x = normal(&[3, 4, 5, 6], 2.0, 3.0, &mut seeded_rng(1));
    let mut gn = GroupNorm::<f64>::new(GroupNormConfig::new(1, 4)).unwrap();
    let mut ln = LayerNorm::<f64>::new(LayerNormConfig::new(&[4, 5, 6])).unwrap();
    // The same per-channel γ/β: LayerNorm's elementwise parameters broadcast from channels.
    let gamma = ndarray::Array1::from_vec(vec![0.5, 1.5, -1.0, 2.0]);
    let beta = ndarray::Array1::from_vec(vec![0.1, -0.2, 0.3, 0.0]);
    gn.visit_mut("", &mut |k, p| {
        p.set_value(if k == "weight" { gamma.clone() } else { beta.clone() }.into_dyn())
    });
    ln.visit_mut("", &mut |k, p| {
        let v = if k == "weight" { &gamma } else { &beta };
        p.set_value(ArrayD::from_shape_fn(vec![4, 5, 6], |i| v[i[0]]));
    });
    let a = gn.forward(x.clone(), Mode::Train).unwrap();
    let b = ln.forward(x, Mode::Train).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-12);
}

#[test]
fn group_norm_with_c_groups_is_instance_norm() {
    let x = normal(&[3, 4, 5, 6], -1.0, 0.5, &mut seeded_rng(2));
    let mut gn = GroupNorm::<f64>::new(GroupNormConfig::new(4, 4)).unwrap();
    let mut inorm =
        InstanceNorm2d::<f64>::new(InstanceNormConfig::new(4).with_affine(true)).unwrap();
    randomize_affine(&mut gn, 3);
    randomize_affine(&mut inorm, 3);
    let a = gn.forward(x.clone(), Mode::Train).unwrap();
    let b = inorm.forward(x, Mode::Train).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-12);
}

#[test]
fn layer_norm_ignores_the_batch_and_batch_norm_does_not() {
    let x = normal(&[4, 3, 2, 2], 0.0, 1.0, &mut seeded_rng(4));
    let mut other = x.clone();
    other.slice_mut(s![1.., .., .., ..]).mapv_inplace(|v| v * 5.0 + 3.0);
    let first = |y: ArrayD<f64>| y.index_axis(Axis(0), 0).to_owned();

    let mut ln = LayerNorm::<f64>::new(LayerNormConfig::new(&[3, 2, 2])).unwrap();
    let a = first(ln.forward(x.clone(), Mode::Train).unwrap());
    let b = first(ln.forward(other.clone(), Mode::Train).unwrap());
    assert_eq!(a, b, "sample 0's LayerNorm output must not see the other samples");

    let mut bn = BatchNorm::<f64>::new_2d(BatchNormConfig::new(3)).unwrap();
    let a = first(bn.forward(x, Mode::Train).unwrap());
    let b = first(bn.forward(other, Mode::Train).unwrap());
    assert!(max_abs_diff(&a, &b) > 0.1, "sample 0's BatchNorm output depends on the batch");
}

#[test]
fn batch_norm_running_statistics_follow_pytorch() {
    let x = normal(&[5, 2, 3, 3], 4.0, 2.0, &mut seeded_rng(5));
    let m = 45.0; // values per channel
    let channel = |c: usize| x.index_axis(Axis(1), c).iter().copied().collect::<Vec<f64>>();
    let stats = |c: usize| {
        let v = channel(c);
        let mean = v.iter().sum::<f64>() / m;
        (mean, v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (m - 1.0))
    };

    // momentum 0.1: running = 0.9·running + 0.1·batch (unbiased variance).
    let mut bn = BatchNorm::<f64>::new_2d(BatchNormConfig::new(2)).unwrap();
    bn.forward(x.clone(), Mode::Train).unwrap();
    let (rm, rv) = bn.running_stats().unwrap();
    for c in 0..2 {
        let (mean, var) = stats(c);
        approx::assert_relative_eq!(rm[c], 0.1 * mean, max_relative = 1e-12);
        approx::assert_relative_eq!(rv[c], 0.9 + 0.1 * var, max_relative = 1e-12);
    }

    // momentum None: a cumulative average; after one batch it is the batch's statistics.
    let mut bn = BatchNorm::<f64>::new_2d(BatchNormConfig::new(2).with_momentum(None)).unwrap();
    bn.forward(x.clone(), Mode::Train).unwrap();
    let mut count = 0.0;
    bn.visit_mut("", &mut |k, p| {
        if k == "num_batches_tracked" {
            count = p.value()[[]];
        }
    });
    assert_eq!(count, 1.0);
    let (rm, rv) = bn.running_stats().map(|(m, v)| (m[0], v[0])).unwrap();
    approx::assert_relative_eq!(rm, stats(0).0, max_relative = 1e-12);
    approx::assert_relative_eq!(rv, stats(0).1, max_relative = 1e-12);

    // Eval mode uses the running statistics: y = (x − rm)/√(rv + eps).
    let y = bn.forward(x.clone(), Mode::Eval).unwrap();
    let want = (x[[0, 0, 0, 0]] - rm) / (rv + 1e-5).sqrt();
    approx::assert_relative_eq!(y[[0, 0, 0, 0]], want, max_relative = 1e-12);

    // Without running statistics, eval mode normalizes with the batch too.
    let mut bn =
        BatchNorm::<f64>::new_2d(BatchNormConfig::new(2).with_track_running_stats(false)).unwrap();
    let train = bn.forward(x.clone(), Mode::Train).unwrap();
    let eval = bn.forward(x, Mode::Eval).unwrap();
    assert_eq!(train, eval);
    let mut keys = Vec::new();
    bn.visit_mut("bn1", &mut |k, _| keys.push(k.to_string()));
    assert_eq!(keys, ["bn1.weight", "bn1.bias"]);
}

#[test]
fn same_numbers_on_one_and_two_threads() {
    let x: ArrayD<f32> = normal(&[16, 8, 12, 12], 0.0, 1.0, &mut seeded_rng(6));
    let dy: ArrayD<f32> = normal(&[16, 8, 12, 12], 0.0, 1.0, &mut seeded_rng(7));
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
            let mut layers: Vec<Box<dyn Layer<f32>>> = vec![
                Box::new(BatchNorm::<f32>::new_2d(BatchNormConfig::new(8)).unwrap()),
                Box::new(GroupNorm::<f32>::new(GroupNormConfig::new(4, 8)).unwrap()),
                Box::new(LayerNorm::<f32>::new(LayerNormConfig::new(&[8, 12, 12])).unwrap()),
            ];
            layers
                .iter_mut()
                .map(|l| {
                    let y = l.forward(x.clone(), Mode::Train).unwrap();
                    let dx = l.backward(dy.clone()).unwrap();
                    let mut grads = Vec::new();
                    l.visit_mut("", &mut |_, p| grads.push(p.grad.clone()));
                    (y, dx, grads)
                })
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn bad_input_is_a_clear_error() {
    let mut bn = BatchNorm::<f32>::new_2d(BatchNormConfig::new(3)).unwrap();
    let e = bn.forward(ArrayD::zeros(vec![2, 3, 4]), Mode::Train).unwrap_err();
    assert_eq!(
        e.to_string(),
        "batch_norm2d: input must have 4 dimensions [N, C, ...], got 3-D [2, 3, 4]"
    );
    let mut gn = GroupNorm::<f32>::new(GroupNormConfig::new(1, 3)).unwrap();
    let e = gn.forward(ArrayD::zeros(vec![3]), Mode::Train).unwrap_err();
    assert_eq!(
        e.to_string(),
        "group_norm: input must have at least 2 dimensions [N, C, ...], got 1-D [3]"
    );
    let mut bn1 = BatchNorm::<f32>::new_1d(BatchNormConfig::new(3)).unwrap();
    let e = bn1.forward(ArrayD::zeros(vec![2, 3, 4, 5]), Mode::Train).unwrap_err();
    assert_eq!(
        e.to_string(),
        "batch_norm1d: input must have 2 to 3 dimensions [N, C, ...], got 4-D [2, 3, 4, 5]"
    );
    let e = bn.forward(ArrayD::zeros(vec![2, 4, 2, 2]), Mode::Train).unwrap_err();
    assert_eq!(e.to_string(), "batch_norm2d: input has 4 channels, the layer expects 3");
    let e = bn.forward(ArrayD::zeros(vec![1, 3, 1, 1]), Mode::Train).unwrap_err();
    assert!(e.to_string().contains("expected more than 1 value per channel when training"), "{e}");
    assert!(matches!(bn.backward(ArrayD::zeros(vec![1, 3, 1, 1])), Err(Error::NoForward { .. })));
    let e = GroupNorm::<f32>::new(GroupNormConfig::new(4, 6)).unwrap_err();
    assert!(
        e.to_string().contains("num_groups 4 must be positive and divide num_channels 6"),
        "{e}"
    );
    let mut ln = LayerNorm::<f32>::new(LayerNormConfig::new(&[4])).unwrap();
    let e = ln.forward(ArrayD::zeros(vec![2, 3]), Mode::Train).unwrap_err();
    assert_eq!(e.to_string(), "layer_norm: input [2, 3] must end in normalized_shape [4]");
    assert!(BatchNorm::<f32>::new_2d(BatchNormConfig::new(3).with_momentum(Some(1.5))).is_err());
    assert!(LayerNorm::<f32>::new(LayerNormConfig::new(&[4]).with_eps(0.0)).is_err());
    let mut inorm =
        InstanceNorm2d::<f32>::new(InstanceNormConfig::new(3).with_momentum(None)).unwrap();
    assert!(inorm.forward(ArrayD::zeros(vec![2, 3, 4]), Mode::Train).is_err());
}

#[test]
fn fused_kernels_give_the_same_bits_as_the_plain_ones() {
    use cnn_norm::{
        moments, normalize_backward, normalize_backward_fused, normalize_forward, normalize_fused,
        rstd, Affine, AffineAxes, NormAxes,
    };
    let (n, c, g, hw) = (3, 6, 2, 20);
    let x: Vec<f32> =
        normal::<f32, _>(&[n * c * hw], 0.5, 2.0, &mut seeded_rng(8)).into_raw_vec_and_offset().0;
    let dy: Vec<f32> =
        normal::<f32, _>(&[n * c * hw], 0.0, 1.0, &mut seeded_rng(9)).into_raw_vec_and_offset().0;
    let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32).collect();
    let beta: Vec<f32> = (0..c).map(|i| i as f32 - 2.0).collect();
    let axes = NormAxes { outer: 1, groups: n * g, inner: c / g * hw };
    let affine = Affine {
        gamma: &gamma,
        beta: &beta,
        axes: AffineAxes { outer: n, features: c, inner: hw },
    };
    let m = moments(&x, axes).unwrap();
    let r = rstd(&m.var, 1e-5);
    let plain = normalize_forward(&x, axes, &m.mean, &r, Some(affine)).unwrap();
    let (fused, mean, var) = normalize_fused(&x, axes, 1e-5, Some(affine)).unwrap();
    assert_eq!((plain, m.mean.clone(), m.var), (fused, mean, var));
    let a =
        normalize_backward(&x, &dy, axes, &m.mean, &r, Some(affine), Statistics::Batch).unwrap();
    let b = normalize_backward_fused(&x, &dy, axes, &m.mean, &r, Some(affine)).unwrap();
    assert_eq!(a, b);
    assert!(normalize_fused(&x, NormAxes { outer: n, groups: c, inner: hw }, 1e-5, None).is_err());

    // BatchNorm's view with ReLU in the same pass: the norm, then `x` if
    // positive else `x·0` (−0 for negatives, as cnn_act's ReLU), and the signs.
    let bn_axes = NormAxes { outer: n, groups: c, inner: hw };
    let bn_affine = Affine { axes: AffineAxes { outer: n, features: c, inner: hw }, ..affine };
    let bm = moments(&x, bn_axes).unwrap();
    let br = rstd(&bm.var, 1e-5);
    let plain = normalize_forward(&x, bn_axes, &bm.mean, &br, Some(bn_affine)).unwrap();
    let mut signs = vec![7u8; x.len()];
    let fused =
        cnn_norm::normalize_forward_relu(&x, bn_axes, &bm.mean, &br, Some(bn_affine), &mut signs)
            .unwrap();
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let relu: Vec<f32> = plain.iter().map(|&v| if v > 0.0 { v } else { v * 0.0 }).collect();
    assert_eq!(bits(&fused), bits(&relu));
    assert_eq!(signs, plain.iter().map(|&v| u8::from(v > 0.0)).collect::<Vec<_>>());
    assert!(signs.contains(&0) && signs.contains(&1), "both signs occur");
    let e = cnn_norm::normalize_forward_relu(&x, bn_axes, &bm.mean, &br, None, &mut [0u8; 3]);
    assert!(e.unwrap_err().to_string().contains("sign mask of 3"));
}

/// `BatchNorm::forward_relu` is the forward then ReLU, bit for bit, with the
/// signs; a sign buffer of the wrong length is refused before the running
/// statistics move.
#[test]
fn batch_norm_forward_relu_is_the_forward_then_relu() {
    let x: ArrayD<f32> = normal(&[3, 4, 5, 5], 0.2, 1.5, &mut seeded_rng(3));
    let mut a = BatchNorm::<f32>::new_2d(BatchNormConfig::new(4)).unwrap();
    let mut b = BatchNorm::<f32>::new_2d(BatchNormConfig::new(4)).unwrap();
    let mut signs = vec![0u8; x.len()];
    let fused = a.forward_relu(x.clone(), Mode::Train, &mut signs).unwrap();
    let plain = b.forward(x.clone(), Mode::Train).unwrap();
    let relu = plain.mapv(|v| if v > 0.0 { v } else { v * 0.0 });
    let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&fused), bits(&relu));
    assert_eq!(signs, plain.iter().map(|&v| u8::from(v > 0.0)).collect::<Vec<_>>());
    assert_eq!(a.backward(plain.clone()).unwrap(), b.backward(plain).unwrap());
    let before = a.running_stats().map(|(m, v)| (m.clone(), v.clone()));
    let err = a.forward_relu(x, Mode::Train, &mut [0u8; 5]).unwrap_err();
    assert!(err.to_string().contains("sign mask of 5"), "{err}");
    assert_eq!(a.running_stats().map(|(m, v)| (m.clone(), v.clone())), before);
}

/// BatchNorm's backward in two passes (the per-channel sums give both the
/// coefficients and dγ, dβ) is the three-pass one (`grad_sums`, then
/// `normalize_backward_from`, which sums dγ and dβ again), bit for bit, in
/// f32 and f64, with and without affine, on segments shorter than a lane row,
/// of a whole number of lane rows, and longer than one masked piece (1024).
/// With a ReLU's signs it is the ReLU's backward (`dy` where positive, else
/// 0: NaN and −0 gradients included) then the norm's.
#[test]
fn batch_norm_backward_in_two_passes_and_through_relu_gives_the_same_bits() {
    use cnn_norm::{grad_sums, moments, normalize_backward, normalize_backward_from};
    use cnn_norm::{normalize_backward_relu, rstd, Affine};
    fn case<T: cnn_tensor::Float>(n: usize, c: usize, hw: usize, affine: bool) {
        let len = n * c * hw;
        let x: Vec<T> =
            normal::<T, _>(&[len], 0.5, 2.0, &mut seeded_rng(8)).into_raw_vec_and_offset().0;
        let mut dy: Vec<T> =
            normal::<T, _>(&[len], 0.0, 1.0, &mut seeded_rng(9)).into_raw_vec_and_offset().0;
        dy[1] = T::of(-0.0);
        let gamma: Vec<T> = (0..c).map(|i| T::of(0.5 + i as f64)).collect();
        let beta: Vec<T> = (0..c).map(|i| T::of(i as f64 - 2.0)).collect();
        let axes = NormAxes { outer: n, groups: c, inner: hw };
        let aff = affine.then_some(Affine {
            gamma: &gamma,
            beta: &beta,
            axes: AffineAxes { outer: n, features: c, inner: hw },
        });
        let m = moments(&x, axes).unwrap();
        let r = rstd(&m.var, 1e-5);
        let count = T::of(axes.count() as f64);
        let three_pass = |dy: &[T]| {
            let sums = grad_sums(&x, dy, axes, &m.mean, &r, aff.as_ref()).unwrap();
            let coef: Vec<(T, T)> = sums.iter().map(|&(a, b)| (a / count, b / count)).collect();
            normalize_backward_from(&x, dy, axes, &m.mean, &r, aff, &coef).unwrap()
        };
        let bits = |g: &cnn_norm::NormGrads<T>| {
            let all = g.dx.iter().chain(&g.dgamma).chain(&g.dbeta);
            all.map(|v| v.as_f64().to_bits()).collect::<Vec<_>>()
        };
        let two = normalize_backward(&x, &dy, axes, &m.mean, &r, aff, Statistics::Batch).unwrap();
        assert_eq!(bits(&two), bits(&three_pass(&dy)), "{n}x{c}x{hw} affine {affine}");
        assert_eq!(two.dgamma.len(), if affine { c } else { 0 });

        let mut signs: Vec<u8> = x.iter().map(|&v| u8::from(v > T::of(0.5))).collect();
        signs[0] = 0;
        dy[0] = T::of(f64::NAN); // masked: a ReLU's backward selects 0, it does not multiply
        let masked: Vec<T> =
            dy.iter().zip(&signs).map(|(&g, &s)| if s != 0 { g } else { T::zero() }).collect();
        let fused = normalize_backward_relu(&x, &dy, &signs, axes, &m.mean, &r, aff).unwrap();
        assert_eq!(bits(&fused), bits(&three_pass(&masked)), "relu {n}x{c}x{hw} affine {affine}");
        assert!(fused.dx.iter().all(|v| !v.is_nan()));
        let e = normalize_backward_relu(&x, &dy, &signs[1..], axes, &m.mean, &r, aff);
        assert!(e.unwrap_err().to_string().contains(&format!("sign mask of {}", len - 1)));
    }
    for (n, c, hw) in [(3, 4, 20), (2, 3, 128), (2, 2, 1500), (5, 1, 1)] {
        for affine in [true, false] {
            case::<f32>(n, c, hw, affine);
            case::<f64>(n, c, hw, affine);
        }
    }
}

/// `BatchNorm::backward_relu` is the ReLU's backward then `backward`, bit
/// for bit (dx, dγ, dβ), also when the norm is frozen (fixed statistics);
/// without a pending forward it is `NoForward`.
#[test]
fn batch_norm_backward_relu_is_the_relu_backward_then_backward() {
    for frozen in [false, true] {
        let x: ArrayD<f32> = normal(&[3, 4, 5, 5], 0.2, 1.5, &mut seeded_rng(3));
        let dy: ArrayD<f32> = normal(&[3, 4, 5, 5], 0.0, 1.0, &mut seeded_rng(4));
        let mut a = BatchNorm::<f32>::new_2d(BatchNormConfig::new(4)).unwrap();
        let mut rng = seeded_rng(6);
        a.visit_mut("", &mut |key, p: &mut Param<f32>| {
            if key == "weight" || key == "bias" {
                p.set_value(normal(p.value().shape(), 0.5, 1.0, &mut rng));
                p.trainable = !frozen;
            }
        });
        if frozen {
            // Running statistics of other data, then fixed: train mode uses them.
            let mut warm = BatchNorm::<f32>::new_2d(BatchNormConfig::new(4)).unwrap();
            warm.forward(normal(&[3, 4, 5, 5], 1.0, 2.0, &mut seeded_rng(5)), Mode::Train).unwrap();
            let (mean, var) = warm.running_stats().map(|(m, v)| (m.clone(), v.clone())).unwrap();
            a.visit_mut("", &mut |key, p: &mut Param<f32>| match key {
                "running_mean" => p.set_value(mean.clone()),
                "running_var" => p.set_value(var.clone()),
                _ => {}
            });
            assert!(a.is_frozen());
        }
        let mut b = a.clone();
        let mut signs = vec![0u8; x.len()];
        let y = a.forward_relu(x.clone(), Mode::Train, &mut signs).unwrap();
        b.forward(x.clone(), Mode::Train).unwrap();
        let masked =
            ndarray::Zip::from(&dy).and(&y).map_collect(|&g, &v| if v > 0.0 { g } else { 0.0 });
        let fused = a.backward_relu(dy.view(), &signs).unwrap();
        let plain = b.backward(masked).unwrap();
        let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fused), bits(&plain), "frozen {frozen}");
        let grads = |l: &BatchNorm<f32>| {
            let mut g = Vec::new();
            l.visit("", &mut |k, p| g.push((k.to_string(), p.grad.clone())));
            g
        };
        assert_eq!(grads(&a), grads(&b), "frozen {frozen}");
        let err = a.backward_relu(dy.view(), &signs).unwrap_err();
        assert!(matches!(err, Error::NoForward { .. }), "{err}");
    }
}

/// A BatchNorm with frozen γ and β (after `cnn_nn::freeze`): train mode normalizes with the
/// running statistics, leaves them bitwise unchanged, and its dx is that affine map's.
#[test]
fn frozen_batch_norm_keeps_its_statistics_and_passes_the_right_gradient() {
    let mut bn = BatchNorm::<f64>::new_2d(BatchNormConfig::new(3)).unwrap();
    randomize_affine(&mut bn, 4);
    let mut rng = seeded_rng(5);
    bn.visit_mut("", &mut |key, p| {
        if key == "running_mean" {
            p.set_value(normal(&[3], 0.3, 1.0, &mut rng));
        } else if key == "running_var" {
            p.set_value(normal(&[3], 0.0, 1.0, &mut rng).mapv(|v: f64| 0.5 + v * v));
        }
    });
    assert!(!bn.is_frozen());
    bn.visit_mut("", &mut |_, p| p.trainable = false);
    assert!(bn.is_frozen());
    let before: Vec<ArrayD<f64>> = {
        let mut v: Vec<ArrayD<f64>> = Vec::new();
        bn.visit_mut("", &mut |_, p| v.push(p.value().clone()));
        v
    };
    let x = normal(&[4, 3, 5, 5], 1.0, 2.0, &mut seeded_rng(6));
    let eval = bn.forward(x.clone(), Mode::Eval).unwrap();
    let train = bn.forward(x.clone(), Mode::Train).unwrap();
    assert_eq!(train, eval, "a frozen BatchNorm must normalize with its running statistics");
    let mut after: Vec<ArrayD<f64>> = Vec::new();
    bn.visit_mut("", &mut |_, p| after.push(p.value().clone()));
    assert_eq!(before, after, "running statistics and counter must not move");
    let report = check_layer(&mut bn, &x, 7, &GradCheckConfig::default()).unwrap();
    assert!(report.passed(), "{report}");
    // The same layer unfrozen uses batch statistics again.
    bn.visit_mut("", &mut |k, p| p.trainable = !p.buffer && (k == "weight" || k == "bias"));
    assert_ne!(bn.forward(x, Mode::Train).unwrap(), eval);
}

/// LayerNorm2d is LayerNorm over C at every pixel: checked against a direct loop.
#[test]
fn layer_norm2d_normalizes_each_pixel_over_channels() {
    let mut ln = LayerNorm2d::<f64>::new(LayerNorm2dConfig::new(3)).unwrap();
    randomize_affine(&mut ln, 9);
    let (mut g, mut b) = (Vec::new(), Vec::new());
    ln.visit_mut("", &mut |k, p| {
        if k == "weight" {
            g = p.value().iter().copied().collect()
        } else {
            b = p.value().iter().copied().collect()
        }
    });
    let x = normal(&[2, 3, 4, 5], 1.0, 3.0, &mut seeded_rng(10));
    let y = ln.forward(x.clone(), Mode::Eval).unwrap();
    for n in 0..2 {
        for i in 0..4 {
            for j in 0..5 {
                let v: Vec<f64> = (0..3).map(|c| x[[n, c, i, j]]).collect();
                let mean = v.iter().sum::<f64>() / 3.0;
                let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 3.0;
                for c in 0..3 {
                    let want = (v[c] - mean) / (var + 1e-6).sqrt() * g[c] + b[c];
                    assert!((y[[n, c, i, j]] - want).abs() < 1e-12);
                }
            }
        }
    }
    let e =
        ln.forward(normal(&[2, 4, 3, 3], 0.0, 1.0, &mut seeded_rng(1)), Mode::Eval).unwrap_err();
    assert_eq!(e.to_string(), "layer_norm2d: input must be [N, 3, H, W], got [2, 4, 3, 3]");
}

/// Every vector path (AVX-512, AVX2, portable): the gradient, fused-kernel and
/// thread-count tests again in a child process per SIMD level.
#[test]
fn every_simd_level_passes_the_kernel_tests() {
    for level in cnn_tensor::simd::levels() {
        for filter in ["gradients", "same_bits", "same_numbers"] {
            cnn_tensor::simd::rerun_tests(filter, &[("CNN_SIMD", level.name())]).unwrap();
        }
    }
}

/// Each config's defaults are PyTorch's (timm's for LayerNorm2d), and the
/// layers built from them hold exactly the keys PyTorch's would.
#[test]
fn config_defaults_are_pytorchs() {
    let bn = BatchNormConfig::new(4);
    assert_eq!(
        (bn.eps, bn.momentum, bn.affine, bn.track_running_stats),
        (1e-5, Some(0.1), true, true)
    );
    let gn = GroupNormConfig::new(2, 4);
    assert_eq!((gn.eps, gn.affine), (1e-5, true));
    let inorm = InstanceNormConfig::new(4);
    assert_eq!(
        (inorm.eps, inorm.momentum, inorm.affine, inorm.track_running_stats),
        (1e-5, Some(0.1), false, false)
    );
    let ln = LayerNormConfig::new(&[4, 3]);
    assert_eq!((ln.eps, ln.elementwise_affine), (1e-5, true));
    assert_eq!(LayerNorm2dConfig::new(4).eps, 1e-6);

    fn keys(layer: &mut dyn Layer<f32>) -> Vec<String> {
        let mut k = Vec::new();
        layer.visit_mut("", &mut |key, _| k.push(key.to_string()));
        k
    }
    let running = ["running_mean", "running_var", "num_batches_tracked"];
    assert_eq!(
        keys(&mut BatchNorm::new_2d(bn).unwrap()),
        [&["weight", "bias"][..], &running].concat()
    );
    assert_eq!(keys(&mut GroupNorm::new(gn).unwrap()), ["weight", "bias"]);
    assert!(keys(&mut InstanceNorm2d::new(inorm).unwrap()).is_empty());
    assert_eq!(
        keys(
            &mut InstanceNorm2d::new(inorm.with_affine(true).with_track_running_stats(true))
                .unwrap()
        ),
        [&["weight", "bias"][..], &running].concat()
    );
    assert_eq!(keys(&mut LayerNorm::new(ln.clone()).unwrap()), ["weight", "bias"]);
    assert!(keys(&mut LayerNorm::new(ln.with_elementwise_affine(false)).unwrap()).is_empty());
    assert_eq!(keys(&mut LayerNorm2d::new(LayerNorm2dConfig::new(4)).unwrap()), ["weight", "bias"]);
}

/// The `[outer, groups, inner]` statistics view and the `[outer, features,
/// inner]` affine view of one norm on an `[n, c, hw]` input, as the layers
/// build them: 0 BatchNorm, 1 InstanceNorm, 2 GroupNorm(g), 3 LayerNorm.
fn views(kind: usize, n: usize, c: usize, g: usize, hw: usize) -> (NormAxes, AffineAxes) {
    match kind {
        0 => (
            NormAxes { outer: n, groups: c, inner: hw },
            AffineAxes { outer: n, features: c, inner: hw },
        ),
        1 => (
            NormAxes { outer: 1, groups: n * c, inner: hw },
            AffineAxes { outer: n, features: c, inner: hw },
        ),
        2 => (
            NormAxes { outer: 1, groups: n * g, inner: c / g * hw },
            AffineAxes { outer: n, features: c, inner: hw },
        ),
        _ => (
            NormAxes { outer: 1, groups: n, inner: c * hw },
            AffineAxes { outer: n, features: c * hw, inner: 1 },
        ),
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Every fast path of the kernel (moments, forward, fused forward,
    /// backward with and without batch statistics, fused backward) equals
    /// the naive loops to 1e-12 in f64, on random shapes of every norm's view.
    #[test]
    fn fast_kernel_equals_its_naive_twin(
        kind in 0..4usize, n in 1..5usize, g in 1..4usize, cpg in 1..4usize,
        hw in 1..80usize, affine in any::<bool>(), seed in 0u64..1000,
    ) {
        use cnn_norm::{naive, Affine};
        let c = g * cpg;
        let (axes, aaxes) = views(kind, n, c, g, hw);
        let mut rng = seeded_rng(seed);
        let len = n * c * hw;
        let x: Vec<f64> = normal(&[len], 1.5, 2.0, &mut rng).into_iter().collect();
        let dy: Vec<f64> = normal(&[len], 0.0, 1.0, &mut rng).into_iter().collect();
        let gamma: Vec<f64> = normal(&[aaxes.features], 1.0, 0.5, &mut rng).into_iter().collect();
        let beta: Vec<f64> = normal(&[aaxes.features], 0.0, 0.5, &mut rng).into_iter().collect();
        let af = affine.then_some(Affine { gamma: &gamma, beta: &beta, axes: aaxes });
        let close = |what: &str, fast: &[f64], slow: &[f64]| {
            let e = cnn_test_support::rel_err_slice(fast, slow);
            prop_assert!(e < 1e-12, "{what}: relative error {e:e} ({axes:?}, affine {affine})");
            Ok(())
        };

        let fast_m = cnn_norm::moments(&x, axes).unwrap();
        let slow_m = naive::moments(&x, axes).unwrap();
        close("mean", &fast_m.mean, &slow_m.mean)?;
        close("var", &fast_m.var, &slow_m.var)?;
        let r = cnn_norm::rstd(&slow_m.var, 1e-5);
        let slow_y = naive::normalize_forward(&x, axes, &slow_m.mean, &r, af).unwrap();
        close("forward", &cnn_norm::normalize_forward(&x, axes, &slow_m.mean, &r, af).unwrap(), &slow_y)?;
        if axes.outer == 1 {
            let (y, mean, var) = cnn_norm::normalize_fused(&x, axes, 1e-5, af).unwrap();
            close("fused forward", &y, &slow_y)?;
            close("fused mean", &mean, &slow_m.mean)?;
            close("fused var", &var, &slow_m.var)?;
        }
        for stats in [Statistics::Batch, Statistics::Running] {
            let slow = naive::normalize_backward(&x, &dy, axes, &slow_m.mean, &r, af, stats).unwrap();
            let fast = cnn_norm::normalize_backward(&x, &dy, axes, &slow_m.mean, &r, af, stats).unwrap();
            close("dx", &fast.dx, &slow.dx)?;
            close("dgamma", &fast.dgamma, &slow.dgamma)?;
            close("dbeta", &fast.dbeta, &slow.dbeta)?;
            if stats == Statistics::Batch {
                let fused = cnn_norm::normalize_backward_fused(&x, &dy, axes, &slow_m.mean, &r, af).unwrap();
                close("fused dx", &fused.dx, &slow.dx)?;
                close("fused dgamma", &fused.dgamma, &slow.dgamma)?;
                close("fused dbeta", &fused.dbeta, &slow.dbeta)?;
            }
        }
    }
}

#[test]
fn naive_twin_refuses_views_that_do_not_fit() {
    use cnn_norm::naive;
    let axes = NormAxes { outer: 2, groups: 3, inner: 4 };
    let e = naive::moments(&[0.0f64; 23], axes).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "norm", .. }), "{e}");
    let e = naive::normalize_forward(&[0.0f64; 24], axes, &[0.0; 3], &[1.0; 2], None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = naive::normalize_backward(
        &[0.0f64; 24],
        &[0.0; 20],
        axes,
        &[0.0; 3],
        &[1.0; 3],
        None,
        Statistics::Batch,
    )
    .unwrap_err();
    assert!(e.to_string().contains("dy has 20 elements"), "{e}");
}
