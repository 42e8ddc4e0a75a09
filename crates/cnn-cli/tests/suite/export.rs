//! `cnn export` end to end: a run's checkpoint and pretrained weights to an
//! ONNX file whose metadata reads back, and the TensorBoard log `cnn train`
//! leaves (or not, with `--no-tensorboard`).

#![allow(clippy::unwrap_used)]

use crate::common;
use common::*;

#[test]
fn a_trained_run_exports_with_its_normalization_and_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = cnn(&["train", "--epochs", "1", "--out", run.to_str().unwrap(), "-q"], tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let events = cnn_train::tensorboard::event_files(&run).unwrap();
    assert_eq!(events.len(), 1, "cnn train logs for TensorBoard by default");
    let records = cnn_train::tensorboard::read_events(&events[0]).unwrap();
    assert!(records.len() > 20, "per-step scalars: {}", records.len());

    let onnx = tmp.path().join("digits.onnx");
    let o = cnn(
        &["export", "--run", run.to_str().unwrap(), "--onnx", onnx.to_str().unwrap()],
        tmp.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let line = last_line(&o);
    assert!(line.starts_with("exported small (") && line.contains("10 classes"), "{line}");
    let model = cnn_nn::read_onnx(&onnx).unwrap();
    let meta: std::collections::BTreeMap<String, String> = model
        .metadata_props
        .iter()
        .map(|e| (e.key.clone().unwrap(), e.value.clone().unwrap()))
        .collect();
    assert_eq!(meta["arch"], "small");
    assert_eq!(meta["image_size"], "[1,8,8]");
    let classes: Vec<String> = serde_json::from_str(&meta["classes"]).unwrap();
    assert_eq!(classes.len(), 10);
    let mean: Vec<f64> = serde_json::from_str(&meta["mean"]).unwrap();
    assert_eq!(mean.len(), 1);
    fails_with(
        &["export", "--run", tmp.path().to_str().unwrap(), "--onnx", "x.onnx"],
        tmp.path(),
        "last",
    );
    assert!(!tmp.path().join("x.onnx").exists());
}

#[test]
fn no_tensorboard_leaves_no_event_file() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let args = ["train", "--epochs", "1", "--no-tensorboard", "--out", run.to_str().unwrap(), "-q"];
    let o = cnn(&args, tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(cnn_train::tensorboard::event_files(&run).unwrap().is_empty());
}

#[test]
fn pretrained_convnext_weights_export() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = cnn_tensor::random::seeded_rng(0);
    let net = cnn_models::convnext_atto::<f32, _>(7, &mut rng).unwrap();
    let weights = tmp.path().join("atto.safetensors");
    cnn_nn::save_state_dict(&net, &weights, cnn_nn::SaveDtype::F32).unwrap();
    let onnx = tmp.path().join("atto.onnx");
    let args = [
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "--arch",
        "convnext_atto",
        "--image-size",
        "64",
        "--onnx",
        onnx.to_str().unwrap(),
    ];
    let o = cnn(&args, tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(last_line(&o).contains("input `input` [batch, 3, 64, 64]"), "{}", last_line(&o));
    let graph = cnn_nn::read_onnx(&onnx).unwrap().graph.unwrap();
    assert!(graph.node.iter().any(|n| n.name.as_deref() == Some("stages.3.blocks.1.mlp.fc2")));
}
