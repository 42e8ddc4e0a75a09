//! Training in bf16 mixed precision (`TrainConfig::precision`): the same
//! bits on any thread count and at any SIMD level, an exact resume, and
//! checkpoints that stay f32 and load into an f32 model.

#![allow(clippy::unwrap_used)] // test helpers unwrap like the tests themselves

use std::path::Path;
use std::sync::Arc;

use cnn_act::Act;
use cnn_conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d};
use cnn_data::{DataLoader, Dataset, Digits, Subset};
use cnn_nn::{Flatten, Linear, LinearConfig, Sequential};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{random::seeded_rng, with_precision, Layer, Mode, Precision};
use cnn_train::{ProgressMode, TrainConfig, Trainer, TrainerState};

/// Convs wide enough for the packed products and their dW split (16 → 32
/// channels), BatchNorm, and a linear head.
fn model() -> Sequential<f32> {
    let mut rng = seeded_rng(5);
    Sequential::new()
        .push(Conv2d::new(Conv2dConfig::new(1, 16, 3).with_padding(1), &mut rng).unwrap())
        .push(BatchNorm::new_2d(BatchNormConfig::new(16)).unwrap())
        .push(Act::relu())
        .push(Conv2d::new(Conv2dConfig::new(16, 32, 3).with_padding(1), &mut rng).unwrap())
        .push(BatchNorm::new_2d(BatchNormConfig::new(32)).unwrap())
        .push(Act::relu())
        .push(GlobalAvgPool2d::new())
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(32, 10), &mut rng).unwrap())
}

fn data() -> (Arc<dyn Dataset>, Arc<dyn Dataset>) {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let train = Subset::new(Arc::new(train), (0..256).collect()).unwrap();
    let test = Subset::new(Arc::new(test), (0..128).collect()).unwrap();
    (Arc::new(train), Arc::new(test))
}

fn config(precision: Precision) -> TrainConfig {
    TrainConfig::default().with_epochs(2).with_lr(0.1).with_seed(3).with_precision(precision)
}

/// Every parameter's bits after training `config` from the same start.
fn train_bits(config: TrainConfig, dir: Option<&Path>) -> Vec<u32> {
    let (train, val) = data();
    let mut m = model();
    let mut trainer = Trainer::new(config).with_progress(ProgressMode::Quiet);
    if let Some(dir) = dir {
        trainer = trainer.with_out_dir(dir);
    }
    let val = DataLoader::new(val, 64, 0).unwrap().with_shuffle(false);
    trainer.fit(&mut m, &DataLoader::new(train, 32, 1).unwrap(), Some(&val)).unwrap();
    bits(&mut m)
}

fn bits(m: &mut Sequential<f32>) -> Vec<u32> {
    let mut v = Vec::new();
    m.visit_mut("", &mut |_, p| v.extend(p.value().iter().map(|x| x.to_bits())));
    v
}

#[test]
fn bf16_training_is_bitwise_the_same_on_1_2_3_threads() {
    let runs: Vec<Vec<u32>> = [1, 2, 3]
        .iter()
        .map(|&threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| train_bits(config(Precision::Bf16), None))
        })
        .collect();
    assert_eq!(runs[0], runs[1], "1 and 2 threads");
    assert_eq!(runs[0], runs[2], "1 and 3 threads");
    // The precision engaged: f32 from the same start ends elsewhere.
    assert_ne!(runs[0], train_bits(config(Precision::F32), None));
}

/// A bf16 run stopped after its first epoch and resumed equals the unbroken
/// run bit for bit, and the precision is read back from its trainer.json.
#[test]
fn a_bf16_run_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = train_bits(config(Precision::Bf16), Some(&tmp.path().join("whole")));
    let (train, _) = data();
    let dir = tmp.path().join("split");
    Trainer::new(config(Precision::Bf16))
        .with_out_dir(&dir)
        .with_progress(ProgressMode::Quiet)
        .with_on_epoch_end(|r| r.epoch < 1)
        .fit(&mut model(), &DataLoader::new(train.clone(), 32, 1).unwrap(), None)
        .unwrap();
    let state = TrainerState::read(&dir.join("last")).unwrap();
    assert_eq!(state.config.precision, Precision::Bf16, "recorded in trainer.json");
    let resumed = train_bits_resumed(state.config, &dir);
    assert_eq!(resumed, whole);
}

fn train_bits_resumed(config: TrainConfig, dir: &Path) -> Vec<u32> {
    let (train, val) = data();
    let mut m = model();
    let val = DataLoader::new(val, 64, 0).unwrap().with_shuffle(false);
    Trainer::new(config)
        .with_out_dir(dir)
        .with_resume(true)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut m, &DataLoader::new(train, 32, 1).unwrap(), Some(&val))
        .unwrap();
    bits(&mut m)
}

/// A bf16 run's checkpoint holds f32 tensors, loads strictly into a fresh
/// f32 model (its floats are f32), and that model's f32 logits are within the bound of the same
/// model's bf16 logits (2⁻⁵ of the largest logit; bf16 inputs move each
/// product by at most 2⁻⁷ of itself, and the network's sums stay well
/// inside that), with the same top-1 on at least 95% of the images.
#[test]
fn a_bf16_checkpoint_loads_into_an_f32_model() {
    let tmp = tempfile::tempdir().unwrap();
    train_bits(config(Precision::Bf16), Some(tmp.path()));
    let file = tmp.path().join("last").join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in st.tensors() {
        // BatchNorm's step counter is an integer, as in PyTorch.
        if !name.ends_with("num_batches_tracked") {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        }
    }
    let mut m = model();
    cnn_nn::load_state_dict(&mut m, &file, cnn_nn::LoadMode::Strict).unwrap();
    let (_, val) = data();
    let batch = DataLoader::new(val, 128, 0).unwrap().with_shuffle(false).batch(0, 0).unwrap();
    let x = batch.images.into_dyn();
    let f32_logits = m.forward(x.clone(), Mode::Eval).unwrap();
    let bf16_logits = with_precision(Precision::Bf16, || m.forward(x, Mode::Eval)).unwrap();
    let scale = f32_logits.iter().fold(0f32, |s, v| s.max(v.abs()));
    let worst = f32_logits.iter().zip(&bf16_logits).fold(0f32, |w, (a, b)| w.max((a - b).abs()));
    assert!(worst > 0.0, "the bf16 forward rounds");
    assert!(worst <= scale / 32.0, "logits differ by {worst} of {scale}");
    let top = |l: &cnn_tensor::ArrayD<f32>| -> Vec<usize> {
        l.outer_iter()
            .map(|r| {
                r.iter().enumerate().fold(0, |best, (i, &v)| if v > r[best] { i } else { best })
            })
            .collect()
    };
    let same = top(&f32_logits).iter().zip(top(&bf16_logits)).filter(|(a, b)| **a == *b).count();
    assert!(same * 100 >= 95 * 128, "top-1 agrees on {same} of 128");
}

/// The bf16 run at every SIMD level this CPU has (`CNN_SIMD` caps it, so
/// `avx2` on a CPU with AVX512-BF16 runs the portable path) gives the same
/// bits: each level's child writes its parameters' bits, compared here.
#[test]
fn every_simd_level_trains_the_same_bf16_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for level in cnn_tensor::simd::levels() {
        let file = tmp.path().join(level.name());
        let path = file.to_str().unwrap();
        cnn_tensor::simd::rerun_tests(
            "bf16_bits_at_this_level",
            &[("CNN_SIMD", level.name()), ("CNN_BF16_BITS", path)],
        )
        .unwrap();
        digests.push((level.name(), std::fs::read(&file).unwrap()));
    }
    for (name, d) in &digests[1..] {
        assert!(*d == digests[0].1, "level {name} differs from {}", digests[0].0);
    }
}

/// The child of [`every_simd_level_trains_the_same_bf16_bits`]: writes the
/// trained bits where `CNN_BF16_BITS` says (nothing when run by itself).
#[test]
fn bf16_bits_at_this_level() {
    let Some(path) = std::env::var_os("CNN_BF16_BITS") else {
        return;
    };
    let bits = train_bits(config(Precision::Bf16), None);
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}
