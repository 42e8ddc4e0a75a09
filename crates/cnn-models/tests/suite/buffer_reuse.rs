//! Layers and kernels keep buffers between steps (scratch pools, ReLU sign
//! masks, cached inputs, folded weights): none of it may leak into results.
#![allow(clippy::unwrap_used)]

use cnn_models::{cifar_resnet, resnet50};
use cnn_nn::Sequential;
use cnn_tensor::ndarray::Ix2;
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{cross_entropy_backward, ArrayD, Error, Layer, Mode};

/// Forward, cross-entropy backward: the logits and every parameter gradient.
fn step(net: &mut Sequential<f32>, x: &ArrayD<f32>) -> (ArrayD<f32>, Vec<(String, ArrayD<f32>)>) {
    net.zero_grad();
    let logits = net.forward(x.clone(), Mode::Train).unwrap();
    let targets: Vec<usize> = (0..x.shape()[0]).map(|i| i % 10).collect();
    let l2 = logits.view().into_dimensionality::<Ix2>().unwrap();
    let dlogits = cross_entropy_backward(l2, &targets, 0.0, 1.0).unwrap();
    net.backward(dlogits.into_dyn()).unwrap();
    let mut grads = Vec::new();
    net.visit_mut("", &mut |k, p| grads.push((k.to_string(), p.grad.clone())));
    (logits, grads)
}

/// A step on a fresh network equals, bit for bit, the same step on one that
/// has already run steps with another batch size and other data, and the
/// same step repeated; backward after an eval forward is still an error.
#[test]
fn reused_buffers_give_the_numbers_of_fresh_layers() {
    for (name, make, shape) in
        [("cifar_resnet20", 0usize, [8usize, 3, 32, 32]), ("resnet50", 1, [2, 3, 64, 64])]
    {
        let build = || -> Sequential<f32> {
            let mut rng = seeded_rng(5);
            if make == 0 {
                cifar_resnet(&cnn_models::CifarResNetConfig::new(20), &mut rng).unwrap()
            } else {
                resnet50(10, &mut rng).unwrap()
            }
        };
        let x: ArrayD<f32> = normal(&shape, 0.0, 1.0, &mut seeded_rng(1));
        let mut other_shape = shape;
        other_shape[0] += 3;
        let other: ArrayD<f32> = normal(&other_shape, 0.0, 1.0, &mut seeded_rng(2));

        let fresh = step(&mut build(), &x);
        let mut used = build();
        step(&mut used, &other); // buffers sized and filled for another batch
        used.forward(other.clone(), Mode::Eval).unwrap(); // and eval's folded weights
        let again = step(&mut used, &x);
        assert!(fresh == again, "{name}: after a step of another batch size");
        let third = step(&mut used, &x);
        assert!(fresh == third, "{name}: the same step repeated");

        used.forward(x.clone(), Mode::Train).unwrap();
        let y = used.forward(x.clone(), Mode::Eval).unwrap();
        let err = used.backward(ArrayD::ones(y.raw_dim())).unwrap_err();
        assert!(matches!(err, Error::NoForward { .. }), "{name}: {err}");
    }
}
