//! The tuning recipe's steps on small budgets: a sound model passes steps 1
//! and 2, a broken logit scale fails step 1, shuffled labels fail step 2,
//! step 3 picks a rate that trains, step 6 reads synthetic curves right, and
//! the whole recipe writes the same report twice.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cnn_data::{DataLoader, Dataset, Digits, TensorDataset};
use cnn_models::small_cnn;
use cnn_nn::Sequential;
use cnn_tensor::{random::seeded_rng, ArrayD, Layer, Mode, Param, Result};
use cnn_train::tune::{
    check_initial_loss, lr_sweep, overfit_sample, read_curves, CurveKind, CurveRules,
};
use cnn_train::{Budget, EpochRecord, History, TrainConfig, TuneConfig, TuneData, Tuner, Verdict};
use rand::seq::SliceRandom;

/// Multiplies its input by a constant: a logit scale gone wrong.
struct Scale(f32);

impl Layer<f32> for Scale {
    fn forward(&mut self, x: ArrayD<f32>, _mode: Mode) -> Result<ArrayD<f32>> {
        Ok(x * self.0)
    }
    fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        Ok(dy * self.0)
    }
    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<f32>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<f32>)) {}
}

fn model(seed: u64) -> Box<dyn Layer<f32>> {
    Box::new(small_cnn::<f32, _>(1, [8, 8], 10, &mut seeded_rng(seed)).unwrap())
}

fn digits() -> (Arc<dyn Dataset>, Arc<dyn Dataset>) {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    (Arc::new(train), Arc::new(test))
}

fn data(train: Arc<dyn Dataset>, val: Arc<dyn Dataset>) -> TuneData {
    TuneData {
        train: DataLoader::new(train.clone(), 64, 0).unwrap(),
        plain: DataLoader::new(train, 64, 0).unwrap(),
        val: DataLoader::new(val, 256, 0).unwrap().with_shuffle(false),
    }
}

fn small() -> TuneConfig {
    TuneConfig::for_budget(Budget::Small)
}

#[test]
fn a_sound_model_passes_steps_one_and_two() {
    let (train, _) = digits();
    let plain = DataLoader::new(train, 64, 0).unwrap();
    let (step1, loss) = check_initial_loss(&mut *model(0), &plain, 10, &small()).unwrap();
    assert_eq!(step1.verdict, Verdict::Pass, "{}", step1.summary);
    assert!((loss - 10f64.ln()).abs() < 0.25 * 10f64.ln(), "{loss}");
    let (step2, losses) = overfit_sample(&mut *model(0), &plain, &small(), None).unwrap();
    assert_eq!(step2.verdict, Verdict::Pass, "{}", step2.summary);
    assert!(*losses.last().unwrap() <= 0.05 && losses.len() < 150, "{losses:?}");
}

#[test]
fn a_broken_logit_scale_fails_step_one_naming_the_causes() {
    let (train, _) = digits();
    let plain = DataLoader::new(train, 64, 0).unwrap();
    let mut broken = Sequential::new().push_boxed(model(0)).push(Scale(100.0));
    let (step1, loss) = check_initial_loss(&mut broken, &plain, 10, &small()).unwrap();
    assert_eq!(step1.verdict, Verdict::Fail);
    assert!(loss > 10.0, "{loss}");
    assert!(
        step1.summary.contains("above: the untrained network is confidently wrong"),
        "{}",
        step1.summary
    );
    for cause in ["the labels", "the loss", "the init scale", "a ReLU"] {
        assert!(step1.next.contains(cause), "{}", step1.next);
    }
}

#[test]
fn shuffled_labels_fail_step_two_pointing_at_the_usual_causes() {
    let (train, _) = digits();
    let mut labels: Vec<usize> = (0..train.len()).map(|i| train.label(i).unwrap()).collect();
    labels.shuffle(&mut seeded_rng(3));
    let classes = train.classes().to_vec();
    let mut it = labels.into_iter();
    let shuffled = TensorDataset::collect(&*train, classes, |_| it.next()).unwrap();
    let plain = DataLoader::new(Arc::new(shuffled), 64, 0).unwrap();
    let config = small().with_overfit_samples(100);
    let (step2, losses) = overfit_sample(&mut *model(0), &plain, &config, None).unwrap();
    assert_eq!(step2.verdict, Verdict::Fail, "{}", step2.summary);
    // A 66k-parameter network memorizes 100 random labels about as fast as
    // true ones: what fails is the held-out check (no better than chance).
    assert!(*losses.last().unwrap() <= config.overfit_loss, "{losses:?}");
    assert!(step2.summary.contains("memorized labels that do not belong"), "{}", step2.summary);
    assert!(step2.next.starts_with("Look at preprocessing: labels shuffled"), "{}", step2.next);
    // The same sample with its true labels passes within the same budget.
    let (train, _) = digits();
    let ok = overfit_sample(&mut *model(0), &DataLoader::new(train, 64, 0).unwrap(), &config, None);
    assert_eq!(ok.unwrap().0.verdict, Verdict::Pass);
}

#[test]
fn a_network_that_cannot_learn_fails_step_two_pointing_at_capacity_and_optimization() {
    // Logits scaled by 1e-4: the gradients vanish, the loss stays near ln C.
    let (train, _) = digits();
    let plain = DataLoader::new(train, 64, 0).unwrap();
    let mut stuck = Sequential::new().push_boxed(model(0)).push(Scale(1e-4));
    let config = small();
    let (step2, losses) = overfit_sample(&mut stuck, &plain, &config, None).unwrap();
    assert_eq!(step2.verdict, Verdict::Fail);
    assert_eq!(losses.len(), config.overfit_steps);
    assert!(step2.summary.contains("cannot memorize"), "{}", step2.summary);
    for cause in ["capacity", "optimization", "preprocessing"] {
        assert!(step2.next.contains(cause), "{}", step2.next);
    }
}

#[test]
fn step_three_picks_a_rate_that_trains() {
    let (train, _) = digits();
    let loader = DataLoader::new(train, 64, 0).unwrap();
    let config = small().with_lr_candidates(vec![10.0, 1e-1, 1e-4]);
    let mut factory = |seed: u64| Ok(model(seed));
    let (step3, pick, curves) =
        lr_sweep(&mut factory, &loader, &TrainConfig::default(), &config, None).unwrap();
    assert_eq!(pick, Some(1e-1), "{}", step3.table);
    assert_eq!(step3.verdict, Verdict::Pass);
    let by = |lr: f64| curves.iter().find(|c| c.lr == lr).unwrap();
    assert!(by(1e-1).drop() >= 0.3 && by(1e-1).stable);
    // lr 10 with momentum blows up; lr 1e-4 barely moves in 50 iterations.
    assert!(!by(10.0).stable || by(10.0).drop() < 0.3, "{:?}", by(10.0).smoothed);
    assert!(by(1e-4).drop() < 0.3);
}

fn record(epoch: usize, train: (f64, f64), val: (f64, f64)) -> EpochRecord {
    EpochRecord {
        epoch,
        train_loss: train.0,
        train_accuracy: train.1,
        val_loss: Some(val.0),
        val_accuracy: Some(val.1),
        val_top5: None,
        lr: 0.1,
        seconds: 1.0,
        images_per_second: 1.0,
    }
}

/// `(loss, accuracy)` of training and validation for one epoch.
type Epoch = ((f64, f64), (f64, f64));

fn history(rows: &[Epoch]) -> History {
    History { epochs: rows.iter().enumerate().map(|(i, &(t, v))| record(i + 1, t, v)).collect() }
}

#[test]
fn step_six_reads_synthetic_curves() {
    let rules = CurveRules::default();
    let healthy = history(&[
        ((1.5, 0.5), (1.2, 0.6)),
        ((0.6, 0.8), (0.5, 0.82)),
        ((0.3, 0.9), (0.3, 0.9)),
        ((0.2, 0.94), (0.22, 0.93)),
    ]);
    assert_eq!(read_curves(&healthy, &rules).kind, CurveKind::Healthy);
    let widening = history(&[
        ((1.0, 0.7), (0.9, 0.7)),
        ((0.5, 0.85), (0.6, 0.8)),
        ((0.2, 0.95), (0.7, 0.82)),
        ((0.05, 0.99), (0.9, 0.83)),
    ]);
    let r = read_curves(&widening, &rules);
    assert_eq!(r.kind, CurveKind::Overfitting, "{r:?}");
    assert!(
        r.evidence.iter().any(|e| e.contains("gap"))
            && r.evidence.iter().any(|e| e.contains("rose"))
    );
    let flat_low = history(&[
        ((2.0, 0.3), (2.0, 0.3)),
        ((1.9, 0.35), (1.95, 0.33)),
        ((1.88, 0.36), (1.94, 0.34)),
        ((1.87, 0.365), (1.93, 0.345)),
        ((1.87, 0.366), (1.93, 0.346)),
        ((1.86, 0.367), (1.93, 0.347)),
    ]);
    assert_eq!(read_curves(&flat_low, &rules).kind, CurveKind::Underfitting);
    let spiky = history(&[
        ((1.5, 0.5), (1.2, 0.6)),
        ((0.6, 0.8), (0.5, 0.82)),
        ((1.4, 0.6), (1.3, 0.6)),
        ((0.5, 0.85), (0.5, 0.85)),
    ]);
    assert_eq!(read_curves(&spiky, &rules).kind, CurveKind::Unstable);
    let nan = history(&[((1.5, 0.5), (1.2, 0.6)), ((f64::NAN, 0.1), (f64::NAN, 0.1))]);
    let r = read_curves(&nan, &rules);
    assert_eq!(r.kind, CurveKind::Unstable);
    assert!(r.evidence[0].contains("not finite"));
    assert_eq!(read_curves(&History::default(), &rules).kind, CurveKind::Unstable);
}

#[test]
fn the_recipe_writes_the_same_report_twice() {
    let (train, test) = digits();
    let run = |dir: &std::path::Path| {
        let mut config = small();
        config.coarse_trials = 3;
        config.refine_candidates = 2;
        config.refine_epochs = 2;
        config.lr_iterations = 20;
        config.lr_min_drop = 0.1;
        let mut factory = |seed: u64| Ok(model(seed));
        let report = Tuner::new(config, TrainConfig::default())
            .with_out_dir(dir)
            .run(&mut factory, &data(train.clone(), test.clone()))
            .unwrap();
        (report, std::fs::read_to_string(dir.join("report.md")).unwrap())
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (report, md) = run(a.path());
    let (_, md2) = run(b.path());
    let strip =
        |s: &str| s.lines().filter(|l| !l.contains("Wall time")).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&md), strip(&md2), "same seed, same report");
    assert_eq!(report.steps.len(), 6);
    for (i, title) in cnn_train::tune::STEP_TITLES.iter().enumerate() {
        assert!(md.contains(&format!("## Step {}: {title}", i + 1)), "{md}");
    }
    for png in ["overfit.png", "lr_sweep.png", "coarse.png", "refine.png", "curves.png"] {
        assert!(a.path().join(png).is_file(), "{png}");
    }
    let best: TrainConfig =
        serde_json::from_slice(&std::fs::read(a.path().join("best.json")).unwrap()).unwrap();
    assert_eq!(Some(&best), report.best.as_ref());
    assert_eq!(best.epochs, 2);
}
