//! The [`Trainer`]: epochs of train-mode steps, eval-mode validation,
//! progress, metrics, curves and checkpoints.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cnn_data::{BadSamples, DataLoader};
use cnn_tensor::collective::{broadcast_result, Collective};
use cnn_tensor::random::mix_seed;
use cnn_tensor::{Error, Layer, Result};

use crate::checkpoint::{find_checkpoint, load_checkpoint, save_checkpoint, TrainerState};
use crate::distributed::{allreduce_gradients, broadcast_optimizer, broadcast_parameters};
use crate::step::{apply_gradients, compute_shard_gradients, StepStats};
use crate::{evaluate_distributed, plot_curves, EpochRecord, History, ProgressMode, TrainConfig};

/// A callback after each epoch; returning `false` stops the run there (its checkpoint is written).
pub type EpochCallback = Box<dyn FnMut(&EpochRecord) -> bool + Send>;

/// A callback after each optimizer step, with the step's index and statistics.
pub type StepCallback = Box<dyn FnMut(u64, &StepStats) + Send>;

/// Trains any `Layer<f32>` classifier: Lightning's `Trainer.fit` for this workspace.
///
/// Each epoch runs train-mode steps over the training loader (forward,
/// cross-entropy, backward, the schedule's lr, the optimizer step), then
/// evaluates on the validation loader in eval mode. With an output directory
/// it writes, after every epoch, `last/` (model, optimizer, `trainer.json`),
/// `best/` when validation accuracy improves, `metrics.csv`, `metrics.json`
/// and `curves.png`. A run resumed from `last/` is bitwise the run that never
/// stopped.
///
/// A write that fails (a full disk) does not end the run where it happens:
/// each checkpoint is replaced whole or not at all, so the previous one stays
/// loadable; the trainer warns on stderr, trains on, and writes again after
/// the next epoch. Disks fill and are freed while long runs go on, and the
/// model in memory is worth more than the epoch's write. If the last epoch's
/// checkpoint cannot be written either, `fit` returns that error, naming the
/// checkpoint that was last written. A failed `metrics.csv` or `curves.png`
/// only warns: they are rewritten whole after the next epoch from the
/// history, which the checkpoint holds.
///
/// ```
/// use std::sync::Arc;
/// use cnn_data::{DataLoader, Digits};
/// use cnn_nn::{Flatten, Sequential};
/// use cnn_tensor::{random::seeded_rng};
/// use cnn_nn::{Linear, LinearConfig};
/// use cnn_train::{evaluate, ProgressMode, TrainConfig, Trainer};
///
/// // A user's own model: any Layer<f32> that maps [n, 1, 8, 8] to [n, 10] logits.
/// let mut rng = seeded_rng(0);
/// let mut model = Sequential::new()
///     .push(Flatten::new())
///     .push(Linear::<f32>::new(LinearConfig::new(64, 10), &mut rng)?);
/// let (train, test) = Digits::load()?.split(0.2, 0)?;
/// let train = DataLoader::new(Arc::new(train), 64, 0)?;
/// let test = DataLoader::new(Arc::new(test), 256, 0)?.with_shuffle(false);
///
/// let config = TrainConfig::default().with_epochs(5).with_lr(0.05);
/// let report = Trainer::new(config).with_progress(ProgressMode::Quiet).fit(&mut model, &train, Some(&test))?;
/// assert_eq!(report.history.epochs.len(), 5);
/// assert!(evaluate(&mut model, &test)?.accuracy > 0.85);
/// # Ok::<(), cnn_tensor::Error>(())
/// ```
pub struct Trainer {
    config: TrainConfig,
    out_dir: Option<PathBuf>,
    resume: bool,
    progress: ProgressMode,
    stop: Option<Arc<AtomicBool>>,
    metadata: serde_json::Value,
    on_epoch_end: Option<EpochCallback>,
    on_step: Option<StepCallback>,
    group: Option<Arc<dyn Collective>>,
}

/// What [`Trainer::fit`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Every epoch of the run, those before a resume included.
    pub history: History,
    /// Whether every epoch ran (false when stopped by the stop flag or a callback).
    pub completed: bool,
    /// The best validation accuracy.
    pub best_val_accuracy: Option<f64>,
    /// Optimizer steps taken, those before a resume included.
    pub global_step: u64,
    /// Wall time of this call, in seconds.
    pub seconds: f64,
    /// Of which, summing gradients across ranks (0 in one process).
    pub allreduce_seconds: f64,
}

impl Trainer {
    /// A trainer with `config`, progress [`ProgressMode::Auto`], nothing written to disk.
    pub fn new(config: TrainConfig) -> Self {
        Trainer {
            config,
            out_dir: None,
            resume: false,
            progress: ProgressMode::Auto,
            stop: None,
            metadata: serde_json::Value::Null,
            on_epoch_end: None,
            on_step: None,
            group: None,
        }
    }

    /// Trains data-parallel over the ranks of `group` (PyTorch's
    /// `DistributedDataParallel`): every rank runs `fit` with the same model,
    /// config and loaders, takes its share of every batch (the loader's batch
    /// size stays the global batch), and the gradients are summed across
    /// ranks before every rank takes the same step. Rank 0's weights (and, on
    /// resume, its checkpoint) are broadcast first. Only rank 0 shows
    /// progress and writes to the output directory; validation is shared;
    /// a stop flag or callback on any rank stops all of them at the same step.
    /// BatchNorm normalizes over each rank's share unless the model is synced
    /// ([`Layer::sync_batch_norm`]). Dropout draws differ per rank.
    pub fn with_group(mut self, group: Arc<dyn Collective>) -> Self {
        self.group = Some(group);
        self
    }

    /// Writes checkpoints, metrics and curves into `dir` (created if missing).
    pub fn with_out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    cnn_tensor::setters! {
        /// Continues the run in the output directory from its `last/` checkpoint
        /// instead of starting afresh. The model and loaders must be built as
        /// they were for that run; the config must equal the one it saved
        /// (read it with [`TrainerState::read`]).
        with_resume: resume: bool;
        /// How to show progress.
        with_progress: progress: ProgressMode;
    }

    /// A flag that, once set (by a Ctrl-C handler, say), makes the run finish
    /// its current step, write `last/` and return with `completed: false`.
    pub fn with_stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    cnn_tensor::setters! {
        /// JSON stored in every checkpoint's `trainer.json` (the CLI keeps the
        /// data set, architecture and normalization there).
        with_metadata: metadata: serde_json::Value;
    }

    /// A callback after each epoch; returning `false` stops the run there.
    pub fn with_on_epoch_end(
        mut self,
        f: impl FnMut(&EpochRecord) -> bool + Send + 'static,
    ) -> Self {
        self.on_epoch_end = Some(Box::new(f));
        self
    }

    /// A callback after every optimizer step (per-iteration curves).
    pub fn with_on_step(mut self, f: impl FnMut(u64, &StepStats) + Send + 'static) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }

    /// The config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn start_state(
        &self,
        model: &mut dyn Layer<f32>,
        optimizer: &mut cnn_optim::Optimizer<f32>,
        train: &DataLoader,
    ) -> Result<TrainerState> {
        let batches = train.batches_per_epoch();
        if !self.resume {
            return Ok(TrainerState::new(
                self.config.clone(),
                batches,
                train.seed(),
                self.metadata.clone(),
            ));
        }
        let dir = self
            .out_dir
            .as_deref()
            .ok_or_else(|| Error::config("train", "resume needs the run's output directory"))?;
        let ckpt = find_checkpoint(dir, "last")?;
        let state = load_checkpoint(&ckpt, model, optimizer)?;
        if state.config != self.config {
            return Err(Error::config(
                "train",
                format!(
                    "{} was trained with another config; resume with the one in its trainer.json",
                    ckpt.display()
                ),
            ));
        }
        if state.batches_per_epoch != batches {
            return Err(Error::config(
                "train",
                format!(
                    "{} ran {} batches per epoch, this loader gives {batches}: same data and batch size needed",
                    ckpt.display(),
                    state.batches_per_epoch
                ),
            ));
        }
        if state.data_seed != train.seed() {
            return Err(Error::config(
                "train",
                format!(
                    "{} drew its batches with loader seed {}, this loader has {}",
                    ckpt.display(),
                    state.data_seed,
                    train.seed()
                ),
            ));
        }
        Ok(state)
    }

    /// [`Trainer::start_state`] on rank 0, then its state, weights and
    /// optimizer state on every rank (a failure on rank 0 fails all ranks).
    fn start_state_shared(
        &self,
        model: &mut dyn Layer<f32>,
        optimizer: &mut cnn_optim::Optimizer<f32>,
        train: &DataLoader,
        group: &dyn Collective,
    ) -> Result<TrainerState> {
        let mine = (group.rank() == 0).then(|| self.start_state(model, optimizer, train));
        let json = broadcast_result(group, || match &mine {
            Some(Ok(state)) => {
                serde_json::to_vec(state).map_err(|e| Error::format("trainer state", e.to_string()))
            }
            Some(Err(e)) => Err(Error::distributed(e.to_string())),
            None => Ok(Vec::new()),
        });
        let state = match (mine, json) {
            (Some(result), _) => result?,
            (None, json) => serde_json::from_slice(&json?)
                .map_err(|e| Error::format("rank 0's trainer state", e.to_string()))?,
        };
        broadcast_parameters(model, group)?;
        broadcast_optimizer(optimizer, group)?;
        Ok(state)
    }

    /// Trains `model` on `train`, validating on `val` after each epoch.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config or an empty training set;
    /// [`Error::Diverged`] when the divergence guard trips (the last
    /// checkpoint written stays as it was); whatever the loaders, the model or
    /// the file writes return.
    pub fn fit(
        &mut self,
        model: &mut dyn Layer<f32>,
        train: &DataLoader,
        val: Option<&DataLoader>,
    ) -> Result<FitReport> {
        let started = Instant::now();
        self.config.validate()?;
        let batches = train.batches_per_epoch();
        if batches == 0 {
            return Err(Error::config("train", "the training set gives no batch"));
        }
        let schedule = self.config.build_schedule(batches)?;
        let mut optimizer = self.config.build_optimizer()?;
        let group = self.group.clone().filter(|g| g.size() > 1);
        let (rank, ranks) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
        let shortest = train.batch_len(batches - 1);
        if shortest < ranks {
            return Err(Error::config(
                "train",
                format!(
                    "the last batch has {shortest} samples for {ranks} ranks: every rank needs one (another batch size, or drop_last)"
                ),
            ));
        }
        let mut state = match &group {
            Some(g) => self.start_state_shared(model, &mut optimizer, train, &**g)?,
            None => self.start_state(model, &mut optimizer, train)?,
        };
        let config = state.config.clone();
        // Only rank 0 writes and shows progress.
        let out_dir = self.out_dir.clone().filter(|_| rank == 0);
        let shown = if rank == 0 { self.progress } else { ProgressMode::Quiet };
        let mut progress = crate::progress::Progress::new(shown, config.epochs, state.epoch);
        // Dropout masks differ per rank (the same on every rank would correlate the shares).
        let step_seed = if ranks > 1 { mix_seed(config.seed, rank as u64) } else { config.seed };
        let mut allreduce_seconds = 0.0;
        let mut completed = true;
        // The last epoch whose `last/` checkpoint is on disk, and the error of
        // a checkpoint write that failed since then (retried each epoch).
        let mut written_epoch = self.resume.then_some(state.epoch);
        let mut unwritten: Option<Error> = None;
        'epochs: while state.epoch < config.epochs {
            let epoch = state.epoch;
            progress.start_epoch(epoch, batches, state.batch);
            // The lr of the last step applied: what the record shows even when a
            // run stopped after an epoch's last batch resumes with none left.
            let mut lr =
                schedule.lr(state.global_step.saturating_sub(1) as usize, config.optimizer.lr);
            let mut clock = Instant::now();
            for item in train.epoch_shards_from(epoch as u64, state.batch, rank, ranks) {
                let (batch, nominal) = item?;
                let n = batch.labels.len();
                let global = match (&group, train.bad_samples()) {
                    (_, BadSamples::Fail) => nominal,
                    // Unreadable samples left out: the loss averages over those read.
                    (None, BadSamples::Skip(_)) => n,
                    (Some(g), BadSamples::Skip(_)) => {
                        let mut count = [n as f64];
                        g.sum_f64(&mut count)?;
                        count[0] as usize
                    }
                };
                if global == 0 {
                    // Every sample of the batch was unreadable and skipped: no step.
                    state.batch += 1;
                    continue;
                }
                if n == 0 {
                    return Err(Error::config(
                        "train",
                        format!(
                            "every sample of rank {rank}'s share of batch {} of epoch {} is unreadable (skipped); a rank cannot take a step without samples",
                            state.batch,
                            epoch + 1
                        ),
                    ));
                }
                let step = state.global_step;
                let mut stats = compute_shard_gradients(
                    model,
                    batch.images.into_dyn(),
                    &batch.labels,
                    global,
                    config.label_smoothing,
                    step_seed,
                    step,
                )?;
                let mut stop = self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
                if let Some(g) = &group {
                    let clock = Instant::now();
                    allreduce_gradients(model, &**g)?;
                    // The global batch's loss and hits, and whether any rank stops.
                    let mut sums =
                        [stats.loss * n as f64, stats.correct as f64, f64::from(u8::from(stop))];
                    g.sum_f64(&mut sums)?;
                    allreduce_seconds += clock.elapsed().as_secs_f64();
                    stats = StepStats {
                        loss: sums[0] / global as f64,
                        correct: sums[1] as usize,
                        count: global,
                    };
                    stop = sums[2] > 0.0;
                }
                state.guard.check(
                    step,
                    stats.loss,
                    schedule.lr(step as usize, config.optimizer.lr),
                )?;
                lr = apply_gradients(&mut optimizer, &schedule, model, step)?;
                if let Some(on_step) = &mut self.on_step {
                    on_step(step, &stats);
                }
                state.global_step += 1;
                state.batch += 1;
                let p = &mut state.partial;
                p.loss_sum += stats.loss * global as f64;
                p.correct += stats.correct;
                p.seen += global;
                let secs = p.train_seconds + clock.elapsed().as_secs_f64();
                progress.batch(
                    p.loss_sum / p.seen as f64,
                    p.correct as f64 / p.seen as f64,
                    p.seen as f64 / secs.max(1e-9),
                );
                if stop {
                    state.partial.train_seconds += clock.elapsed().as_secs_f64();
                    if let Some(dir) = &out_dir {
                        // Asked to stop: a checkpoint that cannot be written is the run's error.
                        save_checkpoint(dir, "last", model, &optimizer, &state).map_err(|e| {
                            e.led_by(&format!(
                                "stopping, the checkpoint could not be written; {}",
                                last_written(dir, written_epoch)
                            ))
                        })?;
                    }
                    completed = false;
                    break 'epochs;
                }
            }
            state.partial.train_seconds += clock.elapsed().as_secs_f64();
            clock = Instant::now();
            let report = match &group {
                Some(g) => val.map(|v| evaluate_distributed(model, v, &**g)).transpose()?,
                None => val.map(|v| crate::evaluate(model, v)).transpose()?,
            };
            let p = std::mem::take(&mut state.partial);
            let record = EpochRecord {
                epoch: epoch + 1,
                train_loss: p.loss_sum / p.seen.max(1) as f64,
                train_accuracy: p.correct as f64 / p.seen.max(1) as f64,
                val_loss: report.as_ref().map(|r| r.loss),
                val_accuracy: report.as_ref().map(|r| r.accuracy),
                val_top5: report.as_ref().and_then(|r| r.top5),
                lr,
                seconds: p.train_seconds + clock.elapsed().as_secs_f64(),
                images_per_second: p.seen as f64 / p.train_seconds.max(1e-9),
            };
            let improved = match (record.val_accuracy, state.best_val_accuracy) {
                (Some(a), Some(best)) => a > best,
                (Some(_), None) => true,
                _ => false,
            };
            let previous_best = state.best_val_accuracy;
            if improved {
                state.best_val_accuracy = record.val_accuracy;
            }
            state.history.push(record.clone());
            state.epoch += 1;
            state.batch = 0;
            progress.end_epoch(&record);
            if let Some(dir) = &out_dir {
                let written = write_epoch(dir, model, &optimizer, &state, improved);
                if let Err(e) = written.last {
                    // After the last epoch the error itself says it (below).
                    if state.epoch < config.epochs {
                        progress.warn(&format!(
                        "warning: the checkpoint of epoch {} could not be written ({e}); {}; training goes on and writes it again after the next epoch",
                        state.epoch,
                        last_written(dir, written_epoch)
                        ));
                    }
                    unwritten = Some(e);
                } else {
                    written_epoch = Some(state.epoch);
                    unwritten = None;
                }
                if let Err(e) = written.best {
                    // The next improvement must write best/ again.
                    state.best_val_accuracy = previous_best;
                    progress.warn(&format!("warning: best/ could not be written ({e})"));
                }
                if let Err(e) = written.metrics {
                    progress.warn(&format!(
                        "warning: the metrics or curves could not be written ({e}); they are rewritten whole after the next epoch"
                    ));
                }
            }
            let wants_stop = self.on_epoch_end.as_mut().is_some_and(|callback| !callback(&record));
            let mut stop = [f64::from(u8::from(wants_stop))];
            if let Some(g) = &group {
                // Any rank's callback stops every rank.
                g.sum_f64(&mut stop)?;
            }
            if stop[0] > 0.0 && state.epoch < config.epochs {
                completed = false;
                break;
            }
        }
        progress.finish();
        if let (Some(e), Some(dir)) = (unwritten, &out_dir) {
            return Err(e.led_by(&format!(
                "the checkpoint of epoch {} could not be written; {}",
                state.epoch,
                last_written(dir, written_epoch)
            )));
        }
        Ok(FitReport {
            history: History { epochs: state.history },
            completed,
            best_val_accuracy: state.best_val_accuracy,
            global_step: state.global_step,
            seconds: started.elapsed().as_secs_f64(),
            allreduce_seconds,
        })
    }
}

/// How each write of an epoch's end went.
struct EpochWrites {
    last: Result<()>,
    best: Result<()>,
    metrics: Result<()>,
}

/// What every finished epoch leaves in the run directory: `last/`, `best/`
/// when validation improved, metrics and curves, each tried even when one
/// before it failed.
fn write_epoch(
    dir: &Path,
    model: &mut dyn Layer<f32>,
    optimizer: &cnn_optim::Optimizer<f32>,
    state: &TrainerState,
    improved: bool,
) -> EpochWrites {
    let last = save_checkpoint(dir, "last", model, optimizer, state);
    let best =
        if improved { save_checkpoint(dir, "best", model, optimizer, state) } else { Ok(()) };
    let history = History { epochs: state.history.clone() };
    // Each tried on its own: a metrics.csv that cannot be written does not keep the curves away.
    let table = history.write(dir);
    let curves = plot_curves(&history, &dir.join("curves.png"));
    let metrics = table.and(curves);
    EpochWrites { last, best, metrics }
}

/// `the last checkpoint written is epoch 3 (runs/x/last)`, or that there is none.
fn last_written(dir: &Path, epoch: Option<usize>) -> String {
    match epoch {
        Some(0) | None => format!("no checkpoint of this run is in {} yet", dir.display()),
        Some(e) => {
            format!("the last checkpoint written is epoch {e} ({})", dir.join("last").display())
        }
    }
}
