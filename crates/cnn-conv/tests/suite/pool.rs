//! Pools: fast kernels against naive twins, backward against central
//! differences, determinism, and errors.

use crate::common;

use cnn_conv::pool_naive::{avg_pool2d_forward_naive, max_pool2d_forward_naive};
use cnn_conv::{
    avg_pool2d_backward, avg_pool2d_forward, global_avg_pool2d_backward, global_avg_pool2d_forward,
    max_pool2d_backward, max_pool2d_forward, AvgPool2d, GlobalAvgPool2d, MaxPool2d, Pool2dOptions,
};
use cnn_tensor::gradcheck::{check_fn, check_layer, GradCheckConfig};
use cnn_tensor::{ArrayD, Error, Layer, Mode};
use common::{distinct4, proptest_config, randn4, rel_err};
use ndarray::Ix4;
use proptest::prelude::*;

fn options() -> impl Strategy<Value = Pool2dOptions> {
    (1..4usize, 1..4usize, 1..4usize, 1..4usize, any::<bool>(), any::<bool>()).prop_flat_map(
        |(kh, kw, sh, sw, ceil, incl)| {
            (0..=kh / 2, 0..=kw / 2).prop_map(move |(ph, pw)| Pool2dOptions {
                kernel_size: [kh, kw],
                stride: [sh, sw],
                padding: [ph, pw],
                ceil_mode: ceil,
                count_include_pad: incl,
            })
        },
    )
}

fn shape() -> impl Strategy<Value = [usize; 4]> {
    (1..3usize, 1..3usize, 3..9usize, 3..9usize).prop_map(|(n, c, h, w)| [n, c, h, w])
}

proptest! {
    #![proptest_config(proptest_config(128))]

    #[test]
    fn fast_pools_equal_naive(s in shape(), o in options(), seed in 0u64..1000) {
        let x = randn4(s, seed);
        let fast = max_pool2d_forward(x.view(), &o).unwrap().y;
        prop_assert_eq!(&fast, &max_pool2d_forward_naive(x.view(), &o).unwrap());
        let fast = avg_pool2d_forward(x.view(), &o).unwrap();
        prop_assert!(rel_err(&fast, &avg_pool2d_forward_naive(x.view(), &o).unwrap()) < 1e-12);
    }

    #[test]
    fn pool_backward_matches_central_differences(s in shape(), o in options(), seed in 0u64..1000) {
        let x = distinct4(s, seed);
        let four = |t: &ArrayD<f64>| t.view().into_dimensionality::<Ix4>().unwrap().to_owned();
        let cfg = GradCheckConfig::default();
        let max = check_fn(
            |t| Ok(max_pool2d_forward(four(&t[0]).view(), &o)?.y.into_dyn()),
            |t, dy| {
                let out = max_pool2d_forward(four(&t[0]).view(), &o)?;
                Ok(vec![max_pool2d_backward(four(dy).view(), out.argmax.view(), s)?.into_dyn()])
            },
            std::slice::from_ref(&x), seed, &cfg).unwrap();
        prop_assert!(max.passed(), "max pool {o:?}: {max}");
        let avg = check_fn(
            |t| Ok(avg_pool2d_forward(four(&t[0]).view(), &o)?.into_dyn()),
            |_, dy| Ok(vec![avg_pool2d_backward(four(dy).view(), s, &o)?.into_dyn()]),
            std::slice::from_ref(&x), seed, &cfg).unwrap();
        prop_assert!(avg.passed(), "avg pool {o:?}: {avg}");
        let global = check_fn(
            |t| Ok(global_avg_pool2d_forward(four(&t[0]).view())?.into_dyn()),
            |_, dy| Ok(vec![global_avg_pool2d_backward(four(dy).view(), s)?.into_dyn()]),
            std::slice::from_ref(&x), seed, &cfg).unwrap();
        prop_assert!(global.passed(), "global: {global}");
    }
}

#[test]
fn layers_pass_the_gradient_checker() {
    let x = distinct4([2, 3, 7, 6], 1);
    let cfg = GradCheckConfig::default();
    let mut layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(MaxPool2d::new(Pool2dOptions::new(3).with_stride(2).with_padding(1))),
        Box::new(AvgPool2d::new(Pool2dOptions::new(2).with_ceil_mode(true))),
        Box::new(GlobalAvgPool2d::new()),
    ];
    for layer in &mut layers {
        let report = check_layer(layer.as_mut(), &x, 2, &cfg).unwrap();
        assert!(report.passed(), "{report}");
    }
}

#[test]
fn same_numbers_on_one_and_two_threads() {
    let x = randn4([4, 8, 17, 15], 3).mapv(|v| v as f32);
    let o = Pool2dOptions::new(3).with_stride(2).with_padding(1);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
            let m = max_pool2d_forward(x.view(), &o).unwrap();
            let dm = max_pool2d_backward(m.y.view(), m.argmax.view(), [4, 8, 17, 15]).unwrap();
            let a = avg_pool2d_forward(x.view(), &o).unwrap();
            let da = avg_pool2d_backward(a.view(), [4, 8, 17, 15], &o).unwrap();
            let g = global_avg_pool2d_forward(x.view()).unwrap();
            (m.y, dm, a, da, g)
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn bad_input_is_a_clear_error() {
    let mut pool = MaxPool2d::new(Pool2dOptions::new(2));
    let err = Layer::<f32>::forward(&mut pool, ArrayD::zeros(vec![4, 4]), Mode::Train).unwrap_err();
    assert_eq!(err.to_string(), "max_pool2d: input must be 4-D [N, C, H, W], got 2-D [4, 4]");
    assert!(matches!(
        Layer::<f32>::backward(&mut pool, ArrayD::zeros(vec![1, 1, 2, 2])),
        Err(Error::NoForward { op: "max_pool2d" })
    ));
    let mut avg = AvgPool2d::new(Pool2dOptions::new(3));
    let err =
        Layer::<f32>::forward(&mut avg, ArrayD::zeros(vec![1, 1, 2, 2]), Mode::Train).unwrap_err();
    assert_eq!(err.to_string(), "avg_pool2d: kernel [3, 3] is larger than the padded input 2x2");
    let mut global = GlobalAvgPool2d::new();
    assert!(
        Layer::<f32>::forward(&mut global, ArrayD::zeros(vec![1, 0, 2, 2]), Mode::Train).is_err()
    );
    assert!(matches!(
        Layer::<f32>::backward(&mut global, ArrayD::zeros(vec![1, 1, 1, 1])),
        Err(Error::NoForward { .. })
    ));
}

#[test]
fn adaptive_pool_matches_global_and_passes_the_gradient_checker() {
    use cnn_conv::{adaptive_avg_pool2d_forward, AdaptiveAvgPool2d};
    let x = randn4([2, 3, 7, 5], 4);
    let a = adaptive_avg_pool2d_forward(x.view(), [1, 1]).unwrap();
    let g = global_avg_pool2d_forward(x.view()).unwrap();
    assert!(rel_err(&a, &g) < 1e-15);
    // Same size: the identity.
    assert_eq!(adaptive_avg_pool2d_forward(x.view(), [7, 5]).unwrap(), x);
    for out in [[3, 2], [4, 4], [2, 5]] {
        let mut layer = AdaptiveAvgPool2d::new(out);
        let report =
            check_layer(&mut layer, &x.clone().into_dyn(), 1, &GradCheckConfig::default()).unwrap();
        assert!(report.passed(), "{out:?}: {report}");
    }
    assert!(adaptive_avg_pool2d_forward(x.view(), [0, 2]).is_err());
}
