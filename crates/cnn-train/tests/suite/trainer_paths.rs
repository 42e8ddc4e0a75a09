//! The trainer's one code path: a single process is the group of one and
//! gives the numbers of a plain loop of steps, bit for bit; the loss is a
//! parameter.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use cnn_data::{DataLoader, Digits, Subset};
use cnn_nn::{Flatten, Linear, LinearConfig, Sequential};
use cnn_optim::Schedule;
use cnn_tensor::collective::{Collective, LocalGroup};
use cnn_tensor::random::seeded_rng;
use cnn_tensor::{cross_entropy, ArrayD, Layer, Result};
use cnn_train::{
    apply_gradients, compute_gradients, CrossEntropy, Loss, ProgressMode, ScheduleKind,
    TrainConfig, Trainer,
};

fn net() -> Sequential<f32> {
    let mut rng = seeded_rng(2);
    Sequential::new()
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(64, 32), &mut rng).unwrap())
        .push(cnn_act::Act::relu())
        .push(cnn_act::Dropout::new(0.2, 0).unwrap())
        .push(Linear::new(LinearConfig::new(32, 10), &mut rng).unwrap())
}

fn loader() -> DataLoader {
    let digits = Arc::new(Digits::load().unwrap());
    // 150 samples in batches of 32: a short last batch.
    DataLoader::new(Arc::new(Subset::new(digits, (0..150).collect()).unwrap()), 32, 3).unwrap()
}

fn weights(model: &dyn Layer<f32>) -> Vec<u32> {
    let mut bits = Vec::new();
    model.visit("", &mut |_, p| bits.extend(p.value().iter().map(|v| v.to_bits())));
    bits
}

fn config() -> TrainConfig {
    TrainConfig::default().with_epochs(2).with_lr(0.05).with_label_smoothing(0.1)
}

/// What the trainer must do, written as the plain loop of steps: the oracle.
fn by_hand(config: &TrainConfig, loader: &DataLoader) -> (Vec<u32>, Vec<f64>) {
    let mut model = net();
    let mut optimizer = config.build_optimizer().unwrap();
    let schedule: Schedule = config.build_schedule(loader.batches_per_epoch()).unwrap();
    let loss = CrossEntropy::new(config.label_smoothing);
    let (mut step, mut losses) = (0, Vec::new());
    for epoch in 0..config.epochs as u64 {
        for batch in loader.epoch(epoch) {
            let batch = batch.unwrap();
            let images = batch.images.into_dyn();
            let stats =
                compute_gradients(&mut model, images, &batch.labels, &loss, config.seed, step)
                    .unwrap();
            apply_gradients(&mut optimizer, &schedule, &mut model, step).unwrap();
            losses.push(stats.loss);
            step += 1;
        }
    }
    (weights(&model), losses)
}

fn by_trainer(trainer: Trainer, loader: &DataLoader) -> (Vec<u32>, Vec<f64>) {
    let losses = Arc::new(Mutex::new(Vec::new()));
    let sink = losses.clone();
    let mut model = net();
    trainer
        .with_progress(ProgressMode::Quiet)
        .with_on_step(move |_, s| sink.lock().unwrap().push(s.loss))
        .fit(&mut model, loader, None)
        .unwrap();
    let losses = losses.lock().unwrap().clone();
    (weights(&model), losses)
}

#[test]
fn one_process_is_the_group_of_one_and_the_plain_loop_bit_for_bit() {
    let loader = loader();
    let want = by_hand(&config(), &loader);
    assert_eq!(want.1.len(), 10);
    assert_eq!(by_trainer(Trainer::new(config()), &loader), want, "the default (Solo) group");
    // A real group of one rank (the ring of LocalGroup) changes nothing either.
    let one: Arc<dyn Collective> = Arc::new(LocalGroup::new(1).pop().unwrap());
    assert_eq!(by_trainer(Trainer::new(config()).with_group(one), &loader), want, "LocalGroup(1)");
}

/// Cross-entropy scaled by a constant: a user's loss.
struct Scaled(f32);

impl Loss for Scaled {
    fn mean_and_grad(&self, logits: &ArrayD<f32>, labels: &[usize]) -> Result<(f32, ArrayD<f32>)> {
        let (loss, grad) = cross_entropy(logits, labels, 0.0)?;
        Ok((self.0 * loss, grad * self.0))
    }
}

#[test]
fn the_loss_is_a_parameter_of_the_trainer() {
    let loader = loader();
    let cfg = config().with_schedule(ScheduleKind::Constant).with_label_smoothing(0.0);
    let base = by_trainer(Trainer::new(cfg.clone()), &loader);
    // The default is cross-entropy with the config's smoothing: passing it changes nothing.
    let explicit = by_trainer(Trainer::new(cfg.clone()).with_loss(CrossEntropy::new(0.0)), &loader);
    assert_eq!(explicit, base);
    // A user's loss is what is minimized: twice the loss, twice its first value,
    // and other weights (the gradient doubled is another step).
    let scaled = by_trainer(Trainer::new(cfg).with_loss(Scaled(2.0)), &loader);
    assert_eq!(scaled.1[0], 2.0 * base.1[0]);
    assert_ne!(scaled.0, base.0);
}

/// `FitReport::phases` accounts for the call: every phase measured where it
/// happens (the writes only with a run directory), none negative, together
/// no more than the call's wall time.
#[test]
fn the_phases_account_for_the_fit() {
    let loader = loader();
    let val = DataLoader::new(Arc::new(Digits::load().unwrap()), 256, 0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for dir in [None, Some(tmp.path().join("run"))] {
        let mut trainer = Trainer::new(config()).with_progress(ProgressMode::Quiet);
        if let Some(d) = &dir {
            trainer = trainer.with_out_dir(d);
        }
        let report = trainer.fit(&mut net(), &loader, Some(&val)).unwrap();
        let t = report.phases;
        assert!(t.phases().iter().all(|&(_, s)| s >= 0.0), "{t:?}");
        assert!(t.total() <= report.seconds, "{t:?} in {} s", report.seconds);
        assert!(t.first_step > 0.0 && t.steps > 0.0 && t.optimizer > 0.0, "{t:?}");
        assert!(t.data > 0.0 && t.validation > 0.0, "{t:?}");
        // Ten steps, one of them the first: the others are most of the stepping.
        assert!(t.steps > t.first_step, "{t:?}");
        let writes = t.checkpoints > 0.0 && t.metrics > 0.0;
        assert_eq!(writes, dir.is_some(), "{t:?}");
        assert_eq!(t.allreduce, t.allreduce.max(0.0));
    }
}
