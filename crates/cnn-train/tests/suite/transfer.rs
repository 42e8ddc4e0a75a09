//! Transfer learning: digits 0–4 → 5–9 with ten images per class (figures
//! against a random-feature probe and training from scratch; a probe leaves
//! the backbone bitwise as loaded), torchvision-keyed checkpoints as found in the
//! wild (prefix, bf16/f16, a new head, clear errors), and freezing that
//! really freezes (eval-mode forward, backward stopping at the boundary).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use cnn_data::{DataLoader, Dataset, Digits, TensorDataset};
use cnn_models::{resnet18, small_cnn};
use cnn_nn::{freeze, load_state_dict, save_state_dict, unfreeze, SaveDtype, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_tensor::{random::seeded_rng, ArrayD, Layer, Mode, Param, Result};
use cnn_train::{
    compute_gradients, evaluate, extract_features, frozen_prefix, load_pretrained,
    set_transfer_mode, FeatureHead, PretrainedOptions, ProgressMode, ScheduleKind, TrainConfig,
    Trainer, TransferMode,
};
use safetensors::{tensor::TensorView, Dtype};

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|d| d.to_string()).collect()
}

/// Digits `lo..lo+5` as classes 0–4, and at most `per_class` of each.
fn digits_of(split: &dyn Dataset, lo: usize, per_class: usize) -> TensorDataset {
    let mut seen = [0usize; 5];
    TensorDataset::collect(split, names(lo..lo + 5), |l| {
        let c = l.checked_sub(lo).filter(|&c| c < 5)?;
        seen[c] += 1;
        (seen[c] <= per_class).then_some(c)
    })
    .unwrap()
}

fn net(seed: u64) -> Sequential<f32> {
    small_cnn(1, [8, 8], 5, &mut seeded_rng(seed)).unwrap()
}

fn fit(model: &mut dyn Layer<f32>, train: &DataLoader, config: TrainConfig) {
    Trainer::new(config).with_progress(ProgressMode::Quiet).fit(model, train, None).unwrap();
}

fn values(model: &mut dyn Layer<f32>, skip: &str) -> Vec<(String, ArrayD<f32>)> {
    let mut v = Vec::new();
    model.visit_mut("", &mut |k, p| {
        if !k.starts_with(skip) {
            v.push((k.to_string(), p.value().clone()));
        }
    });
    v
}

#[test]
fn transfer_from_digits_0_to_4_to_5_to_9_with_fifty_images() {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("digits0to4.safetensors");
    let mut pre = net(1);
    let source = DataLoader::new(Arc::new(digits_of(&train, 0, usize::MAX)), 64, 0).unwrap();
    fit(&mut pre, &source, TrainConfig::default().with_epochs(8));
    save_state_dict(&pre, &weights, SaveDtype::F32).unwrap();

    let few = Arc::new(digits_of(&train, 5, 10));
    assert_eq!(few.len(), 50);
    let target = DataLoader::new(few, 10, 0).unwrap();
    let held_out = DataLoader::new(Arc::new(digits_of(&test, 5, usize::MAX)), 256, 0)
        .unwrap()
        .with_shuffle(false);
    let recipe = TrainConfig::default()
        .with_epochs(30)
        .with_lr(0.05)
        .with_weight_decay(1e-4)
        .with_schedule(ScheduleKind::Cosine);

    let mut scratch = net(2);
    fit(&mut scratch, &target, recipe.clone());
    let scratch_acc = evaluate(&mut scratch, &held_out).unwrap().accuracy;

    // A linear probe of the same network untrained: what the pretraining adds.
    let mut random = net(2);
    set_transfer_mode(&mut random, &TransferMode::LinearProbe, "fc").unwrap();
    fit(&mut random, &target, recipe.clone());
    let random_acc = evaluate(&mut random, &held_out).unwrap().accuracy;

    let mut probe = net(2);
    let report = load_pretrained(&mut probe, &weights, 5, &PretrainedOptions::default()).unwrap();
    assert_eq!(report.head, "fc");
    assert_eq!(report.skipped.len(), 2, "{report}");
    let heads = set_transfer_mode(&mut probe, &TransferMode::LinearProbe, &report.head).unwrap();
    assert_eq!(heads, ["fc"]);
    let loaded = values(&mut probe, "fc.");
    fit(&mut probe, &target, recipe.clone());
    assert_eq!(
        values(&mut probe, "fc."),
        loaded,
        "a linear probe must leave the backbone (parameters and BatchNorm buffers) bitwise as loaded"
    );
    let probe_acc = evaluate(&mut probe, &held_out).unwrap().accuracy;

    let mut tuned = net(2);
    load_pretrained(&mut tuned, &weights, 5, &PretrainedOptions::default()).unwrap();
    let heads = set_transfer_mode(&mut tuned, &TransferMode::Finetune, "fc").unwrap();
    fit(&mut tuned, &target, recipe.with_head(heads).with_backbone_lr_mult(0.1));
    let tuned_acc = evaluate(&mut tuned, &held_out).unwrap().accuracy;

    // Measured with these seeds on the 178 held-out images of 5–9: a probe of
    // the untrained network 48.6%, linear probe 57.0%, fine-tune (backbone at
    // 0.1× the lr) 82.7%, training from scratch 93.9% (before the kernel
    // issue's rounding changes: 48.6, 59.8, 84.9, 93.9; one image is 0.56%). On 8×8 digits fifty
    // images are enough to train this network from scratch, and features
    // learned to tell 0–4 apart carry only part of the way to 5–9 (the issue
    // asked for transfer to beat scratch here: it does not; see docs/transfer.md).
    // What holds: pretrained features beat random ones (by 5 points: 9
    // images), fine-tuning beats the probe (by 10), and neither is near
    // chance (20%).
    println!("random probe {random_acc:.4}, linear probe {probe_acc:.4}, fine-tune {tuned_acc:.4}, scratch {scratch_acc:.4}");
    assert!(probe_acc > random_acc + 0.05, "probe {probe_acc} vs random features {random_acc}");
    assert!(tuned_acc > probe_acc + 0.1, "fine-tune {tuned_acc} vs probe {probe_acc}");
    assert!(scratch_acc > 0.85, "scratch {scratch_acc}");
}

/// Writes `model`'s tensors under `prefix` + key, as bf16 (or f32 for `num_batches_tracked`, as i64).
fn save_bf16(model: &mut dyn Layer<f32>, path: &Path, prefix: &str, drop: &str) {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    model.visit_mut("", &mut |k, p| {
        if k == drop {
            return;
        }
        let (dtype, bytes): (Dtype, Vec<u8>) = if k.ends_with("num_batches_tracked") {
            (Dtype::I64, p.value().iter().flat_map(|&v| (v as i64).to_le_bytes()).collect())
        } else {
            (
                Dtype::BF16,
                p.value().iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
            )
        };
        tensors.push((format!("{prefix}{k}"), dtype, p.value().shape().to_vec(), bytes));
    });
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_torchvision_resnet18_checkpoint_loads_with_a_new_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = resnet18::<f32, _>(1000, &mut seeded_rng(0)).unwrap();
    // As PyTorch saves it: torchvision's keys, fc [1000, 512]; here also
    // wrapped by DataParallel (`module.`) and stored in bf16.
    let wild = dir.path().join("resnet18_dp_bf16.safetensors");
    save_bf16(&mut source, &wild, "module.", "");
    let mut model = resnet18::<f32, _>(7, &mut seeded_rng(1)).unwrap();
    let report = load_pretrained(&mut model, &wild, 7, &PretrainedOptions::default()).unwrap();
    assert_eq!(report.stripped_prefix, Some(("module.".to_string(), true)));
    assert_eq!(report.converted, [("BF16".to_string(), 102)]);
    assert_eq!(report.head, "fc");
    assert_eq!(report.loaded, 122 - 2, "resnet18 has 122 tensors, the head 2: {report}");
    let why: Vec<&str> = report.skipped.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(why, ["fc.bias", "fc.weight"]);
    assert!(
        report.skipped[1].1.contains("[1000, 512] (1000 classes); the new head is [7, 512]"),
        "{}",
        report.skipped[1].1
    );
    let mut want = std::collections::HashMap::new();
    source.visit_mut("", &mut |k, p| {
        want.insert(k.to_string(), p.value().mapv(|v| f32::from_bits(v.to_bits() & 0xffff_0000)));
    });
    model.visit_mut("", &mut |k, p| {
        if k.starts_with("fc.") {
            assert_eq!(p.value().shape()[0], 7, "{k}");
        } else {
            assert_eq!(p.value(), want[k], "{k}");
        }
    });
    let x = cnn_tensor::random::normal(&[1, 3, 64, 64], 0.0, 1.0, &mut seeded_rng(2));
    assert_eq!(model.forward(x, Mode::Eval).unwrap().shape(), [1, 7]);

    // Plain loading never replaces a head: the shapes must match.
    let plain = dir.path().join("resnet18.safetensors");
    save_state_dict(&source, &plain, SaveDtype::F32).unwrap();
    let e = load_state_dict(
        &mut resnet18::<f32, _>(7, &mut seeded_rng(1)).unwrap(),
        &plain,
        cnn_nn::LoadMode::Strict,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("fc.weight: model [7, 512], file [1000, 512]"), "{e}");
    assert!(load_pretrained(
        &mut resnet18(7, &mut seeded_rng(1)).unwrap(),
        &plain,
        7,
        &PretrainedOptions::default()
    )
    .is_ok());

    // A missing backbone key is named; nothing else is loaded.
    let holed = dir.path().join("holed.safetensors");
    save_bf16(&mut source, &holed, "", "layer3.1.bn2.running_var");
    let e = load_pretrained(
        &mut resnet18(7, &mut seeded_rng(1)).unwrap(),
        &holed,
        7,
        &PretrainedOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing keys: layer3.1.bn2.running_var"), "{e}");

    // A forced prefix that no key has, and a rename map.
    let e = load_pretrained(
        &mut resnet18(7, &mut seeded_rng(1)).unwrap(),
        &wild,
        7,
        &PretrainedOptions::default().with_strip_prefix("model."),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no key of") && e.contains("starts with the prefix \"model.\""), "{e}");
    let renamed = PretrainedOptions::default()
        .with_strip_prefix("module.")
        .with_rename(vec![("module.layer1.".into(), "module.stage1.".into())]);
    let mut r = resnet18(7, &mut seeded_rng(1)).unwrap();
    let e = load_pretrained(&mut r, &wild, 7, &renamed).unwrap_err().to_string();
    assert!(e.contains("unexpected keys: stage1.0.bn1.bias"), "{e}");
}

/// A layer that records the modes it ran in and counts its backward calls.
struct Spy {
    log: Arc<Mutex<(Vec<Mode>, usize)>>,
    weight: Param<f32>,
}

impl Layer<f32> for Spy {
    fn forward(&mut self, x: ArrayD<f32>, mode: Mode) -> Result<ArrayD<f32>> {
        self.log.lock().unwrap().0.push(mode);
        Ok(x)
    }
    fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        self.log.lock().unwrap().1 += 1;
        Ok(dy)
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<f32>)) {
        f(&cnn_tensor::join_key(prefix, "w"), &mut self.weight);
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<f32>)) {
        f(&cnn_tensor::join_key(prefix, "w"), &self.weight);
    }
}

#[test]
fn frozen_layers_run_in_eval_mode_and_backward_stops_at_them() {
    let log = Arc::new(Mutex::new((Vec::new(), 0)));
    let spy = Spy { log: log.clone(), weight: Param::new(ArrayD::zeros(ndarray::IxDyn(&[1]))) };
    let mut model = Sequential::new()
        .push_named("spy", spy)
        .push_named("backbone", small_cnn::<f32, _>(1, [8, 8], 16, &mut seeded_rng(0)).unwrap())
        .push_named("fc", Linear::new(LinearConfig::new(16, 5), &mut seeded_rng(1)).unwrap());
    let x = cnn_tensor::random::normal(&[8, 1, 8, 8], 0.0, 1.0, &mut seeded_rng(2));
    let labels = [0, 1, 2, 3, 4, 0, 1, 2];
    freeze(&mut model, "spy");
    freeze(&mut model, "backbone");
    assert_eq!(frozen_prefix(&mut model), 2);
    let stats_before = values(&mut model, "fc.");
    compute_gradients(&mut model, x.clone(), &labels, &cnn_train::CrossEntropy::default(), 0, 0)
        .unwrap();
    assert_eq!(*log.lock().unwrap(), (vec![Mode::Eval], 0), "frozen: eval mode, no backward");
    assert_eq!(values(&mut model, "fc."), stats_before, "BatchNorm statistics moved");
    // Frozen parameters but trainable ones before them: the middle runs in
    // train mode for its gradient, yet its frozen BatchNorms keep their statistics.
    unfreeze(&mut model, "spy");
    assert_eq!(frozen_prefix(&mut model), 0);
    compute_gradients(&mut model, x, &labels, &cnn_train::CrossEntropy::default(), 0, 1).unwrap();
    assert_eq!(*log.lock().unwrap(), (vec![Mode::Eval, Mode::Train], 1));
    let backbone = |v: Vec<(String, ArrayD<f32>)>| -> Vec<(String, ArrayD<f32>)> {
        v.into_iter().filter(|(k, _)| k.starts_with("backbone")).collect()
    };
    assert_eq!(backbone(values(&mut model, "fc.")), backbone(stats_before));
}

#[test]
fn a_cached_linear_probe_matches_the_uncached_one() {
    let (train, _) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let data = Arc::new(digits_of(&train, 0, 30));
    let loader = DataLoader::new(data.clone(), 16, 0).unwrap();
    let config = TrainConfig::default().with_epochs(3).with_lr(0.05);
    let run = |cached: bool| {
        let mut model = net(0);
        set_transfer_mode(&mut model, &TransferMode::LinearProbe, "fc").unwrap();
        let k = frozen_prefix(&mut model);
        assert_eq!(k, 3, "features, avgpool and flatten are frozen");
        if cached {
            let in_order = loader.over(data.clone()).with_shuffle(false);
            let (features, shape) = extract_features(&mut model, k, &in_order).unwrap();
            assert_eq!(shape, [64]);
            let floader = DataLoader::new(Arc::new(features), 16, 0).unwrap();
            fit(&mut FeatureHead::new(&mut model, k, shape), &floader, config.clone());
        } else {
            fit(&mut model, &loader, config.clone());
        }
        values(&mut model, "")
    };
    let (cached, plain) = (run(true), run(false));
    for ((k, a), (_, b)) in cached.iter().zip(&plain) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{k}: {x} vs {y}");
        }
    }
}

#[test]
fn the_boundary_reaches_inside_the_first_trainable_child() {
    // As `partial --trainable layer4.1,fc` leaves a ResNet: the first child
    // of a stage frozen, the second trained.
    let log = Arc::new(Mutex::new((Vec::new(), 0)));
    let spy = Spy { log: log.clone(), weight: Param::new(ArrayD::zeros(ndarray::IxDyn(&[1]))) };
    let stage = Sequential::new()
        .push_named("spy", spy)
        .push_named("net", small_cnn::<f32, _>(1, [8, 8], 16, &mut seeded_rng(0)).unwrap());
    // An empty Sequential is the identity: a stem with nothing to train.
    let mut model = Sequential::new()
        .push_named("stem", Sequential::<f32>::new())
        .push_named("stage", stage)
        .push_named("fc", Linear::new(LinearConfig::new(16, 5), &mut seeded_rng(1)).unwrap());
    freeze(&mut model, "stage.spy");
    assert_eq!(cnn_train::frozen_boundary(&mut model), [1, 1]);
    let x = cnn_tensor::random::normal(&[8, 1, 8, 8], 0.0, 1.0, &mut seeded_rng(2));
    compute_gradients(
        &mut model,
        x,
        &[0, 1, 2, 3, 4, 0, 1, 2],
        &cnn_train::CrossEntropy::default(),
        0,
        0,
    )
    .unwrap();
    assert_eq!(*log.lock().unwrap(), (vec![Mode::Eval], 0));
    let mut grads = 0.0;
    model.visit_mut("", &mut |k, p| {
        if k.starts_with("stage.net") && !p.buffer {
            grads += p.grad.iter().map(|g| g.abs()).sum::<f32>();
        }
    });
    assert!(grads > 0.0, "the trained part after the boundary gets its gradient");
    unfreeze(&mut model, "");
    assert_eq!(cnn_train::frozen_boundary(&mut model), [1]);
}

/// A residual block is not a chain: a partly frozen block is trained whole
/// (frozen parameters just get no update), never run child by child, which
/// would apply the projection to the main branch's output and drop the sum.
#[test]
fn the_boundary_does_not_enter_a_residual_block() {
    let rng = &mut seeded_rng(3);
    let mut model = Sequential::<f32>::new()
        .push_named("block", cnn_nn::BasicBlock::new(2, 4, 2, rng).unwrap())
        .push_named("pool", cnn_conv::GlobalAvgPool2d::new())
        .push_named("flatten", cnn_nn::Flatten::new())
        .push_named("fc", Linear::new(LinearConfig::new(4, 3), rng).unwrap());
    freeze(&mut model, "block.conv1");
    freeze(&mut model, "block.bn1");
    assert_eq!(cnn_train::frozen_boundary(&mut model), [0]);
    let x = cnn_tensor::random::normal(&[4, 2, 6, 6], 0.0, 1.0, &mut seeded_rng(4));
    let stats = compute_gradients(
        &mut model,
        x.clone(),
        &[0, 1, 2, 0],
        &cnn_train::CrossEntropy::default(),
        0,
        0,
    )
    .unwrap();
    let logits = model.forward(x, Mode::Train).unwrap();
    let (loss, _) = cnn_tensor::cross_entropy(&logits, &[0, 1, 2, 0], 0.0).unwrap();
    assert_eq!(stats.loss, f64::from(loss), "the step ran the block as a block");
}

#[test]
fn a_timm_convnext_checkpoint_loads_with_a_new_head() {
    use cnn_models::convnext_atto;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convnext_atto.safetensors");
    let source = convnext_atto::<f32, _>(1000, &mut seeded_rng(0)).unwrap();
    save_state_dict(&source, &path, SaveDtype::F32).unwrap();
    let mut model = convnext_atto::<f32, _>(7, &mut seeded_rng(1)).unwrap();
    let report = load_pretrained(&mut model, &path, 7, &PretrainedOptions::default()).unwrap();
    assert_eq!(report.head, "head.fc");
    assert_eq!(report.loaded, 128 - 2, "{report}");
    set_transfer_mode(&mut model, &TransferMode::LinearProbe, &report.head).unwrap();
    // The frozen boundary: stem, stages, and the head's pool and norm run in eval mode.
    assert_eq!(cnn_train::frozen_boundary(&mut model), [2, 3]);
    let x = cnn_tensor::random::normal(&[2, 3, 32, 32], 0.0, 1.0, &mut seeded_rng(2));
    let before = values(&mut model, "head.fc");
    compute_gradients(&mut model, x, &[0, 6], &cnn_train::CrossEntropy::default(), 0, 0).unwrap();
    assert_eq!(values(&mut model, "head.fc"), before);
}
