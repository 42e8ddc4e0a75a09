//! Checks of data-parallel training that hold on any [`Collective`]: run on
//! threads ([`cnn_tensor::collective::LocalGroup`]) by `tests/distributed.rs`,
//! and on MPI ranks by the `distributed_check` example under `mpirun`
//! (crates/cnn-cli/tests/distributed.rs). Each returns `Ok` with a line to
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
use cnn_tensor::{cross_entropy_backward, Error, Layer, Mode, Result};
use cnn_train::distributed::{allreduce_gradients, broadcast_parameters};
use cnn_train::{ProgressMode, TrainConfig, Trainer};
use ndarray::{Array3, Axis, Ix2, Slice};

/// Every parameter and buffer, by key.
fn tensors(model: &dyn Layer<f64>) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    model.visit("", &mut |k, p| out.push((k.to_string(), p.value.iter().copied().collect())));
    out
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
/// a fixed random global batch of 12 by the ranks of `group` with synced
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
        shared.visit_mut("", &mut |_, p| p.value.mapv_inplace(|v| v * 0.5 + 0.25));
    }
    broadcast_parameters(&mut shared, &*group)?;
    let optimizer = || Optimizer::<f64>::new(Rule::sgd(0.9), 0.05, 5e-4);
    let (mut opt_alone, mut opt_shared) = (optimizer()?, optimizer()?);
    let mut rng = seeded_rng(11);
    for s in 0..steps {
        let x = normal(&[12, 3, 8, 8], 0.5, 1.0, &mut rng);
        let labels: Vec<usize> = (0..12).map(|i| (i * 7 + s) % 5).collect();
        step(&mut alone, &mut opt_alone, &x, &labels, None)?;
        step(&mut shared, &mut opt_shared, &x, &labels, Some(&*group))?;
    }
    let mut worst = (0.0f64, String::new());
    for ((key, a), (_, b)) in tensors(&alone).iter().zip(tensors(&shared)) {
        for (u, v) in a.iter().zip(&b) {
            let rel = (u - v).abs() / u.abs().max(1.0);
            if rel > worst.0 || rel.is_nan() {
                worst = (rel, key.clone());
            }
        }
    }
    // NaN fails too.
    if worst.0.is_nan() || worst.0 > 1e-10 {
        return Err(Error::distributed(format!(
            "rank {}: {} differs from one process by {:e} (bound 1e-10)",
            group.rank(),
            worst.1,
            worst.0
        )));
    }
    Ok(format!(
        "f64 ResNet-8, {steps} steps on {} ranks with synced BatchNorm: every tensor within {:.1e} of one process (bound 1e-10)",
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
    if !(report.allreduce_seconds > 0.0 && report.allreduce_seconds < report.seconds) {
        return Err(Error::distributed(format!(
            "the gradient sums took {} s of {} s",
            report.allreduce_seconds, report.seconds
        )));
    }
    let seen: usize = report.history.epochs.len();
    Ok(format!(
        "{} ranks, batches of 16 over 100 samples for {seen} epochs: every sample read once per epoch, every validation sample once per validation",
        group.size()
    ))
}
