//! Checkpoints survive failed writes and crashes, and bad files are refused by name.

#![allow(clippy::unwrap_used)] // test helpers unwrap like the tests themselves

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cnn_data::{DataLoader, Digits};
use cnn_nn::{Flatten, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_optim::{Optimizer, Rule};
use cnn_tensor::{random::seeded_rng, Error, Layer};
use cnn_train::checkpoint::{replace_dir_atomic, PartialEpoch};
use cnn_train::{
    find_checkpoint, load_checkpoint, save_checkpoint, ProgressMode, TrainConfig, Trainer,
    TrainerState,
};

fn model(width: usize) -> Sequential<f32> {
    let mut rng = seeded_rng(0);
    Sequential::new()
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(64, width), &mut rng).unwrap())
}

/// Sets every parameter to `v`, so a checkpoint's version can be read back from any tensor.
fn fill(m: &mut Sequential<f32>, v: f32) {
    m.visit_mut("", &mut |_, p| p.value_mut().fill(v));
}

fn state(step: u64) -> TrainerState {
    let mut s =
        TrainerState::new(TrainConfig::default(), 10, 3, serde_json::json!({"who": "test"}));
    s.global_step = step;
    s.partial = PartialEpoch { loss_sum: 1.5, correct: 3, seen: 4, train_seconds: 0.25 };
    s
}

fn optimizer() -> Optimizer<f32> {
    Optimizer::new(Rule::sgd(0.9), 0.1, 0.0).unwrap()
}

/// Loads `run`'s last checkpoint and checks it is one consistent version:
/// every value equals the step recorded in trainer.json.
fn load_consistent(run: &Path, width: usize) -> u64 {
    let dir = find_checkpoint(run, "last").unwrap();
    let mut m = model(width);
    let st = load_checkpoint(&dir, &mut m, &mut optimizer()).unwrap();
    m.visit_mut("", &mut |k, p| {
        assert!(
            p.value().iter().all(|&v| v == st.global_step as f32),
            "{k} is not version {}",
            st.global_step
        )
    });
    st.global_step
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = model(3);
    fill(&mut m, 1.0);
    save_checkpoint(tmp.path(), "last", &m, &optimizer(), &state(1)).unwrap();
    // The next write dies after half of the model file.
    let err = replace_dir_atomic(tmp.path(), "last", |dir| {
        std::fs::write(dir.join("model.safetensors"), vec![7u8; 100]).unwrap();
        Err(Error::io("write", "model.safetensors", std::io::Error::other("disk full (simulated)")))
    })
    .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(load_consistent(tmp.path(), 3), 1);
    // The half-written staging directory is gone at once: its space is given back.
    assert!(!tmp.path().join(".last.tmp").exists());
    // The next good write cleans up the half-written staging directory.
    fill(&mut m, 2.0);
    save_checkpoint(tmp.path(), "last", &m, &optimizer(), &state(2)).unwrap();
    assert_eq!(load_consistent(tmp.path(), 3), 2);
    assert!(!tmp.path().join(".last.tmp").exists());
    assert!(!tmp.path().join(".last.old").exists());
}

#[test]
fn a_crash_between_the_renames_falls_back_to_the_old_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = model(3);
    fill(&mut m, 5.0);
    save_checkpoint(tmp.path(), "last", &m, &optimizer(), &state(5)).unwrap();
    // The state a crash right after "rename aside" leaves behind.
    std::fs::rename(tmp.path().join("last"), tmp.path().join(".last.old")).unwrap();
    assert_eq!(find_checkpoint(tmp.path(), "last").unwrap(), tmp.path().join(".last.old"));
    assert_eq!(load_consistent(tmp.path(), 3), 5);
    fill(&mut m, 6.0);
    save_checkpoint(tmp.path(), "last", &m, &optimizer(), &state(6)).unwrap();
    assert_eq!(load_consistent(tmp.path(), 3), 6);
}

#[test]
fn trainer_state_round_trips_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = state(42);
    s.partial.loss_sum = 0.1 + 0.2;
    s.best_val_accuracy = Some(1.0 / 3.0);
    let m = model(3);
    save_checkpoint(tmp.path(), "last", &m, &optimizer(), &s).unwrap();
    assert_eq!(TrainerState::read(&tmp.path().join("last")).unwrap(), s);
}

fn corrupt(run: &Path, file: &str, how: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let path = run.join("last").join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    how(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn truncated_or_corrupt_files_are_refused_by_name() {
    for (file, truncate) in [
        ("model.safetensors", true),
        ("model.safetensors", false),
        ("optimizer.safetensors", true),
        ("trainer.json", true),
        ("trainer.json", false),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = model(3);
        let mut opt = optimizer();
        m.visit_mut("", &mut |_, p| p.grad.fill(1.0));
        opt.step(&mut m).unwrap();
        save_checkpoint(tmp.path(), "last", &m, &opt, &state(1)).unwrap();
        let path = corrupt(tmp.path(), file, |b| {
            if truncate {
                b.truncate(b.len() / 2);
            } else {
                b[..8].copy_from_slice(b"garbage!");
            }
        });
        let e =
            load_checkpoint(&tmp.path().join("last"), &mut model(3), &mut optimizer()).unwrap_err();
        assert!(
            e.to_string().contains(&path.display().to_string()),
            "{file} (truncated: {truncate}): {e}"
        );
    }
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    save_checkpoint(tmp.path(), "last", &model(3), &optimizer(), &state(1)).unwrap();
    let e = load_checkpoint(&tmp.path().join("last"), &mut model(4), &mut optimizer()).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert!(e.to_string().contains("[4, 64]"), "{e}");
}

const CHILD_ENV: &str = "CNN_TRAIN_CHECKPOINT_CHILD";

/// Run by `killed_writers_leave_a_loadable_checkpoint` in a child process:
/// writes checkpoint versions 1, 2, 3, … of a 1M-parameter model until killed.
#[test]
#[ignore = "a helper: runs only as the child of killed_writers_leave_a_loadable_checkpoint"]
fn checkpoint_writer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let mut m = model(16_384);
    let started = Instant::now();
    for step in 1.. {
        fill(&mut m, step as f32);
        save_checkpoint(Path::new(&dir), "last", &m, &optimizer(), &state(step)).unwrap();
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
}

#[test]
fn killed_writers_leave_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut versions = Vec::new();
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "checkpoint::checkpoint_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, tmp.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for a first checkpoint of this round, then kill at an arbitrary point of a later write.
        let before = versions.last().copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while find_checkpoint(tmp.path(), "last")
            .ok()
            .and_then(|d| TrainerState::read(&d).ok())
            .map_or(0, |s| s.global_step)
            <= before
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(13 * round + 7));
        child.kill().unwrap();
        child.wait().unwrap();
        versions.push(load_consistent(tmp.path(), 16_384));
    }
    assert!(versions.iter().all(|&v| v >= 1), "{versions:?}");
}

#[test]
fn the_guard_stops_an_absurd_learning_rate_and_keeps_the_last_checkpoint() {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let train = DataLoader::new(Arc::new(train), 64, 0).unwrap();
    let test = DataLoader::new(Arc::new(test), 256, 0).unwrap().with_shuffle(false);
    let tmp = tempfile::tempdir().unwrap();
    let mut m = model(10);
    Trainer::new(TrainConfig::default().with_epochs(1).with_lr(0.05))
        .with_out_dir(tmp.path())
        .with_progress(ProgressMode::Quiet)
        .fit(&mut m, &train, Some(&test))
        .unwrap();
    let good = std::fs::read(tmp.path().join("last/model.safetensors")).unwrap();

    let e = Trainer::new(
        TrainConfig::default().with_lr(1e4).with_schedule(cnn_train::ScheduleKind::Constant),
    )
    .with_out_dir(tmp.path())
    .with_progress(ProgressMode::Quiet)
    .fit(&mut m, &train, Some(&test))
    .unwrap_err();
    let Error::Diverged { step, .. } = &e else { panic!("not a divergence: {e}") };
    assert!(*step < 5, "tripped only at step {step}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("training diverged at step {step}: the loss")), "{text}");
    assert!(text.contains("lower the learning rate"), "{text}");
    assert_eq!(std::fs::read(tmp.path().join("last/model.safetensors")).unwrap(), good);
    let st = load_checkpoint(&tmp.path().join("last"), &mut model(10), &mut optimizer_for_resume())
        .unwrap();
    assert_eq!(st.epoch, 1);
}

fn optimizer_for_resume() -> Optimizer<f32> {
    TrainConfig::default().build_optimizer().unwrap()
}

/// A fault in the run directory: `.last.tmp` made a regular file, so the
/// next checkpoint write fails (its staging directory cannot be made), as a
/// full disk would make it fail.
fn block_checkpoints(run: &Path) {
    std::fs::write(run.join(".last.tmp"), b"in the way").unwrap();
}

/// Two runs' `last/` model and optimizer files are the same bytes.
fn assert_same_tensors(a: &Path, b: &Path) {
    for file in ["last/model.safetensors", "last/optimizer.safetensors"] {
        let read = |run: &Path| std::fs::read(run.join(file)).unwrap();
        assert_eq!(read(a), read(b), "{file} of {} and {}", a.display(), b.display());
    }
}

fn digits_loaders() -> (DataLoader, DataLoader) {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let train = DataLoader::new(Arc::new(train), 64, 0).unwrap();
    let test = DataLoader::new(Arc::new(test), 256, 0).unwrap().with_shuffle(false);
    (train, test)
}

fn four_epochs() -> Trainer {
    Trainer::new(TrainConfig::default().with_epochs(4).with_lr(0.05))
        .with_progress(ProgressMode::Quiet)
}

#[test]
fn a_checkpoint_that_cannot_be_written_is_retried_after_the_next_epoch() {
    let (train, test) = digits_loaders();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    four_epochs().with_out_dir(&whole).fit(&mut model(10), &train, Some(&test)).unwrap();

    // Epochs 2 and 3 cannot write; the fault is gone before epoch 4's write.
    let faulty = tmp.path().join("faulty");
    let dir = faulty.clone();
    let report = four_epochs()
        .with_out_dir(&faulty)
        .with_on_epoch_end(move |r| {
            match r.epoch {
                1 => block_checkpoints(&dir),
                3 => std::fs::remove_file(dir.join(".last.tmp")).unwrap(),
                _ => {}
            }
            true
        })
        .fit(&mut model(10), &train, Some(&test))
        .unwrap();
    assert!(report.completed);
    // The run trained on through the failures: the same weights and optimizer
    // state bitwise, the same place in the run and the same best accuracy.
    assert_same_tensors(&faulty, &whole);
    let (a, b) = (
        TrainerState::read(&faulty.join("last")).unwrap(),
        TrainerState::read(&whole.join("last")).unwrap(),
    );
    assert_eq!(
        (a.epoch, a.global_step, a.best_val_accuracy),
        (b.epoch, b.global_step, b.best_val_accuracy)
    );
    assert_eq!(a.history.len(), 4);
    assert!(!faulty.join(".last.tmp").exists());
}

#[test]
fn a_last_checkpoint_that_cannot_be_written_fails_the_run_and_keeps_the_one_before() {
    let (train, test) = digits_loaders();
    let tmp = tempfile::tempdir().unwrap();
    // What epoch 1's checkpoint holds, from a run stopped there.
    let one = tmp.path().join("one");
    four_epochs()
        .with_out_dir(&one)
        .with_on_epoch_end(|_| false)
        .fit(&mut model(10), &train, Some(&test))
        .unwrap();

    let full = tmp.path().join("full");
    let dir = full.clone();
    let e = four_epochs()
        .with_out_dir(&full)
        .with_on_epoch_end(move |r| {
            if r.epoch == 1 {
                block_checkpoints(&dir);
            }
            true
        })
        .fit(&mut model(10), &train, Some(&test))
        .unwrap_err()
        .to_string();
    assert!(e.contains(".last.tmp"), "{e}");
    assert!(
        e.contains("the checkpoint of epoch 4 could not be written; the last checkpoint written is epoch 1"),
        "{e}"
    );
    // Epoch 1's checkpoint is intact and loads bitwise.
    let st =
        load_checkpoint(&full.join("last"), &mut model(10), &mut optimizer_for_resume()).unwrap();
    assert_eq!(st.epoch, 1);
    assert_same_tensors(&full, &one);
    // The metrics went on being written: all four epochs are there.
    let csv = std::fs::read_to_string(full.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
}

#[test]
fn metrics_that_cannot_be_written_do_not_lose_the_model() {
    let (train, test) = digits_loaders();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    four_epochs().with_out_dir(&whole).fit(&mut model(10), &train, Some(&test)).unwrap();
    // metrics.csv cannot be replaced: a non-empty directory stands in its place.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(run.join("metrics.csv/in-the-way")).unwrap();
    let report = four_epochs().with_out_dir(&run).fit(&mut model(10), &train, Some(&test)).unwrap();
    assert!(report.completed);
    assert_same_tensors(&run, &whole);
    assert_eq!(TrainerState::read(&run.join("last")).unwrap().history.len(), 4);
    assert!(run.join("curves.png").is_file());
    // Nothing half-written is left beside it.
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
