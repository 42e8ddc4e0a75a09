//! `Linear` and ConvNeXt's `PixelLinear` under a bf16 scope: output, input
//! gradient and weight gradient within their stated bound of the exact sums
//! on inputs rounded to bf16 (`(2n + 2)·u·(S + |b|)`, `u = 2⁻²⁴`, `n` the
//! products in an output, `S` the sum of their magnitudes, `b` a bias added
//! in f32), in train mode and in eval mode's kept packing.

#![allow(clippy::unwrap_used)]

use cnn_nn::{Linear, LinearConfig, PixelLinear};
use cnn_tensor::bf16::round_f32;
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{with_precision, ArrayD, Layer, Mode, Precision};

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn r(v: f32) -> f64 {
    f64::from(round_f32(v))
}

fn check(what: &str, got: f32, exact: f64, s: f64, n: usize) {
    let bound = (2 * n + 2) as f64 * U * s;
    let err = (f64::from(got) - exact).abs();
    assert!(err <= bound, "{what}: {got} vs {exact}, error {err:e}, bound {bound:e}");
}

/// Runs forward (train and eval) and backward in bf16 and checks every value.
#[test]
fn pixel_linear_keeps_its_bound_in_bf16() {
    for (n, h, w) in [(37, 3, 4), (3, 24, 24)] {
        let mut rng = seeded_rng(8);
        let (i, o) = (48, 40);
        let x: ArrayD<f32> = normal(&[n, i, h, w], 0.0, 1.0, &mut rng);
        let dy: ArrayD<f32> = normal(&[n, o, h, w], 0.0, 1.0, &mut rng);
        let weight: ArrayD<f32> = normal(&[o, i], 0.0, 0.2, &mut rng);
        let bias: ArrayD<f32> = normal(&[o], 0.0, 1.0, &mut rng);
        let mut layer = PixelLinear::new(weight.clone()).unwrap();
        layer.bias.set_value(bias.clone());
        let (y, y_eval, dx) = with_precision(Precision::Bf16, || {
            let y = layer.forward(x.clone(), Mode::Train).unwrap();
            let dx = layer.backward(dy.clone()).unwrap();
            let y_eval = layer.forward(x.clone(), Mode::Eval).unwrap();
            (y, y_eval, dx)
        });
        let dw = layer.weight.grad.clone();
        let p = h * w;
        let at = |a: &ArrayD<f32>, s: usize, c: usize, q: usize| a[[s, c, q / w, q % w]];
        for s in 0..n {
            for q in (0..p).step_by(5) {
                for oc in 0..o {
                    let (mut e, mut m) = (f64::from(bias[[oc]]), f64::from(bias[[oc]].abs()));
                    for ic in 0..i {
                        let t = r(weight[[oc, ic]]) * r(at(&x, s, ic, q));
                        (e, m) = (e + t, m + t.abs());
                    }
                    check("y", at(&y, s, oc, q), e, m, i);
                    check("y eval", at(&y_eval, s, oc, q), e, m, i);
                }
                for ic in 0..i {
                    let (mut e, mut m) = (0.0, 0.0);
                    for oc in 0..o {
                        let t = r(weight[[oc, ic]]) * r(at(&dy, s, oc, q));
                        (e, m) = (e + t, m + t.abs());
                    }
                    check("dx", at(&dx, s, ic, q), e, m, o);
                }
            }
        }
        for oc in 0..o {
            for ic in 0..i {
                let (mut e, mut m) = (0.0, 0.0);
                for s in 0..n {
                    for q in 0..p {
                        let t = r(at(&dy, s, oc, q)) * r(at(&x, s, ic, q));
                        (e, m) = (e + t, m + t.abs());
                    }
                }
                check("dW", dw[[oc, ic]], e, m, n * p);
            }
        }
    }
}

#[test]
fn linear_keeps_its_bound_in_bf16() {
    let mut rng = seeded_rng(9);
    let (batch, i, o) = (33, 70, 21);
    let x: ArrayD<f32> = normal(&[batch, i], 0.0, 1.0, &mut rng);
    let dy: ArrayD<f32> = normal(&[batch, o], 0.0, 1.0, &mut rng);
    let mut layer = Linear::new(LinearConfig::new(i, o), &mut rng).unwrap();
    let (y, dx) = with_precision(Precision::Bf16, || {
        let y = layer.forward(x.clone(), Mode::Train).unwrap();
        (y, layer.backward(dy.clone()).unwrap())
    });
    let (wt, b) = (layer.weight.value().clone(), layer.bias.as_ref().unwrap().value().clone());
    let dw = layer.weight.grad.clone();
    for s in 0..batch {
        for oc in 0..o {
            let (mut e, mut m) = (f64::from(b[[oc]]), f64::from(b[[oc]].abs()));
            for ic in 0..i {
                let t = r(wt[[oc, ic]]) * r(x[[s, ic]]);
                (e, m) = (e + t, m + t.abs());
            }
            check("y", y[[s, oc]], e, m, i);
        }
        for ic in 0..i {
            let (mut e, mut m) = (0.0, 0.0);
            for oc in 0..o {
                let t = r(wt[[oc, ic]]) * r(dy[[s, oc]]);
                (e, m) = (e + t, m + t.abs());
            }
            check("dx", dx[[s, ic]], e, m, o);
        }
    }
    for oc in 0..o {
        for ic in 0..i {
            let (mut e, mut m) = (0.0, 0.0);
            for s in 0..batch {
                let t = r(dy[[s, oc]]) * r(x[[s, ic]]);
                (e, m) = (e + t, m + t.abs());
            }
            check("dW", dw[[oc, ic]], e, m, batch);
        }
    }
}
