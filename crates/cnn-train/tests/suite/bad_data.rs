//! Image folders with unreadable files, through the Trainer: a file that
//! goes bad while a run reads it ends the run with its name (or is left out
//! under `BadSamples::Skip`), and a folder with 1% unreadable images trains
//! under skip to the accuracy of the clean folder.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cnn_data::{stratified_split, BadSamples, DataLoader, Dataset, Digits, ImageFolder, SkipLog};
use cnn_nn::{Flatten, Linear, LinearConfig, Sequential};
use cnn_tensor::random::seeded_rng;
use cnn_train::{evaluate, ProgressMode, TrainConfig, Trainer};

/// The first `n` digits (all 1797 with `n` past that) as 8×8 gray PNGs in `root/<digit>/`.
fn digits_folder(root: &Path, n: usize) -> Vec<PathBuf> {
    let d = Digits::load().unwrap();
    let mut files = Vec::new();
    for i in 0..n.min(d.len()) {
        let (img, label) = d.get(i).unwrap();
        let dir = root.join(label.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let png = image::GrayImage::from_fn(8, 8, |x, y| {
            image::Luma([(img[[0, y as usize, x as usize]] * 255.0).round() as u8])
        });
        let path = dir.join(format!("{i:04}.png"));
        png.save(&path).unwrap();
        files.push(path);
    }
    files
}

fn model() -> Sequential<f32> {
    let mut rng = seeded_rng(3);
    Sequential::new()
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(3 * 64, 10), &mut rng).unwrap())
}

/// Train and test loaders over a folder: a stratified 80/20 split.
fn loaders(root: &Path, bad: &BadSamples) -> (DataLoader, DataLoader) {
    let all: Arc<dyn Dataset> = Arc::new(ImageFolder::new(root, [8, 8]).unwrap());
    let (train, test) = stratified_split(all, 0.2, 0).unwrap();
    let train = DataLoader::new(Arc::new(train), 32, 0).unwrap().with_bad_samples(bad.clone());
    let test = DataLoader::new(Arc::new(test), 256, 0)
        .unwrap()
        .with_shuffle(false)
        .with_bad_samples(bad.clone());
    (train, test)
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig::default().with_epochs(epochs).with_lr(0.05)
}

#[test]
fn a_file_that_goes_bad_during_a_run_is_named_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let files = digits_folder(tmp.path(), 200);
    // Truncated after the first epoch (a copy cut short), and another replaced by text.
    let (cut, replaced) = (files[17].clone(), files[120].clone());
    let spoil = move |r: &cnn_train::EpochRecord| {
        if r.epoch == 1 {
            let bytes = std::fs::read(&cut).unwrap();
            std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
            std::fs::write(&replaced, b"<html>404 Not Found</html>").unwrap();
        }
        true
    };

    let (train, test) = loaders(tmp.path(), &BadSamples::Fail);
    let e = Trainer::new(config(3))
        .with_progress(ProgressMode::Quiet)
        .with_on_epoch_end(spoil.clone())
        .fit(&mut model(), &train, Some(&test))
        .unwrap_err()
        .to_string();
    let named = |p: &Path| e.contains(&p.display().to_string());
    assert!(named(&files[17]) || named(&files[120]), "{e}");
    assert!(e.contains("samples read before it"), "{e}");

    // The same, read again from the start, under skip.
    digits_folder(tmp.path(), 200);
    let log = Arc::new(SkipLog::new());
    let (train, test) = loaders(tmp.path(), &BadSamples::Skip(log.clone()));
    let report = Trainer::new(config(3))
        .with_progress(ProgressMode::Quiet)
        .with_on_epoch_end(spoil)
        .fit(&mut model(), &train, Some(&test))
        .unwrap();
    assert!(report.completed);
    let skipped: Vec<String> = log.entries().into_iter().map(|(s, _)| s).collect();
    let mut expected = vec![files[17].display().to_string(), files[120].display().to_string()];
    expected.sort();
    assert_eq!(skipped, expected);
}

/// The target: 1% of the images unreadable, trained under skip, ends
/// at the clean folder's accuracy within noise (both scored on the clean
/// folder's test split).
#[test]
fn one_percent_unreadable_trains_to_the_clean_accuracy() {
    cnn_tensor::untrusted::quiet_contained_panics();
    let tmp = tempfile::tempdir().unwrap();
    let (clean, dirty) = (tmp.path().join("clean"), tmp.path().join("dirty"));
    digits_folder(&clean, 1797);
    let files = digits_folder(&dirty, 1797);
    // 18 files (1%), spread over the classes, spoiled three ways.
    for (k, f) in files.iter().step_by(100).enumerate() {
        let bytes = std::fs::read(f).unwrap();
        match k % 3 {
            0 => std::fs::write(f, &bytes[..bytes.len() / 3]).unwrap(),
            1 => std::fs::write(f, b"").unwrap(),
            _ => std::fs::write(f, cnn_test_support::images::panicking_jpeg()).unwrap(),
        }
    }
    let (_, clean_test) = loaders(&clean, &BadSamples::Fail);
    let mut accuracy = Vec::new();
    for root in [&clean, &dirty] {
        let log = Arc::new(SkipLog::new());
        let (train, _) = loaders(root, &BadSamples::Skip(log.clone()));
        let mut m = model();
        let report = Trainer::new(config(8))
            .with_progress(ProgressMode::Quiet)
            .fit(&mut m, &train, None)
            .unwrap();
        assert!(report.completed);
        accuracy.push((evaluate(&mut m, &clean_test).unwrap().accuracy, log.len()));
    }
    eprintln!(
        "clean: {:.2}% ({} skipped); 1% unreadable: {:.2}% ({} skipped)",
        100.0 * accuracy[0].0,
        accuracy[0].1,
        100.0 * accuracy[1].0,
        accuracy[1].1
    );
    assert_eq!(accuracy[0].1, 0);
    // The spoiled files that fell in the training split (the split is stratified, seeded).
    assert!((10..=18).contains(&accuracy[1].1), "{}", accuracy[1].1);
    assert!(accuracy[0].0 > 0.9, "{}", accuracy[0].0);
    assert!((accuracy[0].0 - accuracy[1].0).abs() <= 0.015, "{accuracy:?}");
}
