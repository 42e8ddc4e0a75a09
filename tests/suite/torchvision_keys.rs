//! Our torchvision models produce exactly the `state_dict` of torchvision:
//! the keys, shapes and dtypes in tests/parity/torchvision_state_dicts.json,
//! in order, for every model the manifest lists; and timm's ResNets and
//! ConvNeXts (tests/parity/timm_state_dicts.json) have ours, so their
//! safetensors files load as they are.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use cnn::models::{alexnet, resnet18, resnet34, resnet50, vgg, VggConfig};
use cnn::nn::Sequential;
use cnn::tensor::random::seeded_rng;
use cnn::tensor::Layer;

type Build = fn() -> Sequential<f32>;

/// `(key, shape, dtype)` of each tensor of a manifest entry.
fn manifest_entry(manifest: &serde_json::Value, name: &str) -> Vec<(String, Vec<usize>, String)> {
    manifest[name]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape =
                e[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (e[0].as_str().unwrap().to_string(), shape, e[2].as_str().unwrap().to_string())
        })
        .collect()
}

/// `(key, shape, dtype)` of each tensor of our model, as PyTorch would save it.
fn ours(mut model: Sequential<f32>) -> Vec<(String, Vec<usize>, String)> {
    let mut got = Vec::new();
    model.visit_mut("", &mut |key, p| {
        let dtype = if key.ends_with("num_batches_tracked") { "int64" } else { "float64" };
        got.push((key.to_string(), p.value().shape().to_vec(), dtype.to_string()));
    });
    got
}

fn read_manifest(file: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn models_match_torchvision_state_dicts() {
    let manifest = read_manifest("torchvision_state_dicts.json");
    let models: [(&str, Build); 6] = [
        ("resnet18", || resnet18(1000, &mut seeded_rng(0)).unwrap()),
        ("resnet34", || resnet34(1000, &mut seeded_rng(0)).unwrap()),
        ("resnet50", || resnet50(1000, &mut seeded_rng(0)).unwrap()),
        ("vgg11", || vgg(&VggConfig::new(11), &mut seeded_rng(0)).unwrap()),
        ("vgg16_bn", || {
            vgg(&VggConfig::new(16).with_batch_norm(true), &mut seeded_rng(0)).unwrap()
        }),
        ("alexnet", || alexnet(1000, &mut seeded_rng(0)).unwrap()),
    ];
    let names: Vec<&str> = models.iter().map(|m| m.0).collect();
    let listed: Vec<&String> = manifest.as_object().unwrap().keys().collect();
    assert!(
        listed.iter().all(|k| names.contains(&k.as_str())),
        "a manifest model without a builder: {listed:?}"
    );
    for (name, build) in models {
        let (got, want) = (ours(build()), manifest_entry(&manifest, name));
        assert_eq!(
            got.len(),
            want.len(),
            "{name}: {} tensors, torchvision has {}",
            got.len(),
            want.len()
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{name}");
        }
    }
}

#[test]
fn timm_models_have_our_keys_and_sizes() {
    let manifest = read_manifest("timm_state_dicts.json");
    use cnn::models::{convnext_atto, convnext_femto, convnext_nano, convnext_tiny};
    let models: [(&str, Build); 6] = [
        ("resnet18", || resnet18(1000, &mut seeded_rng(0)).unwrap()),
        ("resnet50", || resnet50(1000, &mut seeded_rng(0)).unwrap()),
        ("convnext_atto", || convnext_atto(1000, &mut seeded_rng(0)).unwrap()),
        ("convnext_femto", || convnext_femto(1000, &mut seeded_rng(0)).unwrap()),
        ("convnext_nano", || convnext_nano(1000, &mut seeded_rng(0)).unwrap()),
        ("convnext_tiny", || convnext_tiny(1000, &mut seeded_rng(0)).unwrap()),
    ];
    for name in manifest.as_object().unwrap().keys() {
        assert!(models.iter().any(|m| m.0 == name), "a timm model without a builder: {name}");
    }
    for (name, build) in models {
        assert_eq!(ours(build()), manifest_entry(&manifest, name), "{name}");
    }
    // timm's parameter counts.
    let count = |b: Build| cnn::nn::count_params(&b()).0;
    assert_eq!(count(|| convnext_atto(1000, &mut seeded_rng(0)).unwrap()), 3_695_520);
    assert_eq!(count(|| convnext_tiny(1000, &mut seeded_rng(0)).unwrap()), 28_589_128);
}

#[test]
fn resnet18_runs_end_to_end() {
    use cnn::tensor::{random::normal, Mode};
    let mut net = resnet18::<f32, _>(1000, &mut seeded_rng(1)).unwrap();
    let y = net.forward(normal(&[2, 3, 64, 64], 0.0, 1.0, &mut seeded_rng(2)), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[2, 1000]);
    assert!(y.iter().all(|v| v.is_finite()));
    assert_eq!(cnn::nn::count_params(&net).0, 11_689_512);
}

#[test]
fn bottleneck_resnets_have_torchvisions_sizes() {
    use cnn::models::{resnet101, resnet152};
    use cnn::tensor::{random::normal, Mode};
    let mut r50 = resnet50::<f32, _>(1000, &mut seeded_rng(1)).unwrap();
    assert_eq!(cnn::nn::count_params(&r50).0, 25_557_032);
    let y = r50.forward(normal(&[1, 3, 64, 64], 0.0, 1.0, &mut seeded_rng(2)), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[1, 1000]);
    assert_eq!(
        cnn::nn::count_params(&resnet101::<f32, _>(1000, &mut seeded_rng(1)).unwrap()).0,
        44_549_160
    );
    assert_eq!(
        cnn::nn::count_params(&resnet152::<f32, _>(1000, &mut seeded_rng(1)).unwrap()).0,
        60_192_808
    );
}

#[test]
fn classic_models_run_and_have_torchvisions_sizes() {
    use cnn::tensor::{random::normal, Mode};
    let mut a = alexnet::<f32, _>(1000, &mut seeded_rng(1)).unwrap();
    assert_eq!(cnn::nn::count_params(&a).0, 61_100_840);
    let y = a.forward(normal(&[1, 3, 224, 224], 0.0, 1.0, &mut seeded_rng(2)), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[1, 1000]);
    let mut v =
        vgg::<f32, _>(&VggConfig::new(11).with_num_classes(10), &mut seeded_rng(1)).unwrap();
    let y = v.forward(normal(&[1, 3, 32, 32], 0.0, 1.0, &mut seeded_rng(2)), Mode::Train).unwrap();
    assert_eq!(y.shape(), &[1, 10]);
    assert!(vgg::<f32, _>(&VggConfig::new(12), &mut seeded_rng(1)).is_err());
}

#[test]
fn zero_init_residual_and_summary() {
    use cnn::models::{cifar_resnet, zero_init_residual, CifarResNetConfig};
    use cnn::nn::summary;
    let mut r50 = resnet50::<f32, _>(10, &mut seeded_rng(3)).unwrap();
    assert_eq!(zero_init_residual(&mut r50), 16, "one bn3 per Bottleneck");
    let mut r18 = resnet18::<f32, _>(10, &mut seeded_rng(3)).unwrap();
    assert_eq!(zero_init_residual(&mut r18), 8, "one bn2 per BasicBlock");
    r18.visit_mut("", &mut |k, p| {
        if k == "layer1.0.bn2.weight" {
            assert!(p.value().iter().all(|&v| v == 0.0));
        }
        if k == "layer1.0.bn1.weight" {
            assert!(p.value().iter().all(|&v| v == 1.0));
        }
    });

    let mut net = cifar_resnet::<f32, _>(&CifarResNetConfig::new(20), &mut seeded_rng(4)).unwrap();
    let (rows, text) = summary(&mut net, &[1, 3, 32, 32]).unwrap();
    let row = |key: &str| rows.iter().find(|r| r.key == key).unwrap();
    assert_eq!(row("conv1").kind, "Conv2d");
    assert_eq!(row("conv1").output_shape, vec![1, 16, 32, 32]);
    assert_eq!(row("layer2").output_shape, vec![1, 32, 16, 16]);
    assert_eq!(row("layer3.2").kind, "BasicBlock");
    // Summaries descend into residual blocks: both branches, with their shapes.
    assert_eq!(row("layer3.2.conv1").kind, "Conv2d");
    assert_eq!(row("layer3.2.bn2").output_shape, vec![1, 64, 8, 8]);
    assert_eq!(row("layer2.0.downsample").output_shape, vec![1, 32, 16, 16]);
    assert_eq!(row("layer2.0.downsample.0").params, 16 * 32);
    assert_eq!(row("fc").output_shape, vec![1, 10]);
    assert_eq!(row("fc").params, 650);
    assert_eq!(row("(model)").params, 272_474);
    assert!(
        text.contains("Total params: 272474") && text.contains("Trainable params: 272474"),
        "{text}"
    );
}

#[test]
fn a_nested_head_can_be_replaced() {
    use cnn::nn::{Linear, LinearConfig};
    use cnn::tensor::{random::normal, Mode};
    let mut net = alexnet::<f32, _>(1000, &mut seeded_rng(5)).unwrap();
    net.replace(
        "classifier.6",
        Linear::new(LinearConfig::new(4096, 5), &mut seeded_rng(6)).unwrap(),
    )
    .unwrap();
    let y =
        net.forward(normal(&[1, 3, 224, 224], 0.0, 1.0, &mut seeded_rng(7)), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[1, 5]);
    let e = net.replace("classifier.9", cnn::nn::Flatten::new()).err().unwrap().to_string();
    assert!(e.contains("no child named \"9\""), "{e}");
    let e = net.replace("avgpool.0", cnn::nn::Flatten::new()).err().unwrap().to_string();
    assert!(e.contains("has no child"), "{e}");
}
