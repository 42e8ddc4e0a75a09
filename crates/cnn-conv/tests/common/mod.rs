//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use cnn_tensor::random::{normal, seeded_rng};
pub use cnn_test_support::{proptest_config, rel_err};
use ndarray::{Array4, ArrayD, Ix4};

/// A standard-normal 4-D tensor from a seed.
pub fn randn4(shape: [usize; 4], seed: u64) -> Array4<f64> {
    normal(&shape, 0.0, 1.0, &mut seeded_rng(seed)).into_dimensionality::<Ix4>().expect("4-D")
}

/// Distinct values spaced 0.01 apart in a seeded order, so that no max-pool
/// window has ties or near-ties a finite difference could cross.
pub fn distinct4(shape: [usize; 4], seed: u64) -> ArrayD<f64> {
    use rand::seq::SliceRandom;
    let len: usize = shape.iter().product();
    let mut v: Vec<f64> = (0..len).map(|i| i as f64 * 0.01 - len as f64 * 0.005).collect();
    v.shuffle(&mut seeded_rng(seed));
    ArrayD::from_shape_vec(shape.to_vec(), v).expect("sizes agree")
}

/// A convolution for a property test: input and weight shapes, settings, bias.
#[derive(Debug, Clone)]
pub struct Case {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub opts: cnn_conv::Conv2dOptions,
    pub bias: bool,
}

/// Relative errors of `conv2d_forward` / `conv2d_backward` against their
/// naive twins in f64 on case `c` (random data from `seed`, a bias of 0.5 when
/// `c.bias`): forward, dx, dW and db.
pub fn conv_errors_against_naive(c: &Case, seed: u64) -> [(&'static str, f64); 4] {
    let (xs, ws, opts, bias) = (c.x, c.w, &c.opts, c.bias);
    use cnn_conv::naive::{conv2d_backward_naive, conv2d_forward_naive};
    use cnn_conv::{conv2d_backward, conv2d_forward};
    let (x, w) = (randn4(xs, seed), randn4(ws, seed + 1));
    let b = ndarray::Array1::from_vec(vec![0.5; ws[0]]);
    let b = bias.then_some(b.view());
    let fast = conv2d_forward(x.view(), w.view(), b, opts).expect("forward");
    let slow = conv2d_forward_naive(x.view(), w.view(), b, opts).expect("naive forward");
    let dy = randn4(fast.dim().into(), seed + 2);
    let gf = conv2d_backward(x.view(), w.view(), dy.view(), opts).expect("backward");
    let gs = conv2d_backward_naive(x.view(), w.view(), dy.view(), opts).expect("naive backward");
    [
        ("forward", rel_err(&fast, &slow)),
        ("dx", rel_err(&gf.dx, &gs.dx)),
        ("dw", rel_err(&gf.dw, &gs.dw)),
        ("db", rel_err(&gf.db, &gs.db)),
    ]
}
