//! Our torchvision models produce exactly the `state_dict` of torchvision:
//! the keys, shapes and dtypes in tests/parity/torchvision_state_dicts.json,
//! in order. (The manifest also lists vgg11, vgg16_bn and alexnet, which
//! this workspace does not build yet.)

#![allow(clippy::unwrap_used)]

use std::path::Path;

use cnn::models::{resnet18, resnet34, resnet50};
use cnn::nn::Sequential;
use cnn::tensor::random::seeded_rng;
use cnn::tensor::Layer;

type Build = fn() -> Sequential<f64>;

#[test]
fn models_match_torchvision_state_dicts() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/torchvision_state_dicts.json");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let models: [(&str, Build); 3] = [
        ("resnet18", || resnet18(1000, &mut seeded_rng(0)).unwrap()),
        ("resnet34", || resnet34(1000, &mut seeded_rng(0)).unwrap()),
        ("resnet50", || resnet50(1000, &mut seeded_rng(0)).unwrap()),
    ];
    for (name, build) in models {
        let want: Vec<(String, Vec<usize>, String)> = manifest[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let shape =
                    e[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                (e[0].as_str().unwrap().to_string(), shape, e[2].as_str().unwrap().to_string())
            })
            .collect();
        let mut got = Vec::new();
        build().visit("", &mut |key, p| {
            let dtype = if key.ends_with("num_batches_tracked") { "int64" } else { "float64" };
            got.push((key.to_string(), p.value.shape().to_vec(), dtype.to_string()));
        });
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
fn resnet18_runs_end_to_end() {
    use cnn::tensor::{random::normal, Mode};
    let mut net = resnet18::<f32, _>(1000, &mut seeded_rng(1)).unwrap();
    let y = net.forward(normal(&[2, 3, 64, 64], 0.0, 1.0, &mut seeded_rng(2)), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[2, 1000]);
    assert!(y.iter().all(|v| v.is_finite()));
    assert_eq!(cnn::nn::count_params(&mut net).0, 11_689_512);
}

#[test]
fn bottleneck_resnets_have_torchvisions_sizes() {
    use cnn::models::{resnet101, resnet152};
    use cnn::tensor::{random::normal, Mode};
    let mut r50 = resnet50::<f32, _>(1000, &mut seeded_rng(1)).unwrap();
    assert_eq!(cnn::nn::count_params(&mut r50).0, 25_557_032);
    let y = r50.forward(normal(&[1, 3, 64, 64], 0.0, 1.0, &mut seeded_rng(2)), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[1, 1000]);
    assert_eq!(
        cnn::nn::count_params(&mut resnet101::<f32, _>(1000, &mut seeded_rng(1)).unwrap()).0,
        44_549_160
    );
    assert_eq!(
        cnn::nn::count_params(&mut resnet152::<f32, _>(1000, &mut seeded_rng(1)).unwrap()).0,
        60_192_808
    );
}
