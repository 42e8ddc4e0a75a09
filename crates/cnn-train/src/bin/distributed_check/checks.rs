//! Checks of data-parallel training that hold on any [`Collective`]: run on
//! threads ([`cnn_tensor::collective::LocalGroup`]) by `tests/distributed.rs`,
//! and on MPI ranks by the `distributed_check` binary under `mpirun`
//! (crates/cnn-train/tests/mpirun.rs). Each returns `Ok` with a line to
//! print, or an error saying what differed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use cnn_act::Act;
use cnn_conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d};
use cnn_data::{shard_range, DataLoader, Dataset, Digits, Subset};
use cnn_nn::{Flatten, Linear, LinearConfig, Sequential};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_optim::{Optimizer, Rule};
use cnn_tensor::collective::Collective;
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{cross_entropy_backward, Error, Float, Layer, Mode, Result};
use cnn_train::distributed::{allreduce_gradients, broadcast_parameters};
use cnn_train::{ProgressMode, TrainConfig, Trainer};
use ndarray::{Array3, Axis, Ix2, Slice};

/// Every parameter and buffer, by key, widened to f64.
fn tensors<T: Float>(model: &dyn Layer<T>) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    model.visit("", &mut |k, p| {
        out.push((k.to_string(), p.value().iter().map(|v| v.as_f64()).collect()))
    });
    out
}

/// The largest relative difference (to the value, or 1 when smaller) between
/// two runs' tensors and step losses, and where; NaN counts as the largest.
fn worst_difference(
    (a, a_losses): (&[(String, Vec<f64>)], &[f64]),
    (b, b_losses): (&[(String, Vec<f64>)], &[f64]),
) -> (f64, String) {
    let mut worst = (0.0f64, String::new());
    let mut see = |u: f64, v: f64, at: &dyn Fn() -> String| {
        let r = (u - v).abs() / u.abs().max(1.0);
        if r > worst.0 || r.is_nan() {
            worst = (r, at());
        }
    };
    for ((key, x), (_, y)) in a.iter().zip(b) {
        x.iter().zip(y).for_each(|(u, v)| see(*u, *v, &|| key.clone()));
    }
    for (step, (u, v)) in a_losses.iter().zip(b_losses).enumerate() {
        see(*u, *v, &|| format!("the loss of step {step}"));
    }
    worst
}

/// An error naming the rank and the worst difference when it is over `bound` (or NaN).
fn within(group: &dyn Collective, worst: &(f64, String), bound: f64) -> Result<()> {
    if worst.0.is_nan() || worst.0 > bound {
        return Err(Error::distributed(format!(
            "rank {}: {} differs from one process by {:e} (bound {bound:e})",
            group.rank(),
            worst.1,
            worst.0
        )));
    }
    Ok(())
}

/// One run's tensors and step losses.
type Run = (Vec<(String, Vec<f64>)>, Vec<f64>);

/// `Trainer` on the ranks of `group` (synced BatchNorm) and in one process,
/// from the same network, data and config, global batches of 11; an error
/// unless each took every step of its epochs.
fn trainer_runs<T: Float>(
    group: &Arc<dyn Collective>,
    build: &dyn Fn() -> Result<Sequential<T>>,
    data: Arc<dyn Dataset>,
    config: &TrainConfig,
) -> Result<(Run, Run)> {
    use std::sync::Mutex;
    let run = |group: Option<Arc<dyn Collective>>| -> Result<Run> {
        let mut model = build()?;
        let losses = Arc::new(Mutex::new(Vec::new()));
        let sink = losses.clone();
        let mut trainer = Trainer::new(config.clone())
            .with_progress(ProgressMode::Quiet)
            .with_on_step(move |_, s| sink.lock().expect("not poisoned").push(s.loss));
        if let Some(g) = group {
            model.sync_batch_norm(Some(g.clone()));
            trainer = trainer.with_group(g);
        }
        trainer.fit(&mut model, &DataLoader::new(data.clone(), 11, 4)?, None)?;
        let losses = losses.lock().expect("not poisoned").clone();
        Ok((tensors(&model), losses))
    };
    let alone = run(None)?;
    let shared = run(Some(group.clone()))?;
    for (who, losses) in [("one process", &alone.1), ("the ranks", &shared.1)] {
        let want = config.epochs * data.len().div_ceil(11);
        if losses.len() != want {
            return Err(Error::distributed(format!(
                "{} steps in {who}, {want} expected",
                losses.len()
            )));
        }
    }
    Ok((alone, shared))
}

/// One SGD step of `model` on `x`/`labels`, of which this process holds
/// positions `share` of a global batch of `global` samples (everything when
/// `group` is `None`).
fn step(
    model: &mut dyn Layer<f64>,
    optimizer: &mut Optimizer<f64>,
    x: &ndarray::ArrayD<f64>,
    labels: &[usize],
    group: Option<&dyn Collective>,
) -> Result<()> {
    let global = labels.len();
    let share = match group {
        Some(g) => shard_range(global, g.rank(), g.size()),
        None => 0..global,
    };
    let xs = x.slice_axis(Axis(0), Slice::from(share.clone())).to_owned();
    model.zero_grad();
    let logits = model.forward(xs, Mode::Train)?.into_dimensionality::<Ix2>()?;
    // dL/dlogits of the global batch's mean loss, restricted to the share.
    let scale = share.len() as f64 / global as f64;
    let dlogits = cross_entropy_backward(logits.view(), &labels[share], 0.0, scale)?;
    model.backward(dlogits.into_dyn())?;
    if let Some(g) = group {
        allreduce_gradients(model, g)?;
    }
    optimizer.step(model)
}

/// A CIFAR ResNet-8 (widths 4, 8, 8) in f64 trained for `steps` SGD steps on
/// a random global batch of 11 (uneven shares on 2 and 3 ranks: 5 + 6,
/// 3 + 4 + 4) by the ranks of `group` with synced
/// BatchNorm, against the same network trained on the whole batch in one
/// process (each rank trains that one too). Every parameter and buffer must
/// agree within `1e-10` relative (to the value, or 1 when smaller): the
/// ranks sum in another order than one process, so rounding differs, nothing else.
pub fn f64_resnet_equals_one_process(group: Arc<dyn Collective>, steps: usize) -> Result<String> {
    let build = || -> Result<Sequential<f64>> {
        cnn_models::cifar_resnet(
            &cnn_models::CifarResNetConfig::new(8).with_widths([4, 8, 8]).with_num_classes(5),
            &mut seeded_rng(3),
        )
    };
    let (mut alone, mut shared) = (build()?, build()?);
    shared.sync_batch_norm(Some(group.clone()));
    // Different weights on other ranks, to see that rank 0's are broadcast.
    if group.rank() != 0 {
        shared.visit_mut("", &mut |_, p| p.value_mut().mapv_inplace(|v| v * 0.5 + 0.25));
    }
    broadcast_parameters(&mut shared, &*group)?;
    let optimizer = || Optimizer::<f64>::new(Rule::sgd(0.9), 0.05, 5e-4);
    let (mut opt_alone, mut opt_shared) = (optimizer()?, optimizer()?);
    let mut rng = seeded_rng(11);
    for s in 0..steps {
        let x = normal(&[11, 3, 8, 8], 0.5, 1.0, &mut rng);
        let labels: Vec<usize> = (0..11).map(|i| (i * 7 + s) % 5).collect();
        step(&mut alone, &mut opt_alone, &x, &labels, None)?;
        step(&mut shared, &mut opt_shared, &x, &labels, Some(&*group))?;
    }
    let worst = worst_difference((&tensors(&alone), &[]), (&tensors(&shared), &[]));
    within(&*group, &worst, 1e-10)?;
    Ok(format!(
        "f64 ResNet-8, {steps} steps on {} ranks with synced BatchNorm: every tensor within {:.1e} of one process (bound 1e-10)",
        group.size(),
        worst.0
    ))
}

/// `Trainer` itself in f64 on the ranks of `group` against `Trainer` in f64
/// in one process (each rank trains that one too): the CIFAR ResNet-8
/// (widths 4, 8, 8) with synced BatchNorm, 2 epochs over 22 random 3×8×8
/// images in global batches of 11 (uneven shares on 2 and 3 ranks), SGD
/// with momentum at a constant lr. Every parameter, buffer and step loss
/// must agree within `1e-10` relative: the trainer's shares, loss
/// normalization, bucketed gradient sums and broadcasts, with nothing left
/// to differ but the order of sums.
pub fn f64_trainer_equals_one_process(group: Arc<dyn Collective>) -> Result<String> {
    let mut rng = seeded_rng(13);
    let n = 22;
    let values: Vec<f32> =
        normal::<f64, _>(&[n * 3 * 8 * 8], 0.5, 1.0, &mut rng).iter().map(|&v| v as f32).collect();
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % 5).collect();
    let classes: Vec<String> = (0..5).map(|c| c.to_string()).collect();
    let data = Arc::new(cnn_data::TensorDataset::new([3, 8, 8], values, labels, classes)?);
    let build = || -> Result<Sequential<f64>> {
        cnn_models::cifar_resnet(
            &cnn_models::CifarResNetConfig::new(8).with_widths([4, 8, 8]).with_num_classes(5),
            &mut seeded_rng(3),
        )
    };
    let ((a, a_losses), (b, b_losses)) = trainer_runs(&group, &build, data, &constant_lr())?;
    let worst = worst_difference((&a, &a_losses), (&b, &b_losses));
    within(&*group, &worst, 1e-10)?;
    Ok(format!(
        "f64 Trainer, ResNet-8, 4 steps of batches of 11 on {} ranks with synced BatchNorm: every tensor and loss within {:.1e} of one process (bound 1e-10)",
        group.size(),
        worst.0
    ))
}

/// Two epochs of SGD at a constant lr: the Trainer checks' config.
fn constant_lr() -> TrainConfig {
    TrainConfig::default()
        .with_epochs(2)
        .with_lr(0.05)
        .with_schedule(cnn_train::ScheduleKind::Constant)
}

/// The relative difference bound of [`trainer_equals_one_process`]: f32
/// sums in another order (the ring, the shares' BatchNorm statistics) differ
/// by a few ulps per step, and 20 steps of SGD carry that along (measured:
/// 2.0e-7 on 2 ranks, 2.2e-7 on 3).
pub const TRAINER_BOUND: f64 = 2e-6;

/// `Trainer` itself on the ranks of `group` against `Trainer` in one process
/// (each rank trains that one too): 2 epochs over 110 digits in global
/// batches of 11 (uneven shares on 2 and 3 ranks), synced BatchNorm, SGD at a
/// constant lr. Every parameter and buffer must agree within
/// [`TRAINER_BOUND`] relative (to the value, or 1 when smaller), and every
/// step's global loss too: the trainer's own shares, loss normalization,
/// gradient sums and broadcasts, checked in f32, which is what it trains in.
pub fn trainer_equals_one_process(group: Arc<dyn Collective>) -> Result<String> {
    let digits: Arc<dyn Dataset> = Arc::new(Digits::load()?);
    let data = Arc::new(Subset::new(digits, (0..110).collect())?);
    let ((a, a_losses), (b, b_losses)) = trainer_runs(&group, &small_net, data, &constant_lr())?;
    let worst = worst_difference((&a, &a_losses), (&b, &b_losses));
    within(&*group, &worst, TRAINER_BOUND)?;
    Ok(format!(
        "Trainer, 20 steps of batches of 11 on {} ranks with synced BatchNorm: every tensor and loss within {:.1e} of one process (bound {TRAINER_BOUND:e})",
        group.size(),
        worst.0
    ))
}

/// Counts how often each sample is read.
struct Counting {
    inner: Arc<dyn Dataset>,
    reads: Vec<AtomicU32>,
}

impl Counting {
    fn new(inner: Arc<dyn Dataset>) -> Arc<Counting> {
        let reads = (0..inner.len()).map(|_| AtomicU32::new(0)).collect();
        Arc::new(Counting { inner, reads })
    }
    fn counts(&self) -> Vec<f64> {
        self.reads.iter().map(|c| f64::from(c.load(Ordering::SeqCst))).collect()
    }
}

impl Dataset for Counting {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        if let Some(c) = self.reads.get(index) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get(index)
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
}

/// A small conv net with BatchNorm for the trainer checks.
pub fn small_net() -> Result<Sequential<f32>> {
    let mut rng = seeded_rng(5);
    Ok(Sequential::new()
        .push(Conv2d::new(Conv2dConfig::new(1, 6, 3).with_padding(1), &mut rng)?)
        .push(BatchNorm::new_2d(BatchNormConfig::new(6))?)
        .push(Act::relu())
        .push(GlobalAvgPool2d::new())
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(6, 10), &mut rng)?))
}

/// The trainer on the ranks of `group`, 2 epochs over 100 digits in global
/// batches of 16 (shares of 5 and 6 on three ranks; the last batch of 4 gives
/// shares of 1, 1 and 2), validating on 30 more: every training sample must
/// be read exactly once per epoch over all ranks, and every validation sample
/// once per validation.
pub fn every_sample_once_per_epoch(group: Arc<dyn Collective>) -> Result<String> {
    let digits: Arc<dyn Dataset> = Arc::new(Digits::load()?);
    let train = Counting::new(Arc::new(Subset::new(digits.clone(), (0..100).collect())?));
    let val = Counting::new(Arc::new(Subset::new(digits, (100..130).collect())?));
    let epochs = 2;
    let mut model = small_net()?;
    model.sync_batch_norm(Some(group.clone()));
    let report = Trainer::new(TrainConfig::default().with_epochs(epochs).with_lr(0.05))
        .with_progress(ProgressMode::Quiet)
        .with_group(group.clone())
        .fit(
            &mut model,
            &DataLoader::new(train.clone(), 16, 1)?,
            Some(&DataLoader::new(val.clone(), 256, 1)?.with_shuffle(false)),
        )?;
    let mut counts = train.counts();
    counts.extend(val.counts());
    group.sum_f64(&mut counts)?;
    let wrong: Vec<(usize, f64)> =
        counts.iter().copied().enumerate().filter(|&(_, c)| c != epochs as f64).collect();
    if !wrong.is_empty() {
        return Err(Error::distributed(format!(
            "samples not read once per epoch over {} ranks (index, reads; validation from 100): {wrong:?}",
            group.size()
        )));
    }
    if !(report.phases.allreduce > 0.0 && report.phases.allreduce < report.seconds) {
        return Err(Error::distributed(format!(
            "the gradient sums took {} s of {} s",
            report.phases.allreduce, report.seconds
        )));
    }
    let seen: usize = report.history.epochs.len();
    Ok(format!(
        "{} ranks, batches of 16 over 100 samples for {seen} epochs: every sample read once per epoch, every validation sample once per validation",
        group.size()
    ))
}
