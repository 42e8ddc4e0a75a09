//! Activations and dropout: gradients against central differences, in-place
//! work, dropout's statistics, errors.

#![allow(clippy::unwrap_used)]

use cnn_act::{activation_backward, activation_forward, Act, Activation, Dropout};
use cnn_tensor::gradcheck::{check_layer, GradCheckConfig};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{ArrayD, Error, Layer, Mode};
use cnn_test_support::proptest_config as config;
use proptest::prelude::*;

const ALL: [Activation; 6] = [
    Activation::Relu,
    Activation::LeakyRelu(0.2),
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Gelu,
    Activation::GeluTanh,
];

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn activation_gradients(rows in 1..5usize, cols in 1..7usize, which in 0..6usize, seed in 0u64..1000) {
        // ReLU's kink at 0 defeats central differences: keep inputs away from it.
        let x = normal(&[rows, cols], 0.0, 2.0, &mut seeded_rng(seed)).mapv(|v: f64| if v.abs() < 1e-3 { v + 0.01 } else { v });
        let mut layer = Act::<f64>::new(ALL[which]);
        let report = check_layer(&mut layer, &x, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{:?}: {report}", ALL[which]);
    }
}

#[test]
fn forward_and_backward_reuse_the_callers_buffer() {
    let x: ArrayD<f32> = normal(&[64, 64], 0.0, 1.0, &mut seeded_rng(1));
    let ptr = x.as_ptr();
    let y = activation_forward(Activation::Gelu, x).unwrap();
    assert_eq!(y.as_ptr(), ptr);
    let dy: ArrayD<f32> = ArrayD::ones(vec![64, 64]);
    let ptr = dy.as_ptr();
    let dx = activation_backward(Activation::Gelu, &y, dy).unwrap();
    assert_eq!(dx.as_ptr(), ptr);
}

#[test]
fn large_tensors_match_elementwise_values() {
    // Past the parallel chunk size, every element still gets its own value.
    let x: ArrayD<f64> = normal(&[300, 500], 0.0, 3.0, &mut seeded_rng(2));
    for act in ALL {
        let y = activation_forward(act, x.clone()).unwrap();
        assert!(y.iter().zip(&x).all(|(&y, &x)| y == act.value(x)), "{act:?}");
    }
}

#[test]
fn dropout_keeps_one_minus_p_and_the_mean() {
    let n = 200_000;
    let x = ArrayD::<f64>::ones(vec![n]);
    for p in [0.1, 0.5, 0.8] {
        let mut drop = Dropout::new(p, 7).unwrap();
        let y = drop.forward(x.clone(), Mode::Train).unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // The kept count is Binomial(n, 1 − p): its std is √(p(1−p)/n) ≤ 0.0012; allow 5 of them.
        assert!((kept - (1.0 - p)).abs() < 0.006, "p = {p}: kept {kept}");
        // Survivors are scaled by 1/(1 − p), so the mean stays 1 within the same tolerance, scaled.
        let mean = y.sum() / n as f64;
        assert!((mean - 1.0).abs() < 0.006 / (1.0 - p), "p = {p}: mean {mean}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / (1.0 - p)).abs() < 1e-12));
    }
}

#[test]
fn dropout_is_seeded_and_backward_uses_the_same_mask() {
    let x: ArrayD<f64> = normal(&[10, 10], 0.0, 1.0, &mut seeded_rng(3));
    let mut a = Dropout::new(0.5, 11).unwrap();
    let mut b = Dropout::new(0.5, 11).unwrap();
    let ya = a.forward(x.clone(), Mode::Train).unwrap();
    assert_eq!(ya, b.forward(x.clone(), Mode::Train).unwrap(), "same seed, same mask");
    let dx = a.backward(ArrayD::<f64>::ones(vec![10, 10])).unwrap();
    for (g, y) in dx.iter().zip(&ya) {
        assert_eq!(*g == 0.0, *y == 0.0, "gradient flows exactly where the input did");
    }
    // The next call draws a new mask.
    assert_ne!(ya, a.forward(x.clone(), Mode::Train).unwrap());
}

#[test]
fn dropout_edges() {
    let x: ArrayD<f64> = normal(&[50], 0.0, 1.0, &mut seeded_rng(4));
    let mut eval = Dropout::new(0.9, 1).unwrap();
    assert_eq!(eval.forward(x.clone(), Mode::Eval).unwrap(), x);
    let mut zero = Dropout::new(0.0, 1).unwrap();
    assert_eq!(zero.forward(x.clone(), Mode::Train).unwrap(), x);
    let mut all = Dropout::new(1.0, 1).unwrap();
    let y = all.forward(x, Mode::Train).unwrap();
    assert!(y.iter().all(|&v| v == 0.0 && !v.is_nan()));
    let dx = all.backward(ArrayD::<f64>::ones(vec![50])).unwrap();
    assert!(dx.iter().all(|&v| v == 0.0));
    for p in [-0.1, 1.1, f64::NAN] {
        let e = Dropout::new(p, 0).unwrap_err();
        assert!(e.to_string().starts_with("dropout: invalid setting: p must be in [0, 1]"), "{e}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let mut relu = Act::<f32>::relu();
    assert!(matches!(relu.backward(ArrayD::zeros(vec![2])), Err(Error::NoForward { op: "relu" })));
    relu.forward(ArrayD::zeros(vec![2, 3]), Mode::Train).unwrap();
    let e = relu.backward(ArrayD::zeros(vec![3, 2])).unwrap_err();
    assert_eq!(e.to_string(), "relu: dy is [3, 2], expected the output shape [2, 3]");
    assert!(
        activation_forward(Activation::LeakyRelu(f64::NAN), ArrayD::<f32>::zeros(vec![2])).is_err()
    );
    let mut drop = Dropout::new(0.5, 0).unwrap();
    Layer::<f32>::forward(&mut drop, ArrayD::zeros(vec![4]), Mode::Train).unwrap();
    assert!(Layer::<f32>::backward(&mut drop, ArrayD::zeros(vec![5])).is_err());
}

#[test]
fn out_of_place_forward_equals_in_place() {
    let x32: ArrayD<f32> = normal(&[70, 1000], 0.0, 2.0, &mut seeded_rng(9));
    let x64: ArrayD<f64> = normal(&[7, 100], 0.0, 2.0, &mut seeded_rng(9));
    for act in ALL {
        let a = cnn_act::activation_forward_copy(act, &x32).unwrap();
        assert_eq!(a, activation_forward(act, x32.clone()).unwrap(), "{act:?} f32");
        let b = cnn_act::activation_forward_copy(act, &x64).unwrap();
        assert_eq!(b, activation_forward(act, x64.clone()).unwrap(), "{act:?} f64");
        // The slice form (a product's epilogue), on odd-length pieces.
        let mut c = x32.clone();
        c.as_slice_mut().unwrap().chunks_mut(997).for_each(|piece| {
            cnn_act::activation_in_place(act, piece).unwrap();
        });
        assert_eq!(c, a, "{act:?} f32 in place by slices");
        let mut d = x64.clone();
        cnn_act::activation_in_place(act, d.as_slice_mut().unwrap()).unwrap();
        assert_eq!(d, b, "{act:?} f64 in place by slices");
    }
    let mut bad = [1.0f32];
    assert!(cnn_act::activation_in_place(Activation::LeakyRelu(f64::NAN), &mut bad).is_err());
}

/// A ReLU applied inside another layer's forward (`Act::forward_in`, which
/// lends the sign buffer): its backward is that of its own forward on the
/// same output; other activations refuse, and a failed inner forward leaves
/// no backward pending.
#[test]
fn a_relu_run_elsewhere_has_its_own_backward() {
    let x: ArrayD<f32> = normal(&[4, 6], 0.0, 1.0, &mut seeded_rng(2));
    let dy: ArrayD<f32> = normal(&[4, 6], 0.0, 1.0, &mut seeded_rng(3));
    let mut own = Act::<f32>::relu();
    let y = own.forward(x.clone(), Mode::Train).unwrap();
    let mut lent = Act::<f32>::relu();
    let y2 = lent
        .forward_in(x.shape(), |signs| {
            for (s, &v) in signs.iter_mut().zip(x.iter()) {
                *s = u8::from(v > 0.0);
            }
            Ok(y.clone())
        })
        .unwrap();
    assert_eq!(y2, y);
    assert_eq!(lent.backward(dy.clone()).unwrap(), own.backward(dy.clone()).unwrap());
    assert!(Act::<f32>::gelu().forward_in(&[2], |_| Ok(())).is_err());
    let failed: cnn_tensor::Result<()> =
        lent.forward_in(&[2], |_| Err(Error::config("inner", "refused")));
    assert!(failed.is_err());
    assert!(matches!(lent.backward(dy).unwrap_err(), Error::NoForward { .. }));
}

/// A ReLU's backward applied inside another layer's (`Act::backward_in`,
/// which lends the signs of the pending backward and consumes it): the signs
/// are those of its forward; a wrong `dy` shape, a second call, a backward
/// with no train-mode forward and another activation are refused, and `f`
/// does not run then.
#[test]
fn a_relu_backward_run_elsewhere_gets_its_forward_signs() {
    let x: ArrayD<f32> = normal(&[4, 6], 0.0, 1.0, &mut seeded_rng(2));
    let mut relu = Act::<f32>::relu();
    relu.forward(x.clone(), Mode::Train).unwrap();
    let err = relu.backward_in(&[6, 4], |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("expected the output shape [4, 6]"), "{err}");
    relu.forward(x.clone(), Mode::Train).unwrap();
    let signs = relu.backward_in(x.shape(), |s| Ok(s.to_vec())).unwrap();
    assert_eq!(signs, x.iter().map(|&v| u8::from(v > 0.0)).collect::<Vec<_>>());
    let mut ran = false;
    let again = relu.backward_in(x.shape(), |_| {
        ran = true;
        Ok(())
    });
    assert!(matches!(again.unwrap_err(), Error::NoForward { .. }) && !ran);
    relu.forward(x.clone(), Mode::Eval).unwrap();
    assert!(matches!(
        relu.backward_in(x.shape(), |_| Ok(())).unwrap_err(),
        Error::NoForward { .. }
    ));
    let mut gelu = Act::<f32>::gelu();
    gelu.forward(x.clone(), Mode::Train).unwrap();
    assert!(matches!(gelu.backward_in(x.shape(), |_| Ok(())).unwrap_err(), Error::Config { .. }));
}

/// DropPath over many draws: the kept share of samples within 5σ of 1 − p,
/// the mean of the output that of the input, the same seed the same masks,
/// eval the identity.
#[test]
fn drop_path_statistics() {
    use cnn_act::DropPath;
    let p = 0.3;
    let x: ArrayD<f64> = ArrayD::ones(cnn_tensor::IxDyn(&[1000, 4]));
    let mut dp = DropPath::new(p, 11).unwrap();
    let (mut kept, mut total, mut sum) = (0usize, 0usize, 0.0);
    for _ in 0..20 {
        let y = dp.forward(x.clone(), Mode::Train).unwrap();
        kept += y.outer_iter().filter(|r| r[0] != 0.0).count();
        total += 1000;
        sum += y.sum();
    }
    let share = kept as f64 / total as f64;
    let sigma = (p * (1.0 - p) / total as f64).sqrt();
    assert!((share - (1.0 - p)).abs() < 5.0 * sigma, "kept {share}");
    let mean = sum / (total * 4) as f64;
    assert!((mean - 1.0).abs() < 5.0 * sigma / (1.0 - p), "mean {mean}");
    let draw = |seed| DropPath::new(p, seed).unwrap().forward(x.clone(), Mode::Train).unwrap();
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
    assert_eq!(DropPath::new(p, 1).unwrap().forward(x.clone(), Mode::Eval).unwrap(), x);
    assert_eq!(DropPath::new(0.0, 1).unwrap().forward(x.clone(), Mode::Train).unwrap(), x);
}

/// Every vector path (AVX-512, AVX2, portable): the elementwise and gradient
/// tests again in a child process per SIMD level.
#[test]
fn every_simd_level_passes_the_kernel_tests() {
    for level in cnn_tensor::simd::levels() {
        for filter in ["elementwise_values", "gradients", "equals_in_place"] {
            cnn_tensor::simd::rerun_tests(filter, &[("CNN_SIMD", level.name())]).unwrap();
        }
    }
}

/// ReLU and LeakyReLU layers work in place and keep a sign mask: the same
/// numbers as the kernels that keep the input, on zeros and both signs, at
/// two batch sizes one after the other (the mask resizes); a NaN gradient
/// where the input was negative gives 0, as PyTorch's `threshold_backward`.
#[test]
fn rectifier_layers_in_place_equal_the_kernels() {
    for act in [Activation::Relu, Activation::LeakyRelu(0.1)] {
        let mut layer = Act::<f32>::new(act);
        for (n, seed) in [(4usize, 1u64), (7, 2), (4, 3)] {
            let mut x: ArrayD<f32> = normal(&[n, 3, 40, 40], 0.0, 1.0, &mut seeded_rng(seed));
            x.iter_mut().step_by(7).for_each(|v| *v = 0.0);
            let mut dy: ArrayD<f32> = normal(&[n, 3, 40, 40], 0.0, 1.0, &mut seeded_rng(seed + 9));
            dy[[0, 0, 0, 0]] = f32::NAN;
            x[[0, 0, 0, 0]] = -1.0;
            let y_want = activation_forward(act, x.clone()).unwrap();
            let mut dx_want = activation_backward(act, &x, dy.clone()).unwrap();
            if act == Activation::Relu {
                dx_want[[0, 0, 0, 0]] = 0.0; // threshold_backward: 0, not NaN · 0
            }
            let y = layer.forward(x, Mode::Train).unwrap();
            let dx = layer.backward(dy).unwrap();
            assert_eq!(y, y_want, "{act:?} batch {n}");
            let same = dx.iter().zip(&dx_want).all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
            assert!(same, "{act:?} batch {n}");
        }
        // The mask belongs to one train forward: backward again, or after eval, is an error.
        assert!(matches!(layer.backward(ArrayD::zeros(vec![1])), Err(Error::NoForward { .. })));
        let x: ArrayD<f32> = ArrayD::zeros(vec![2, 2]);
        layer.forward(x.clone(), Mode::Eval).unwrap();
        assert!(matches!(layer.backward(x.clone()), Err(Error::NoForward { .. })));
        layer.forward(x.clone(), Mode::Train).unwrap();
        assert!(layer.backward(ArrayD::zeros(vec![3])).is_err());
    }
    // The masked kernels are for rectifiers only, forward and backward.
    let x: ArrayD<f32> = ArrayD::zeros(vec![4]);
    let mut mask = Vec::new();
    assert!(cnn_act::rectifier_forward_masked(Activation::Sigmoid, x.clone(), &mut mask).is_err());
    let err = cnn_act::rectifier_backward_masked(Activation::Gelu, &[1, 0, 1, 0], x).unwrap_err();
    assert!(err.to_string().contains("sign mask"), "{err}");
}
