//! CIFAR ResNets: a whole-network gradient check, keys, the plain twin,
//! freezing under an optimizer, errors.

#![allow(clippy::unwrap_used)]

use cnn_models::{cifar_resnet, CifarResNetConfig, Shortcuts};
use cnn_nn::{count_params, freeze, unfreeze};
use cnn_tensor::gradcheck::{check_layer, GradCheckConfig};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{Layer, Mode};

#[test]
fn a_whole_tiny_resnet_passes_the_gradient_checker() {
    // Depth 8 (one block per stage), widths 2/3/4: every kind of layer,
    // projection shortcuts included, in train mode (batch statistics).
    let mut rng = seeded_rng(1);
    let mut net = cifar_resnet::<f64, _>(
        &CifarResNetConfig::new(8).with_widths([2, 3, 4]).with_num_classes(3),
        &mut rng,
    )
    .unwrap();
    let x = normal(&[3, 3, 8, 8], 0.0, 1.0, &mut rng);
    let cfg = GradCheckConfig { max_entries_per_tensor: 24, ..Default::default() };
    let report = check_layer(&mut net, &x, 5, &cfg).unwrap();
    assert!(report.passed(), "{report}");
    assert!(report.tensors.len() > 20, "input and every parameter tensor are checked");
}

#[test]
fn keys_follow_torchvision_and_the_plain_twin_has_no_shortcuts() {
    let mut rng = seeded_rng(2);
    let mut keys = Vec::new();
    let mut net = cifar_resnet::<f32, _>(&CifarResNetConfig::new(20), &mut rng).unwrap();
    net.visit_mut("", &mut |k, _| keys.push(k.to_string()));
    assert_eq!(
        keys[..6],
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked"
        ]
    );
    assert!(keys.contains(&"layer2.0.downsample.0.weight".to_string()));
    assert!(keys.contains(&"layer3.2.bn2.running_var".to_string()));
    assert_eq!(keys.last().unwrap(), "fc.bias");

    let mut plain = cifar_resnet::<f32, _>(
        &CifarResNetConfig::new(20).with_shortcuts(Shortcuts::Plain),
        &mut rng,
    )
    .unwrap();
    let mut plain_keys = Vec::new();
    plain.visit_mut("", &mut |k, _| plain_keys.push(k.to_string()));
    assert!(plain_keys.iter().all(|k| !k.contains("downsample")));
    let y = plain.forward(normal(&[2, 3, 32, 32], 0.0, 1.0, &mut rng), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[2, 10]);
}

#[test]
fn frozen_parameters_stay_bitwise_and_gather_no_gradient() {
    let mut rng = seeded_rng(3);
    let mut net = cifar_resnet::<f32, _>(
        &CifarResNetConfig::new(8).with_widths([4, 4, 8]).with_num_classes(5),
        &mut rng,
    )
    .unwrap();
    let frozen = freeze(&mut net, "layer1");
    assert!(frozen > 0);
    let before = snapshot(&mut net, "layer1.");
    let mut opt = cnn_optim::Optimizer::new(cnn_optim::Rule::sgd(0.9), 0.1, 1e-4).unwrap();
    for _ in 0..3 {
        let y = net.forward(normal(&[4, 3, 8, 8], 0.0, 1.0, &mut rng), Mode::Train).unwrap();
        net.backward(y).unwrap();
        opt.step(&mut net).unwrap();
        opt.zero_grad(&mut net);
    }
    let after = snapshot(&mut net, "layer1.");
    for ((k, a), (_, b)) in before.iter().zip(&after) {
        if !k.contains("running") && !k.contains("num_batches") {
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{k}"
            );
        }
    }
    let y = net.forward(normal(&[4, 3, 8, 8], 0.0, 1.0, &mut rng), Mode::Train).unwrap();
    net.backward(y).unwrap();
    net.visit_mut("", &mut |k, p| {
        if k.starts_with("layer1.") && !p.buffer {
            assert!(p.grad.iter().all(|&g| g == 0.0), "{k} gathered a gradient while frozen");
        }
    });
    let (total, trainable) = count_params(&net);
    assert!(trainable < total);
    unfreeze(&mut net, "layer1");
    assert_eq!(count_params(&net).1, total);
}

fn snapshot(net: &mut dyn Layer<f32>, prefix: &str) -> Vec<(String, cnn_tensor::ArrayD<f32>)> {
    let mut out = Vec::new();
    net.visit_mut("", &mut |k, p| {
        if k.starts_with(prefix) {
            out.push((k.to_string(), p.value().clone()));
        }
    });
    out
}

#[test]
fn bad_depths_are_errors() {
    let mut rng = seeded_rng(4);
    for depth in [0, 7, 21, 2] {
        assert!(
            cifar_resnet::<f32, _>(&CifarResNetConfig::new(depth), &mut rng).is_err(),
            "depth {depth}"
        );
    }
    assert!(
        cifar_resnet::<f32, _>(&CifarResNetConfig::new(20).with_num_classes(0), &mut rng).is_err()
    );
}

/// A whole ConvNeXt of one block per stage (drop path on, masks fixed) passes the gradient checker in f64.
#[test]
fn a_one_block_per_stage_convnext_passes_the_gradient_checker() {
    use cnn_models::{convnext, ConvNeXtConfig};
    use cnn_tensor::gradcheck::FixedSeed;
    let cfg = ConvNeXtConfig::new(&[1, 1, 1], &[4, 6, 8])
        .with_conv_mlp(true)
        .with_num_classes(3)
        .with_drop_path_rate(0.3);
    let mut net = convnext::<f64, _>(&cfg, &mut seeded_rng(9)).unwrap();
    let mut rng = seeded_rng(3);
    net.visit_mut("", &mut |k, p| {
        if k.ends_with("gamma") {
            let new_value = normal(p.value().shape(), 0.5, 0.2, &mut rng);
            p.set_value(new_value);
        }
    });
    let x = normal(&[2, 3, 32, 32], 0.0, 1.0, &mut seeded_rng(4));
    let gc = GradCheckConfig { max_entries_per_tensor: 6, ..Default::default() };
    let report = check_layer(&mut FixedSeed(net, 7), &x, 5, &gc).unwrap();
    assert!(report.passed(), "{report}");
}
