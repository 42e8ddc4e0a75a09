//! What a run directory records about its data and network (in every
//! checkpoint's `trainer.json`, under `metadata`), and how `train` and `eval`
//! rebuild the same loaders and network from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, Ordering};

use cnn_data::{BadSamples, DataLoader, Dataset, SkipLog};
use cnn_tensor::collective::Collective;
use cnn_tensor::{Error, Result};
use cnn_train::{find_checkpoint, Trainer, TrainerState};
use serde::{Deserialize, Serialize};

use crate::arch::{self, Built};
use crate::augment_spec::{parse_augment, pipeline};
use crate::data::{self, DataSpec, SplitOptions, Splits};

/// The run's data, network and normalization: enough to rebuild its loaders and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// The `--data` spec.
    pub data: String,
    /// The `--arch` name.
    pub arch: String,
    /// Class names.
    pub classes: Vec<String>,
    /// `[c, h, w]` of the data set's images.
    pub image: [usize; 3],
    /// Per-channel mean of the training split (normalization).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of the training split.
    pub std: Vec<f64>,
    /// Training batch size.
    pub batch_size: usize,
    /// The `--augment` spec.
    pub augment: String,
    /// The `--val-fraction`.
    pub val_fraction: f64,
    /// The `--val-dir`.
    pub val_dir: Option<PathBuf>,
    /// The `--image-size` (folder data).
    pub image_size: usize,
    /// The size other data sets were resized to, if any.
    #[serde(default)]
    pub resize: Option<usize>,
    /// Seed of the model's init and of the loader (order, augmentation).
    pub seed: u64,
    /// Transfer runs: the key prefixes that train (the rest is frozen);
    /// `None` when everything trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Vec<String>>,
    /// A linear probe trained on the frozen backbone's features, computed once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached_features: bool,
    /// How a data-parallel run was spread (`cnn train --distributed`);
    /// `None` for one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<Distributed>,
    /// What the run does with an image it cannot read (`--bad-images`);
    /// kept on resume, so the same files are left out.
    #[serde(default, skip_serializing_if = "BadImages::is_fail")]
    pub bad_images: BadImages,
    /// The images this process left out (under `--bad-images skip`), shared
    /// by the run's loaders; written as `skipped.txt`.
    #[serde(skip)]
    pub skipped: SharedSkipLog,
}

/// `--bad-images`: what a run does with an image it cannot read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BadImages {
    /// Stop with an error naming the file (PyTorch's habit).
    #[default]
    Fail,
    /// Leave it out of every epoch, list it in the run's skipped.txt and count it in the final line.
    Skip,
}

impl BadImages {
    fn is_fail(&self) -> bool {
        *self == BadImages::Fail
    }
}

/// The [`SkipLog`] a run's loaders share. Not part of the run's identity:
/// two `RunInfo`s compare equal whatever their logs hold.
#[derive(Debug, Clone, Default)]
pub struct SharedSkipLog(pub Arc<SkipLog>);

impl PartialEq for SharedSkipLog {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The list of unreadable images a run left out, in its directory.
pub const SKIPPED_FILE: &str = "skipped.txt";

/// The ranks of a data-parallel run and how its BatchNorm normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distributed {
    /// MPI ranks that trained it.
    pub ranks: usize,
    /// BatchNorm statistics over all ranks (`--sync-bn`).
    pub sync_bn: bool,
}

/// What a fresh run is asked for, besides its training recipe.
pub struct RunRequest<'a> {
    /// The data and how to split it.
    pub spec: &'a DataSpec,
    /// The split options.
    pub split: SplitOptions,
    /// The `--arch` name.
    pub arch: &'a str,
    /// Training batch size.
    pub batch_size: usize,
    /// The `--augment` spec.
    pub augment: &'a str,
    /// The `--seed`.
    pub seed: u64,
    /// A normalization to use instead of the training split's statistics
    /// (the pretrained network's, for transfer).
    pub normalization: Option<(Vec<f64>, Vec<f64>)>,
    /// `--bad-images`.
    pub bad_images: BadImages,
}

impl RunInfo {
    /// Reads the data of a fresh run, checks the request, and records the
    /// run's info: the per-channel mean and std of the training split, unless
    /// a normalization is given.
    ///
    /// # Errors
    /// A zero batch size, a bad augmentation spec, unreadable data.
    pub fn prepare(req: RunRequest<'_>) -> Result<(RunInfo, Splits)> {
        if req.batch_size == 0 {
            return Err(Error::config("data", "--batch-size must be at least 1"));
        }
        parse_augment(req.augment, req.spec)?;
        let splits = data::load(req.spec, &req.split)?;
        let skipped = SharedSkipLog::default();
        let policy = policy(req.bad_images, &skipped);
        let image = splits.image_shape(&policy)?;
        let (mean, std) = match req.normalization {
            // Statistics of gray pretraining serve RGB images channel by channel.
            Some((mean, std)) if mean.len() == 1 && std.len() == 1 && image[0] == 3 => {
                (vec![mean[0]; 3], vec![std[0]; 3])
            }
            Some((mean, std)) => {
                let channels = if image[0] == 1 { [1, 3] } else { [image[0], image[0]] };
                if !channels.contains(&mean.len()) || mean.len() != std.len() {
                    return Err(Error::config(
                        "data",
                        format!(
                            "the normalization has {} means and {} stds; the images have {} channels",
                            mean.len(),
                            std.len(),
                            image[0]
                        ),
                    ));
                }
                (mean, std)
            }
            None => cnn_data::channel_stats_with(&*splits.train, &policy)?,
        };
        // A constant channel would divide by zero: leave its scale alone.
        let std = std.into_iter().map(|s| if s > 1e-12 { s } else { 1.0 }).collect();
        let info = RunInfo {
            data: req.spec.to_string(),
            arch: req.arch.to_string(),
            classes: splits.classes(),
            image,
            mean,
            std,
            batch_size: req.batch_size,
            augment: req.augment.to_string(),
            val_fraction: req.split.val_fraction,
            val_dir: req.split.val_dir.clone(),
            image_size: req.split.image_size,
            resize: req.split.resize,
            seed: req.seed,
            trainable: None,
            cached_features: false,
            distributed: None,
            bad_images: req.bad_images,
            skipped,
        };
        Ok((info, splits))
    }

    /// The data spec.
    ///
    /// # Errors
    /// [`Error::Format`] if the stored spec does not parse.
    pub fn data_spec(&self) -> Result<DataSpec> {
        self.data.parse().map_err(|msg| Error::format("trainer.json metadata", msg))
    }

    /// The split options the run used.
    pub fn split_options(&self) -> SplitOptions {
        SplitOptions {
            val_fraction: self.val_fraction,
            val_dir: self.val_dir.clone(),
            image_size: self.image_size,
            resize: self.resize,
            split_seed: 0,
        }
    }

    /// Reads the metadata of a checkpoint's trainer state.
    ///
    /// # Errors
    /// [`Error::Format`] naming the file when it is not a `cnn train` run's.
    pub fn from_metadata(value: &serde_json::Value, dir: &Path) -> Result<RunInfo> {
        serde_json::from_value(value.clone()).map_err(|e| {
            Error::format(
                dir.join(cnn_train::checkpoint::TRAINER_FILE).display(),
                format!("no `cnn train` metadata ({e})"),
            )
        })
    }

    /// The network, initialized from the run's seed.
    ///
    /// # Errors
    /// As [`arch::build`].
    pub fn build_model(&self) -> Result<Built> {
        let mut built = arch::build(&self.arch, self.image, self.classes.len(), self.seed)?;
        if let Some(trainable) = &self.trainable {
            cnn_nn::freeze(&mut *built.model, "");
            for prefix in trainable {
                cnn_nn::unfreeze(&mut *built.model, prefix);
            }
        }
        Ok(built)
    }

    /// Loads the splits and checks that they have the run's classes and image shape.
    ///
    /// # Errors
    /// As [`data::load`]; [`Error::Config`] when the data does not fit the run.
    pub fn load_splits(&self, spec: &DataSpec) -> Result<Splits> {
        let splits = data::load(spec, &self.split_options())?;
        let (classes, image) = (splits.classes(), splits.image_shape(&self.bad_samples())?);
        if classes.len() != self.classes.len() || image != self.image {
            return Err(Error::config(
                "data",
                format!(
                    "{spec} has {} classes of {image:?} images; the run was trained on {} classes of {:?}",
                    classes.len(),
                    self.classes.len(),
                    self.image
                ),
            ));
        }
        Ok(splits)
    }

    /// The loaders' policy for unreadable images.
    pub fn bad_samples(&self) -> BadSamples {
        policy(self.bad_images, &self.skipped)
    }

    /// Adds a resumed run's `skipped.txt` to the log (a missing file adds nothing).
    pub fn read_skipped(&self, out: &Path) {
        if let Ok(text) = std::fs::read_to_string(out.join(SKIPPED_FILE)) {
            self.skipped.0.extend_from_text(&text);
        }
    }

    /// Writes `skipped.txt` into the run directory when any image was left out.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be written.
    pub fn write_skipped(&self, out: &Path) -> Result<()> {
        if self.skipped.0.is_empty() {
            return Ok(());
        }
        cnn_tensor::write_atomic(&out.join(SKIPPED_FILE), self.skipped.0.to_text().as_bytes())
    }

    /// `, 3 unreadable images skipped, listed in DIR/skipped.txt` for the
    /// final line, or nothing.
    pub fn skipped_note(&self, out: &Path) -> String {
        match self.skipped.0.len() {
            0 => String::new(),
            n => format!(
                "; {n} unreadable image{} skipped, listed in {}",
                if n == 1 { "" } else { "s" },
                out.join(SKIPPED_FILE).display()
            ),
        }
    }

    /// A loader over `dataset`: augmented as the run was (or not), normalized
    /// with the run's statistics, gray repeated into RGB when `rgb`.
    fn loader(
        &self,
        dataset: Arc<dyn Dataset>,
        batch_size: usize,
        augmented: bool,
        shuffle: bool,
        rgb: bool,
    ) -> Result<DataLoader> {
        let augs =
            if augmented { parse_augment(&self.augment, &self.data_spec()?)? } else { Vec::new() };
        Ok(DataLoader::new(dataset, batch_size, self.seed)?
            .with_shuffle(shuffle)
            .with_bad_samples(self.bad_samples())
            .with_transform(pipeline(&augs, self.image, &self.mean, &self.std, rgb)?))
    }

    /// A PNG grid of the training augmentation on the first sample of each
    /// class in turn ([`cnn_data::first_of_each_class`], up to eight; the
    /// original then six draws): what
    /// `cnn augment-preview` draws, logged to TensorBoard at the first step.
    ///
    /// # Errors
    /// A bad augmentation spec; no readable sample.
    pub fn augmentation_grid(&self, train: &dyn Dataset) -> Result<Vec<u8>> {
        let augs = parse_augment(&self.augment, &self.data_spec()?)?;
        // An unreadable image is passed over here; the run itself reports it.
        let picked =
            cnn_data::first_of_each_class(train, 8, |i| Ok(train.get(i).ok().map(|s| s.0)))?;
        let pipe = crate::augment_spec::augmentations(&augs, self.image)?;
        let scale = (96 / self.image[1].max(self.image[2]).max(1)).clamp(1, 12);
        cnn_data::preview_grid_png(&picked, &pipe, 6, self.seed, scale)
    }

    /// The training loader: shuffled, augmented, normalized.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad augmentation spec or batch size.
    pub fn train_loader(&self, train: Arc<dyn Dataset>, rgb: bool) -> Result<DataLoader> {
        self.loader(train, self.batch_size, true, true, rgb)
    }

    /// An evaluation loader: in order, normalized, not augmented.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero batch size.
    pub fn eval_loader(
        &self,
        dataset: Arc<dyn Dataset>,
        batch_size: usize,
        rgb: bool,
    ) -> Result<DataLoader> {
        self.loader(dataset, batch_size, false, false, rgb)
    }

    /// The training pipeline over `dataset` in order: the random views of test-time augmentation.
    ///
    /// # Errors
    /// As [`RunInfo::train_loader`].
    pub fn tta_loader(
        &self,
        dataset: Arc<dyn Dataset>,
        batch_size: usize,
        rgb: bool,
    ) -> Result<DataLoader> {
        self.loader(dataset, batch_size, true, false, rgb)
    }
}

/// A folder run's error on an unreadable image (a format or I/O error), with
/// the way around it.
pub fn bad_image_hint(e: Error, folder: bool) -> Error {
    match e {
        Error::Format { .. } | Error::Io { .. } if folder => {
            e.with_note("--bad-images skip leaves unreadable images out; cnn check-data lists them")
        }
        e => e,
    }
}

/// The loader policy for `--bad-images`, logging into `log`.
pub(crate) fn policy(bad: BadImages, log: &SharedSkipLog) -> BadSamples {
    match bad {
        BadImages::Fail => BadSamples::Fail,
        BadImages::Skip => BadSamples::Skip(log.0.clone()),
    }
}

/// What a start line says of the run's precision: nothing for f32,
/// " in bf16 mixed precision" for bf16.
pub fn precision_words(precision: cnn_tensor::Precision) -> &'static str {
    match precision {
        cnn_tensor::Precision::F32 => "",
        cnn_tensor::Precision::Bf16 => " in bf16 mixed precision",
    }
}

/// A note for a bf16 run on a CPU (or a `CNN_SIMD` cap) without
/// AVX512-BF16: the same numbers, by the portable path, slower than f32.
pub fn precision_note(precision: cnn_tensor::Precision) -> Option<String> {
    use cnn_tensor::simd::{level, SimdLevel};
    (precision == cnn_tensor::Precision::Bf16 && level() < SimdLevel::Avx512Bf16).then(|| {
        format!(
            "SIMD level {} has no AVX512-BF16: bf16 products run in the portable path, the same numbers as on a CPU with it but slower than f32",
            level().name()
        )
    })
}

/// Trains a run's network and scores it on the test split: checkpoints,
/// metrics and curves in `out`, Ctrl-C finishing the step and writing
/// `last/`, a cached linear probe on the frozen backbone's features computed
/// once, and `test.json` at the end. Returns `None` when stopped by Ctrl-C,
/// after printing how to resume.
///
/// With a `group` (`cnn train --distributed`) this is one rank of it: the
/// trainer shares every batch and the validation with the other ranks, the
/// test split is shared too, and only rank 0 writes `test.json` and prints
/// how to resume.
///
/// # Errors
/// A diverged run (naming the last good checkpoint), whatever training returns.
pub fn fit_run(
    info: &RunInfo,
    built: &mut Built,
    splits: &Splits,
    trainer: Trainer,
    out: &Path,
    say: &dyn Fn(String),
    group: Option<Arc<dyn Collective>>,
) -> Result<Option<(cnn_train::EvalReport, RunTimes)>> {
    let rank = group.as_ref().map_or(0, |g| g.rank());
    let ranks = group.as_ref().map_or(1, |g| g.size());
    // The run's precision also over what runs outside `fit`: cached
    // features and the test.
    let precision = trainer.config().precision;
    let trainer = match &group {
        Some(g) => trainer.with_group(g.clone()),
        None => trainer,
    };
    let train = &info.train_loader(splits.train.clone(), built.rgb)?;
    let val = &info.eval_loader(splits.val.clone(), 256, built.rgb)?;
    let model = &mut *built.model;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // A second Ctrl-C leaves at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        if rank == 0 {
            eprintln!("\nstopping after this step; Ctrl-C again to quit without a checkpoint");
        }
    });
    let metadata =
        serde_json::to_value(info).map_err(|e| Error::format("run metadata", e.to_string()))?;
    if rank == 0 {
        // A resumed run lists what it skipped before, and writes the list
        // after every epoch so that a crash leaves it too.
        info.read_skipped(out);
    }
    let mut trainer = trainer.with_out_dir(out).with_stop_flag(stop).with_metadata(metadata);
    if rank == 0 {
        match info.augmentation_grid(&*splits.train) {
            Ok(png) => trainer = trainer.with_tensorboard_image("data/augmentation", png),
            Err(e) => say(format!("note: no augmentation grid for TensorBoard ({e})")),
        }
    }
    if rank == 0 && info.bad_images == BadImages::Skip {
        let (info, out) = (info.clone(), out.to_path_buf());
        trainer = trainer.with_on_epoch_end(move |_| {
            if let Err(e) = info.write_skipped(&out) {
                eprintln!("warning: {e}");
            }
            true
        });
    }
    let frozen = cnn_train::frozen_prefix(model);
    let fit_started = std::time::Instant::now();
    let fitted = if info.cached_features && frozen > 0 {
        let clock = std::time::Instant::now();
        let in_order = train.over(train.dataset().clone()).with_shuffle(false);
        let ((features, shape), (val_features, _)) = cnn_tensor::with_precision(precision, || {
            Ok::<_, Error>((
                cnn_train::extract_features(model, frozen, &in_order)?,
                cnn_train::extract_features(model, frozen, val)?,
            ))
        })?;
        say(format!(
            "computed the frozen backbone's features once ({} values per image) in {:.1} s",
            shape.iter().product::<usize>(),
            clock.elapsed().as_secs_f64()
        ));
        let ftrain = DataLoader::new(Arc::new(features), train.batch_size(), train.seed())?;
        let fval = DataLoader::new(Arc::new(val_features), val.batch_size(), val.seed())?
            .with_shuffle(false);
        trainer.fit(&mut cnn_train::FeatureHead::new(model, frozen, shape), &ftrain, Some(&fval))
    } else {
        trainer.fit(model, train, Some(val))
    };
    let fit_seconds = fit_started.elapsed().as_secs_f64();
    if rank == 0 {
        // Whatever the outcome (an error included), the list of what was left out stays.
        if let Err(e) = info.write_skipped(out) {
            eprintln!("warning: {e}");
        }
    }
    let report = match fitted {
        Err(Error::Diverged { step, msg }) => {
            let last = find_checkpoint(out, "last").map_or_else(
                |_| "no epoch had finished, so there is no checkpoint".to_string(),
                |d| format!("the last good checkpoint is {}", d.display()),
            );
            return Err(Error::Diverged { step, msg: format!("{msg}; {last}") });
        }
        other => other?,
    };
    if !report.completed {
        if rank != 0 {
            return Ok(None);
        }
        let s = TrainerState::read(&find_checkpoint(out, "last")?)?;
        let how = match info.distributed {
            Some(d) if ranks > 1 => format!(
                "mpirun -np {ranks} cnn train --distributed{} --resume",
                if d.sync_bn { " --sync-bn" } else { "" }
            ),
            _ => "cnn train --resume".to_string(),
        };
        println!(
            "interrupted at step {} (epoch {}, batch {}); checkpoint written to {}. Resume with: {how} {}",
            s.global_step,
            s.epoch + 1,
            s.batch,
            out.join("last").display(),
            out.display()
        );
        return Ok(None);
    }
    let testing = std::time::Instant::now();
    let test = info.eval_loader(splits.test.clone(), 256, built.rgb)?;
    let result = cnn_tensor::with_precision(precision, || match &group {
        Some(g) => cnn_train::evaluate_distributed(model, &test, &**g),
        None => cnn_train::evaluate(model, &test),
    })?;
    if rank == 0 {
        write_test_json(out, &result)?;
        info.write_skipped(out)?;
    }
    let times = RunTimes {
        fit_started,
        fit_seconds,
        phases: report.phases,
        test_seconds: testing.elapsed().as_secs_f64(),
    };
    Ok(Some((result, times)))
}

/// Where a training command's wall time went: what `--profile` prints.
#[derive(Debug, Clone, Copy)]
pub struct RunTimes {
    /// When the trainer was called: everything before it is start-up
    /// (arguments, the data read and normalized, the model built, a cached
    /// probe's features).
    pub fit_started: std::time::Instant,
    /// Seconds of the trainer's call (a cached probe's features included).
    pub fit_seconds: f64,
    /// The trainer's phases.
    pub phases: cnn_train::PhaseTimes,
    /// Seconds of the test split's evaluation and `test.json`.
    pub test_seconds: f64,
}

impl RunTimes {
    /// The breakdown of a command that started at `started`, one phase a
    /// line with its seconds and share, ending with the total.
    pub fn table(&self, started: std::time::Instant) -> String {
        let total = started.elapsed().as_secs_f64();
        let before = self.fit_started.duration_since(started).as_secs_f64();
        let mut rows = vec![("start-up: data read and normalized, model built", before)];
        rows.extend(self.phases.phases());
        rows.push(("trainer, other (progress display, loop)", self.phases.other(self.fit_seconds)));
        rows.push(("test evaluation and test.json", self.test_seconds));
        let accounted: f64 = rows.iter().map(|(_, s)| s).sum();
        rows.push(("exit and unaccounted", (total - accounted).max(0.0)));
        let mut out = format!("profile of the whole command, {total:.3} s wall time:\n");
        for (name, secs) in rows {
            let share = 100.0 * secs / total.max(1e-12);
            out += &format!("  {name:<50} {secs:>9.3} s {share:>5.1}%\n");
        }
        out
    }
}

/// Writes the test split's evaluation as `test.json` in the run directory, atomically.
///
/// # Errors
/// [`Error::Io`] when it cannot be written.
fn write_test_json(out: &Path, result: &cnn_train::EvalReport) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(result).map_err(|e| Error::format("test.json", e.to_string()))?;
    cnn_tensor::write_atomic(&out.join("test.json"), &json)
}

/// `runs/<prefix><UTC yyyymmdd-hhmmss>`, with `-2`, `-3`, … when that exists already.
pub fn default_run_dir(prefix: &str) -> PathBuf {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let stamp = format!(
        "{prefix}{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let base = Path::new("runs").join(&stamp);
    let mut dir = base.clone();
    let mut k = 2;
    while dir.exists() {
        dir = Path::new("runs").join(format!("{stamp}-{k}"));
        k += 1;
    }
    dir
}
