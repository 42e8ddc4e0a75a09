//! A run stopped and resumed is bitwise the run that never stopped: every
//! parameter and buffer, the optimizer state, and the metrics rows.

#![allow(clippy::unwrap_used)] // test helpers unwrap like the tests themselves

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cnn_act::{Act, Dropout};
use cnn_augment::{Compose, PadMode, RandomCrop};
use cnn_conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d};
use cnn_data::{DataLoader, Dataset, Digits, Subset};
use cnn_nn::{Flatten, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{random::seeded_rng, Layer, Result};
use cnn_train::{EpochRecord, ProgressMode, TrainConfig, Trainer};
use ndarray::Array3;

/// A small net with every kind of state: conv, BatchNorm (running stats), dropout (per-step masks).
fn model() -> Sequential<f32> {
    let mut rng = seeded_rng(7);
    Sequential::new()
        .push(Conv2d::new(Conv2dConfig::new(1, 8, 3).with_padding(1), &mut rng).unwrap())
        .push(BatchNorm::new_2d(BatchNormConfig::new(8)).unwrap())
        .push(Act::relu())
        .push(GlobalAvgPool2d::new())
        .push(Flatten::new())
        .push(Dropout::new(0.3, 1).unwrap())
        .push(Linear::new(LinearConfig::new(8, 10), &mut rng).unwrap())
}

/// Wraps a dataset and sets `flag` the first time `trigger` is read: the
/// trainer then stops after the step whose batch holds it, mid-epoch.
struct StopWhenRead {
    inner: Arc<dyn Dataset>,
    trigger: usize,
    armed: AtomicBool,
    flag: Arc<AtomicBool>,
}

impl Dataset for StopWhenRead {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        if index == self.trigger && self.armed.swap(false, Ordering::SeqCst) {
            self.flag.store(true, Ordering::SeqCst);
        }
        self.inner.get(index)
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
}

fn data() -> (Arc<dyn Dataset>, Arc<dyn Dataset>) {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let train = Subset::new(Arc::new(train), (0..300).collect()).unwrap();
    let test = Subset::new(Arc::new(test), (0..100).collect()).unwrap();
    (Arc::new(train), Arc::new(test))
}

fn loader(d: Arc<dyn Dataset>) -> DataLoader {
    let crop = Compose::new().then(RandomCrop::new([8, 8], 1, PadMode::Constant(0.0)).unwrap());
    DataLoader::new(d, 32, 3).unwrap().with_transform(Arc::new(crop))
}

fn config() -> TrainConfig {
    TrainConfig::default().with_epochs(4).with_lr(0.2).with_label_smoothing(0.1).with_seed(11)
}

/// Every tensor of the model, and every optimizer state tensor, as raw bits.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let bytes = std::fs::read(dir.join("last").join(f)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            out.insert(format!("{f}:{name}"), view.data().to_vec());
        }
    }
    out
}

fn rows(h: &[EpochRecord]) -> Vec<EpochRecord> {
    h.iter().map(EpochRecord::without_timings).collect()
}

fn in_memory_bits(m: &mut Sequential<f32>) -> Vec<(String, Vec<u32>)> {
    let mut v = Vec::new();
    m.visit_mut("", &mut |k, p| {
        v.push((k.to_string(), p.value().iter().map(|x| x.to_bits()).collect()))
    });
    v
}

#[test]
fn resumed_runs_equal_the_unbroken_run_bitwise() {
    let (train, val) = data();
    let val_loader = DataLoader::new(val.clone(), 64, 0).unwrap().with_shuffle(false);
    let tmp = tempfile::tempdir().unwrap();

    // The run that never stops.
    let whole_dir = tmp.path().join("whole");
    let mut whole = model();
    let report = Trainer::new(config())
        .with_out_dir(&whole_dir)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut whole, &loader(train.clone()), Some(&val_loader))
        .unwrap();
    assert!(report.completed);
    assert_eq!(report.history.epochs.len(), 4);
    assert_eq!(report.global_step, 4 * 10);
    let last = report.history.epochs[3].clone();
    assert!(last.train_loss < report.history.epochs[0].train_loss, "it learns: {last:?}");

    // Stopped after epoch 2 by a callback, then resumed in a new process-like fresh state.
    let split_dir = tmp.path().join("split");
    let mut first = model();
    let r1 = Trainer::new(config())
        .with_out_dir(&split_dir)
        .with_progress(ProgressMode::Quiet)
        .with_on_epoch_end(|r| r.epoch < 2)
        .fit(&mut first, &loader(train.clone()), Some(&val_loader))
        .unwrap();
    assert!(!r1.completed);
    assert_eq!(r1.history.epochs.len(), 2);
    let mut resumed = model();
    let r2 = Trainer::new(config())
        .with_out_dir(&split_dir)
        .with_resume(true)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut resumed, &loader(train.clone()), Some(&val_loader))
        .unwrap();
    assert!(r2.completed);
    assert_eq!(rows(&r2.history.epochs), rows(&report.history.epochs));
    assert_eq!(in_memory_bits(&mut resumed), in_memory_bits(&mut whole));
    assert_eq!(snapshot(&split_dir), snapshot(&whole_dir));

    // Stopped by the stop flag (as Ctrl-C does) in the middle of epoch 2 and
    // right after its last batch, then resumed.
    for (position, batch) in [(150, 5), (295, 10)] {
        let dir = tmp.path().join(format!("stop{position}"));
        let flag = Arc::new(AtomicBool::new(false));
        // The sample at `position` of epoch 2's order sits in batch `batch` (of 10, from 1).
        let trigger = loader(train.clone()).order(1)[position];
        let armed: Arc<dyn Dataset> = Arc::new(StopWhenRead {
            inner: train.clone(),
            trigger,
            armed: AtomicBool::new(true),
            flag: flag.clone(),
        });
        // Epoch 1 runs with the plain data, so the trigger can only fire in epoch 2.
        Trainer::new(config())
            .with_out_dir(&dir)
            .with_progress(ProgressMode::Quiet)
            .with_on_epoch_end(|r| r.epoch < 1)
            .fit(&mut model(), &loader(train.clone()), Some(&val_loader))
            .unwrap();
        let r = Trainer::new(config())
            .with_out_dir(&dir)
            .with_resume(true)
            .with_stop_flag(flag)
            .with_progress(ProgressMode::Quiet)
            .fit(&mut model(), &loader(armed), Some(&val_loader))
            .unwrap();
        assert!(!r.completed);
        let state = cnn_train::TrainerState::read(&dir.join("last")).unwrap();
        assert_eq!(state.epoch, 1, "stopped inside the second epoch");
        assert_eq!(state.batch, batch, "stopped after the step of batch {batch}");
        assert!(state.partial.seen > 0);
        let mut m = model();
        let r = Trainer::new(config())
            .with_out_dir(&dir)
            .with_resume(true)
            .with_progress(ProgressMode::Quiet)
            .fit(&mut m, &loader(train.clone()), Some(&val_loader))
            .unwrap();
        assert!(r.completed);
        assert_eq!(rows(&r.history.epochs), rows(&report.history.epochs), "stopped at {position}");
        assert_eq!(snapshot(&dir), snapshot(&whole_dir), "stopped at {position}");
    }
}

#[test]
fn resume_refuses_another_config_or_batch_size() {
    let (train, _) = data();
    let tmp = tempfile::tempdir().unwrap();
    let mut m = model();
    Trainer::new(config().with_epochs(1))
        .with_out_dir(tmp.path())
        .with_progress(ProgressMode::Quiet)
        .fit(&mut m, &loader(train.clone()), None)
        .unwrap();
    let e = Trainer::new(config().with_epochs(1).with_lr(0.3))
        .with_out_dir(tmp.path())
        .with_resume(true)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &loader(train.clone()), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("was trained with another config"), "{e}");
    let other_batches = DataLoader::new(train, 50, 3).unwrap();
    let e = Trainer::new(config().with_epochs(1))
        .with_out_dir(tmp.path())
        .with_resume(true)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &other_batches, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ran 10 batches per epoch, this loader gives 6"), "{e}");
    let other_seed = DataLoader::new(data().0, 32, 4).unwrap();
    let e = Trainer::new(config().with_epochs(1))
        .with_out_dir(tmp.path())
        .with_resume(true)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &other_seed, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("drew its batches with loader seed 3, this loader has 4"), "{e}");
    let e = Trainer::new(config())
        .with_out_dir(tmp.path().join("nothing"))
        .with_resume(true)
        .fit(&mut model(), &loader(data().0), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a directory"), "{e}");
}
