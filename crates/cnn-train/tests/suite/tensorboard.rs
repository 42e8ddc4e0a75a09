//! TensorBoard event files: every record's CRCs, the scalars against the
//! history, rising steps, and a run resumed after a stop continuing the
//! stream in a new file without a step twice.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cnn_act::Act;
use cnn_conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d};
use cnn_data::{DataLoader, Dataset, Digits, Subset};
use cnn_nn::{Flatten, Linear, LinearConfig, Sequential};
use cnn_tensor::random::seeded_rng;
use cnn_train::tensorboard::proto::{Event, Kind, What};
use cnn_train::tensorboard::{event_files, read_events};
use cnn_train::{ProgressMode, TrainConfig, Trainer};

fn model() -> Sequential<f32> {
    let mut rng = seeded_rng(3);
    Sequential::new()
        .push(Conv2d::new(Conv2dConfig::new(1, 8, 3).with_padding(1), &mut rng).unwrap())
        .push(Act::relu())
        .push(GlobalAvgPool2d::new())
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(8, 10), &mut rng).unwrap())
}

fn loaders() -> (DataLoader, DataLoader) {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let train: Arc<dyn Dataset> =
        Arc::new(Subset::new(Arc::new(train), (0..256).collect()).unwrap());
    let test: Arc<dyn Dataset> = Arc::new(Subset::new(Arc::new(test), (0..100).collect()).unwrap());
    (
        DataLoader::new(train, 32, 1).unwrap(),
        DataLoader::new(test, 50, 0).unwrap().with_shuffle(false),
    )
}

fn config() -> TrainConfig {
    TrainConfig::default().with_epochs(2).with_lr(0.1).with_seed(5)
}

/// `(step, value)` of every scalar under `tag` in these events.
fn scalars(events: &[Event], tag: &str) -> Vec<(i64, f32)> {
    events
        .iter()
        .filter_map(|e| match &e.what {
            Some(What::Summary(s)) => Some((e.step, s)),
            _ => None,
        })
        .flat_map(|(step, s)| {
            s.value.iter().filter(|v| v.tag == tag).filter_map(move |v| match v.kind {
                Some(Kind::SimpleValue(x)) => Some((step, x)),
                _ => None,
            })
        })
        .collect()
}

fn all_events(dir: &Path) -> Vec<Event> {
    event_files(dir).unwrap().iter().flat_map(|f| read_events(f).unwrap()).collect()
}

#[test]
fn a_run_logs_every_step_and_epoch_with_valid_records() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = loaders();
    let report = Trainer::new(config())
        .with_out_dir(dir.path())
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &train, Some(&val))
        .unwrap();
    let files = event_files(dir.path()).unwrap();
    assert_eq!(files.len(), 1);
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].what, Some(What::FileVersion("brain.Event:2".into())));
    let losses = scalars(&events, "train/loss");
    assert_eq!(losses.len() as u64, report.global_step);
    assert!(losses.windows(2).all(|w| w[1].0 == w[0].0 + 1), "steps rise by one");
    assert_eq!(losses[0].0, 0);
    let epochs = &report.history.epochs;
    let top1 = scalars(&events, "epoch/val_top1");
    let expected: Vec<f32> = epochs.iter().map(|r| r.val_accuracy.unwrap() as f32).collect();
    assert_eq!(top1.iter().map(|s| s.1).collect::<Vec<_>>(), expected);
    let train_loss = scalars(&events, "epoch/train_loss");
    let expected: Vec<f32> = epochs.iter().map(|r| r.train_loss as f32).collect();
    assert_eq!(train_loss.iter().map(|s| s.1).collect::<Vec<_>>(), expected);
    // metrics.csv's column holds the same values.
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "val_accuracy").expect("val_accuracy column");
    let from_csv: Vec<f32> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().parse::<f64>().unwrap() as f32)
        .collect();
    assert_eq!(from_csv, top1.iter().map(|s| s.1).collect::<Vec<_>>());
    assert_eq!(top1[1].0 as u64, report.global_step, "epoch values at the epoch's last step");
    let images = events
        .iter()
        .filter_map(|e| match &e.what {
            Some(What::Summary(s)) => s.value.iter().find(|v| v.tag == "val/confusion"),
            _ => None,
        })
        .count();
    assert_eq!(images, 2, "a confusion image per epoch");

    // A flipped byte is found by its CRC, and named.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    let bad = dir.path().join("events.out.tfevents.bad");
    std::fs::write(&bad, bytes).unwrap();
    let err = read_events(&bad).unwrap_err().to_string();
    assert!(err.contains("CRC does not match"), "{err}");
    // A file cut short (a killed writer) is named as truncated, not a panic.
    let whole = std::fs::read(&files[0]).unwrap();
    std::fs::write(&bad, &whole[..whole.len() - 3]).unwrap();
    let err = read_events(&bad).unwrap_err().to_string();
    assert!(err.contains("truncated record"), "{err}");
}

#[test]
fn a_resumed_run_continues_the_stream_without_a_step_twice() {
    let (train, val) = loaders();
    let whole = tempfile::tempdir().unwrap();
    Trainer::new(config())
        .with_out_dir(whole.path())
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &train, Some(&val))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let raise = flag.clone();
    let stopped = Trainer::new(config())
        .with_out_dir(dir.path())
        .with_stop_flag(flag)
        .with_on_step(move |step, _| {
            if step == 10 {
                raise.store(true, Ordering::SeqCst);
            }
        })
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &train, Some(&val))
        .unwrap();
    assert!(!stopped.completed);
    assert_eq!(stopped.global_step, 12, "the step after the flag is the last");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new file name
    Trainer::new(config())
        .with_out_dir(dir.path())
        .with_resume(true)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &train, Some(&val))
        .unwrap();
    let files = event_files(dir.path()).unwrap();
    assert_eq!(files.len(), 2, "a new file for the resumed run");
    let second = read_events(&files[1]).unwrap();
    assert!(
        second.iter().any(|e| matches!(e.what, Some(What::SessionLog(_))) && e.step == 12),
        "the resumed file marks its first step"
    );
    let resumed = scalars(&all_events(dir.path()), "train/loss");
    let steps: Vec<i64> = resumed.iter().map(|s| s.0).collect();
    assert_eq!(steps, (0..16).collect::<Vec<i64>>(), "every step once, in order");
    // Resume is exact: the same losses as the run that never stopped.
    assert_eq!(resumed, scalars(&all_events(whole.path()), "train/loss"));
}

#[test]
fn no_tensorboard_writes_no_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = loaders();
    Trainer::new(config().with_epochs(1))
        .with_out_dir(dir.path())
        .with_tensorboard(false)
        .with_progress(ProgressMode::Quiet)
        .fit(&mut model(), &train, Some(&val))
        .unwrap();
    assert!(event_files(dir.path()).unwrap().is_empty());
    assert!(dir.path().join("metrics.csv").exists());
}
