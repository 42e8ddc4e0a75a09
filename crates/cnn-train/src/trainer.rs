//! The [`Trainer`]: epochs of train-mode steps, eval-mode validation,
//! progress, metrics, curves and checkpoints.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cnn_data::{BadSamples, DataLoader};
use cnn_optim::{Optimizer, Schedule};
use cnn_tensor::collective::{broadcast_result, Collective, Solo};
use cnn_tensor::random::mix_seed;
use cnn_tensor::{Error, Float, Layer, Result};

use crate::checkpoint::{find_checkpoint, load_checkpoint, save_checkpoint, TrainerState};
use crate::distributed::{allreduce_gradients, broadcast_optimizer, broadcast_parameters};
use crate::profile::{PhaseTimes, Stopwatch};
use crate::step::{apply_gradients, compute_shard_gradients, StepStats};
use crate::tensorboard::{confusion_png, scalar, EventWriter};
use crate::{
    evaluate_distributed, plot_curves, CrossEntropy, EpochRecord, History, Loss, ProgressMode,
    TrainConfig,
};

/// A callback after each epoch; returning `false` stops the run there (its checkpoint is written).
pub type EpochCallback = Box<dyn FnMut(&EpochRecord) -> bool + Send>;

/// A callback after each optimizer step, with the step's index and statistics.
pub type StepCallback = Box<dyn FnMut(u64, &StepStats) + Send>;

/// Trains any `Layer<f32>` classifier (or `Layer<f64>`, for exact checks):
/// Lightning's `Trainer.fit` for this workspace.
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
    group: Arc<dyn Collective>,
    loss: Option<Arc<dyn Loss>>,
    tensorboard: bool,
    tensorboard_dir: Option<PathBuf>,
    tensorboard_images: Vec<(String, Vec<u8>)>,
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
    /// Of which, each phase's share (`cnn train --profile` prints them).
    pub phases: PhaseTimes,
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
            group: Arc::new(Solo),
            loss: None,
            tensorboard: true,
            tensorboard_dir: None,
            tensorboard_images: Vec::new(),
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
    ///
    /// Without one the trainer runs as the group of one ([`Solo`]): the same
    /// code path, the same numbers bit for bit.
    pub fn with_group(mut self, group: Arc<dyn Collective>) -> Self {
        self.group = group;
        self
    }

    /// Trains on `loss` instead of the default, [`CrossEntropy`] with the
    /// config's label smoothing. Validation still reports cross-entropy (the
    /// metric the history, `best/` and the curves compare across runs).
    pub fn with_loss(mut self, loss: impl Loss + 'static) -> Self {
        self.loss = Some(Arc::new(loss));
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

    /// Whether to write TensorBoard event files (`events.out.tfevents.*`)
    /// into the output directory, as PyTorch's `SummaryWriter` and
    /// Lightning's default logger do: per step `train/loss` and `train/lr`,
    /// per epoch the record's losses, accuracies, images/s and lr under
    /// `epoch/`, and the validation confusion matrix as an image. A resumed
    /// run starts a new file that marks its first step, so TensorBoard drops
    /// what an earlier file logged after the checkpoint. Default `true`; a
    /// failed write warns and stops the logging, never the run.
    pub fn with_tensorboard(mut self, on: bool) -> Self {
        self.tensorboard = on;
        self
    }

    /// Writes the TensorBoard event files into `dir` instead of the output
    /// directory (also without one: a tuning trial, a comparison run).
    pub fn with_tensorboard_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tensorboard_dir = Some(dir.into());
        self
    }

    /// A PNG logged as a TensorBoard image at the run's first step (the CLI
    /// logs a grid of augmented training samples as `data/augmentation`).
    pub fn with_tensorboard_image(mut self, tag: impl Into<String>, png: Vec<u8>) -> Self {
        self.tensorboard_images.push((tag.into(), png));
        self
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

    fn start_state<T: Float>(
        &self,
        model: &mut dyn Layer<T>,
        optimizer: &mut cnn_optim::Optimizer<T>,
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
    fn start_state_shared<T: Float>(
        &self,
        model: &mut dyn Layer<T>,
        optimizer: &mut cnn_optim::Optimizer<T>,
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

    /// Trains `model` on `train`, validating on `val` after each epoch: each
    /// epoch trains (the steps), validates, then ends (history, checkpoints,
    /// callbacks), three phases of one private `Run`.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config or an empty training set;
    /// [`Error::Diverged`] when the divergence guard trips (the last
    /// checkpoint written stays as it was); whatever the loaders, the model or
    /// the file writes return.
    pub fn fit<T: Float>(
        &mut self,
        model: &mut dyn Layer<T>,
        train: &DataLoader,
        val: Option<&DataLoader>,
    ) -> Result<FitReport> {
        let started = Instant::now();
        let mut run = self.start(model, train)?;
        run.times.start = started.elapsed().as_secs_f64();
        // The run's precision (a resumed run's own) over every step and validation.
        let precision = run.config.precision;
        cnn_tensor::with_precision(precision, || self.fit_epochs(run, model, train, val, started))
    }

    /// The epochs of [`Trainer::fit`] from where `run` stands.
    fn fit_epochs<T: Float>(
        &mut self,
        mut run: Run<T>,
        model: &mut dyn Layer<T>,
        train: &DataLoader,
        val: Option<&DataLoader>,
        started: Instant,
    ) -> Result<FitReport> {
        let mut completed = true;
        while run.state.epoch < run.config.epochs {
            if run.train_epoch(self, model, train)? == Flow::Stop {
                completed = false;
                break;
            }
            let record = run.validate(model, val)?;
            if run.end_epoch(self, model, record)? == Flow::Stop {
                completed = run.state.epoch >= run.config.epochs;
                break;
            }
        }
        run.progress.finish();
        run.finish(started, completed)
    }

    /// Everything a run needs before its first step: the config checked, the
    /// optimizer and schedule built, the state fresh or resumed (rank 0's on
    /// every rank).
    fn start<T: Float>(&self, model: &mut dyn Layer<T>, train: &DataLoader) -> Result<Run<T>> {
        self.config.validate()?;
        let batches = train.batches_per_epoch();
        if batches == 0 {
            return Err(Error::config("train", "the training set gives no batch"));
        }
        let schedule = self.config.build_schedule(batches)?;
        let mut optimizer = self.config.build_optimizer()?;
        let group = self.group.clone();
        let (rank, ranks) = (group.rank(), group.size());
        let shortest = train.batch_len(batches - 1);
        if shortest < ranks {
            return Err(Error::config(
                "train",
                format!(
                    "the last batch has {shortest} samples for {ranks} ranks: every rank needs one (another batch size, or drop_last)"
                ),
            ));
        }
        let state = self.start_state_shared(model, &mut optimizer, train, &*group)?;
        let config = state.config.clone();
        let shown = if rank == 0 { self.progress } else { ProgressMode::Quiet };
        let loss = self
            .loss
            .clone()
            .unwrap_or_else(|| Arc::new(CrossEntropy::new(config.label_smoothing)));
        let board_dir = self
            .tensorboard_dir
            .clone()
            .or_else(|| self.out_dir.clone())
            .filter(|_| self.tensorboard && rank == 0);
        let board = match board_dir.map(|d| self.open_board(&d, &state)) {
            Some(Err(e)) => {
                eprintln!("warning: no TensorBoard log ({e})");
                None
            }
            Some(Ok(w)) => Some(w),
            None => None,
        };
        Ok(Run {
            board,
            confusion: None,
            // Only rank 0 writes.
            out_dir: self.out_dir.clone().filter(|_| rank == 0),
            progress: crate::progress::Progress::new(shown, config.epochs, state.epoch),
            // Dropout masks differ per rank (the same on every rank would
            // correlate the shares); a group of one keeps the run's seed.
            step_seed: if ranks > 1 { mix_seed(config.seed, rank as u64) } else { config.seed },
            written_epoch: self.resume.then_some(state.epoch),
            unwritten: None,
            times: PhaseTimes::default(),
            stepped: false,
            lr: 0.0,
            batches,
            config,
            state,
            optimizer,
            schedule,
            group,
            loss,
        })
    }

    /// A new event file in `dir`: a resumed run's marks its first step (so
    /// TensorBoard drops later steps of earlier files), then the images.
    fn open_board(&self, dir: &Path, state: &TrainerState) -> Result<EventWriter> {
        let mut writer = EventWriter::create(dir)?;
        if self.resume {
            writer.session_start(state.global_step)?;
        }
        for (tag, png) in &self.tensorboard_images {
            writer.add_png(tag, png.clone(), state.global_step)?;
        }
        writer.flush()?;
        Ok(writer)
    }
}

/// Whether a run goes on after a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// One call of [`Trainer::fit`]: what its phases share.
struct Run<T: Float> {
    config: TrainConfig,
    state: TrainerState,
    optimizer: Optimizer<T>,
    schedule: Schedule,
    group: Arc<dyn Collective>,
    loss: Arc<dyn Loss>,
    out_dir: Option<PathBuf>,
    progress: crate::progress::Progress,
    step_seed: u64,
    batches: usize,
    /// The lr of the last step applied: what the epoch's record shows.
    lr: f64,
    /// The last epoch whose `last/` checkpoint is on disk, and the error of
    /// a checkpoint write that failed since then (retried each epoch).
    written_epoch: Option<usize>,
    unwritten: Option<Error>,
    /// Seconds per phase so far, and whether this call took a step yet.
    times: PhaseTimes,
    stepped: bool,
    /// The TensorBoard event file (rank 0, when on), and the last
    /// validation's confusion matrix for it.
    board: Option<EventWriter>,
    confusion: Option<Vec<Vec<u64>>>,
}

impl<T: Float> Run<T> {
    /// Writes to the TensorBoard file, if any; a failure warns once and
    /// stops the logging (the run goes on).
    fn log(&mut self, write: impl FnOnce(&mut EventWriter) -> Result<()>) {
        let Some(writer) = self.board.as_mut() else { return };
        let writing = Stopwatch::start();
        let written = write(writer);
        self.times.tensorboard += writing.seconds();
        if let Err(e) = written {
            self.progress.warn(&format!("warning: TensorBoard logging stopped ({e})"));
            self.board = None;
        }
    }

    /// The steps of one epoch, from where the state left off. [`Flow::Stop`]
    /// when a stop flag was seen (on any rank): `last/` is written at once.
    fn train_epoch(
        &mut self,
        trainer: &mut Trainer,
        model: &mut dyn Layer<T>,
        train: &DataLoader,
    ) -> Result<Flow> {
        let epoch = self.state.epoch;
        let (rank, ranks) = (self.group.rank(), self.group.size());
        self.progress.start_epoch(epoch, self.batches, self.state.batch);
        // Even when a run stopped after an epoch's last batch resumes with none left.
        self.lr = self
            .schedule
            .lr(self.state.global_step.saturating_sub(1) as usize, self.config.optimizer.lr);
        let clock = Instant::now();
        let mut batches = train.epoch_shards_from(epoch as u64, self.state.batch, rank, ranks);
        loop {
            let waited = Stopwatch::start();
            let Some(item) = batches.next() else { break };
            self.times.data += waited.seconds();
            let (batch, nominal) = item?;
            let global = self.global_batch(train.bad_samples(), batch.labels.len(), nominal)?;
            if global == 0 {
                // Every sample of the batch was unreadable and skipped: no step.
                self.state.batch += 1;
                continue;
            }
            let stop = trainer.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
            let (stats, stop) = self.step(model, batch, global, stop)?;
            if let Some(on_step) = &mut trainer.on_step {
                on_step(self.state.global_step - 1, &stats);
            }
            let (step, lr) = (self.state.global_step - 1, self.lr);
            self.log(|w| {
                w.add_summary(step, vec![scalar("train/loss", stats.loss), scalar("train/lr", lr)])
            });
            let p = &mut self.state.partial;
            p.loss_sum += stats.loss * global as f64;
            p.correct += stats.correct;
            p.seen += global;
            let secs = p.train_seconds + clock.elapsed().as_secs_f64();
            self.progress.batch(
                p.loss_sum / p.seen as f64,
                p.correct as f64 / p.seen as f64,
                p.seen as f64 / secs.max(1e-9),
            );
            if stop {
                self.log(EventWriter::flush);
                self.state.partial.train_seconds += clock.elapsed().as_secs_f64();
                if let Some(dir) = &self.out_dir {
                    let writing = Stopwatch::start();
                    // Asked to stop: a checkpoint that cannot be written is the run's error.
                    let saved = save_checkpoint(dir, "last", model, &self.optimizer, &self.state);
                    self.times.checkpoints += writing.seconds();
                    saved.map_err(|e| {
                        e.led_by(&format!(
                            "stopping, the checkpoint could not be written; {}",
                            last_written(dir, self.written_epoch)
                        ))
                    })?;
                }
                return Ok(Flow::Stop);
            }
        }
        self.state.partial.train_seconds += clock.elapsed().as_secs_f64();
        Ok(Flow::Continue)
    }

    /// Samples in the global batch the loss averages over: the nominal size,
    /// or, when unreadable samples are skipped, those read on all ranks.
    fn global_batch(&self, policy: &BadSamples, n: usize, nominal: usize) -> Result<usize> {
        let global = match policy {
            BadSamples::Fail => nominal,
            BadSamples::Skip(_) => {
                let mut count = [n as f64];
                self.group.sum_f64(&mut count)?;
                count[0] as usize
            }
        };
        if global > 0 && n == 0 {
            return Err(Error::config(
                "train",
                format!(
                    "every sample of rank {}'s share of batch {} of epoch {} is unreadable (skipped); a rank cannot take a step without samples",
                    self.group.rank(),
                    self.state.batch,
                    self.state.epoch + 1
                ),
            ));
        }
        Ok(global)
    }

    /// One optimizer step on this rank's share of a global batch of `global`
    /// samples: gradients, their sum across ranks, the guard, the update.
    /// Returns the global batch's statistics and whether any rank stops.
    fn step(
        &mut self,
        model: &mut dyn Layer<T>,
        batch: cnn_data::Batch,
        global: usize,
        stop: bool,
    ) -> Result<(StepStats, bool)> {
        let step = self.state.global_step;
        let n = batch.labels.len();
        let labels = batch.labels;
        let computing = Stopwatch::start();
        let stats = compute_shard_gradients(
            model,
            crate::images_as::<T>(batch.images.into_dyn()),
            &labels,
            global,
            &*self.loss,
            self.step_seed,
            step,
        )?;
        let computed = computing.seconds();
        if self.stepped {
            self.times.steps += computed;
        } else {
            self.times.first_step += computed;
            self.stepped = true;
        }
        let summing = Stopwatch::start();
        allreduce_gradients(model, &*self.group)?;
        // The global batch's loss and hits, and whether any rank stops. In a
        // group of one the sums are the identity and `loss·n/n` is exact (an
        // f32 mean times n < 2^29 fits f64's 53 bits): one process's numbers
        // are the ones it always had.
        let mut sums = [stats.loss * n as f64, stats.correct as f64, f64::from(u8::from(stop))];
        self.group.sum_f64(&mut sums)?;
        self.times.allreduce += summing.seconds();
        let updating = Stopwatch::start();
        let stats =
            StepStats { loss: sums[0] / global as f64, correct: sums[1] as usize, count: global };
        let stop = sums[2] > 0.0;
        let lr = self.schedule.lr(step as usize, self.config.optimizer.lr);
        self.state.guard.check(step, stats.loss, lr)?;
        self.lr = apply_gradients(&mut self.optimizer, &self.schedule, model, step)?;
        self.times.optimizer += updating.seconds();
        self.state.global_step += 1;
        self.state.batch += 1;
        Ok((stats, stop))
    }

    /// Validation after an epoch (shared across ranks), and the epoch's record.
    fn validate(
        &mut self,
        model: &mut dyn Layer<T>,
        val: Option<&DataLoader>,
    ) -> Result<EpochRecord> {
        let clock = Instant::now();
        let report = val.map(|v| evaluate_distributed(model, v, &*self.group)).transpose()?;
        self.times.validation += clock.elapsed().as_secs_f64();
        let p = std::mem::take(&mut self.state.partial);
        let record = EpochRecord {
            epoch: self.state.epoch + 1,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_accuracy: p.correct as f64 / p.seen.max(1) as f64,
            val_loss: report.as_ref().map(|r| r.loss),
            val_accuracy: report.as_ref().map(|r| r.accuracy),
            val_top5: report.as_ref().and_then(|r| r.top5),
            lr: self.lr,
            seconds: p.train_seconds + clock.elapsed().as_secs_f64(),
            images_per_second: p.seen as f64 / p.train_seconds.max(1e-9),
        };
        // Kept for the TensorBoard image only, and moved, not copied.
        if self.board.is_some() {
            self.confusion = report.map(|r| r.confusion);
        }
        Ok(record)
    }

    /// The end of an epoch: the record in the history, the writes (a failed
    /// one warns and is retried next epoch), the callback. [`Flow::Stop`]
    /// when a callback on any rank asks for it.
    fn end_epoch(
        &mut self,
        trainer: &mut Trainer,
        model: &mut dyn Layer<T>,
        record: EpochRecord,
    ) -> Result<Flow> {
        let state = &mut self.state;
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
        self.progress.end_epoch(&record);
        let step = state.global_step;
        let confusion = self.confusion.take();
        self.log(|w| log_epoch(w, &record, confusion.as_deref(), step));
        let state = &mut self.state;
        if let Some(dir) = &self.out_dir {
            let written =
                write_epoch(dir, model, &self.optimizer, state, improved, &mut self.times);
            if let Err(e) = written.last {
                // After the last epoch the error itself says it (in `finish`).
                if state.epoch < self.config.epochs {
                    self.progress.warn(&format!(
                        "warning: the checkpoint of epoch {} could not be written ({e}); {}; training goes on and writes it again after the next epoch",
                        state.epoch,
                        last_written(dir, self.written_epoch)
                    ));
                }
                self.unwritten = Some(e);
            } else {
                self.written_epoch = Some(state.epoch);
                self.unwritten = None;
            }
            if let Err(e) = written.best {
                // The next improvement must write best/ again.
                state.best_val_accuracy = previous_best;
                self.progress.warn(&format!("warning: best/ could not be written ({e})"));
            }
            if let Err(e) = written.metrics {
                self.progress.warn(&format!(
                    "warning: the metrics or curves could not be written ({e}); they are rewritten whole after the next epoch"
                ));
            }
        }
        let wants_stop = trainer.on_epoch_end.as_mut().is_some_and(|callback| !callback(&record));
        // Any rank's callback stops every rank.
        let mut stop = [f64::from(u8::from(wants_stop))];
        self.group.sum_f64(&mut stop)?;
        Ok(if stop[0] > 0.0 { Flow::Stop } else { Flow::Continue })
    }

    /// The report, or the error of a last checkpoint that could not be written.
    fn finish(self, started: Instant, completed: bool) -> Result<FitReport> {
        if let (Some(e), Some(dir)) = (self.unwritten, &self.out_dir) {
            return Err(e.led_by(&format!(
                "the checkpoint of epoch {} could not be written; {}",
                self.state.epoch,
                last_written(dir, self.written_epoch)
            )));
        }
        Ok(FitReport {
            history: History { epochs: self.state.history },
            completed,
            best_val_accuracy: self.state.best_val_accuracy,
            global_step: self.state.global_step,
            seconds: started.elapsed().as_secs_f64(),
            phases: self.times,
        })
    }
}

/// An epoch's record under `epoch/` (as Lightning's epoch-level logs), at
/// the global step the epoch ended on, and the confusion image; flushed.
fn log_epoch(
    w: &mut EventWriter,
    record: &EpochRecord,
    confusion: Option<&[Vec<u64>]>,
    step: u64,
) -> Result<()> {
    let mut values = vec![
        scalar("epoch", record.epoch as f64),
        scalar("epoch/train_loss", record.train_loss),
        scalar("epoch/train_accuracy", record.train_accuracy),
        scalar("epoch/lr", record.lr),
        scalar("epoch/images_per_second", record.images_per_second),
    ];
    let optional = [
        ("epoch/val_loss", record.val_loss),
        ("epoch/val_top1", record.val_accuracy),
        ("epoch/val_top5", record.val_top5),
    ];
    values.extend(optional.iter().filter_map(|(tag, v)| v.map(|v| scalar(tag, v))));
    w.add_summary(step, values)?;
    if let Some(c) = confusion.filter(|c| !c.is_empty()) {
        w.add_png("val/confusion", confusion_png(c)?, step)?;
    }
    w.flush()
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
fn write_epoch<T: Float>(
    dir: &Path,
    model: &mut dyn Layer<T>,
    optimizer: &cnn_optim::Optimizer<T>,
    state: &TrainerState,
    improved: bool,
    times: &mut PhaseTimes,
) -> EpochWrites {
    let writing = Stopwatch::start();
    let last = save_checkpoint(dir, "last", model, optimizer, state);
    let best =
        if improved { save_checkpoint(dir, "best", model, optimizer, state) } else { Ok(()) };
    times.checkpoints += writing.seconds();
    let writing = Stopwatch::start();
    let history = History { epochs: state.history.clone() };
    // Each tried on its own: a metrics.csv that cannot be written does not keep the curves away.
    let table = history.write(dir);
    let curves = plot_curves(&history, &dir.join("curves.png"));
    let metrics = table.and(curves);
    times.metrics += writing.seconds();
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
