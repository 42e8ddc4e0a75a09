//! `cnn train`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use cnn_tensor::collective::{broadcast_result, Collective};
use cnn_tensor::{Error, Result};
use cnn_train::{
    find_checkpoint, OptimizerConfig, OptimizerKind, ProgressMode, ScheduleConfig, ScheduleKind,
    TrainConfig, Trainer, TrainerState,
};

use crate::arch::ARCH_HELP;
use crate::data::{DataSpec, Splits};
use crate::training_run::{default_run_dir, fit_run, BadImages, RunInfo, RunRequest};
use crate::DataArgs;

/// `--optimizer`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Opt {
    Sgd,
    Adam,
    Adamw,
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sched {
    Constant,
    Step,
    Cosine,
    WarmupCosine,
    OneCycle,
}

/// The recipe flags a `--config` file replaces.
const CONFIG_CONFLICTS: [&str; 10] = [
    "no_decay_norms",
    "epochs",
    "lr",
    "momentum",
    "no_nesterov",
    "weight_decay",
    "optimizer",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
];

const RESUME_CONFLICTS: [&str; 21] = [
    "no_decay_norms",
    "config",
    "data",
    "val_fraction",
    "val_dir",
    "image_size",
    "arch",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "optimizer",
    "schedule",
    "label_smoothing",
    "augment",
    "seed",
    "out",
    "no_nesterov",
    "warmup_epochs",
    "precision",
];

/// Arguments of `cnn train`; every one has a default, so `cnn train` alone
/// trains the default network on the embedded digits.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn train                                        # digits, the default recipe, about 99% in seconds
  cnn train --epochs 3 --data mnist:~/data/mnist   # MNIST IDX files (train-images-idx3-ubyte, ...)
  cnn train --data cifar10:~/data/cifar-10-batches-bin --arch resnet20 --epochs 30 --batch-size 128
  cnn train --data folder:~/photos --image-size 64 --val-fraction 0.2 --augment crop,flip,jitter
  cnn train --data folder:~/photos --bad-images skip   # leave unreadable images out, list them in skipped.txt
  cnn train --resume runs/20261127-101500          # continue a stopped run exactly
  mpirun -np 2 cnn --threads 1 train --distributed --sync-bn   # over MPI (a build with --features distributed)

The run directory (--out, default runs/<time>) gets last/ and best/ checkpoints
(model.safetensors, optimizer.safetensors, trainer.json), metrics.csv,
metrics.json and curves.png (and skipped.txt under --bad-images skip). Ctrl-C
finishes the step, writes last/ and stops. A checkpoint that cannot be written
(a full disk) is a warning: training goes on and writes it after the next
epoch; the run fails at the end only if the last one cannot be written.")]
pub struct TrainArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[command(flatten)]
    pub(crate) board: crate::BoardArgs,
    #[command(flatten)]
    pub(crate) precision: crate::PrecisionArgs,
    /// The network.
    #[arg(long, default_value = "small", long_help = format!("The network: {ARCH_HELP}"))]
    arch: String,
    /// Passes over the training set [default: 12 for digits, 10 for MNIST, 30 otherwise].
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate (the peak for one-cycle) [default: 0.1].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// SGD momentum [default: 0.9].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Plain momentum instead of Nesterov's (SGD).
    #[arg(long)]
    no_nesterov: bool,
    /// Weight decay [default: 5e-4].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// The optimizer.
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: Opt,
    /// No weight decay on biases, norm weights and layer scales (every 1-D
    /// parameter: timm's habit, with --optimizer adamw for ConvNeXt).
    #[arg(long)]
    no_decay_norms: bool,
    /// The learning-rate schedule, stepped every iteration.
    #[arg(long, value_enum, default_value = "one-cycle")]
    schedule: Sched,
    /// Warmup epochs of warmup-cosine [default: 1].
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Cross-entropy label smoothing in [0, 1].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    label_smoothing: f64,
    /// none, default (digits and MNIST: crop; others: crop,flip) or a comma list of flip, crop, jitter, cutout.
    #[arg(long, default_value = "default")]
    augment: String,
    /// Seed of the initialization, the data order and the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The training recipe from a JSON file (`best.json` of `cnn tune`, or a
    /// run's `config` from trainer.json) instead of the recipe flags.
    #[arg(long, value_name = "FILE", conflicts_with_all = CONFIG_CONFLICTS)]
    config: Option<PathBuf>,
    /// The run directory [default: runs/YYYYMMDD-HHMMSS, the start time in UTC].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, exactly as if it had never stopped.
    #[arg(long, conflicts_with_all = RESUME_CONFLICTS)]
    resume: Option<PathBuf>,
    /// Print only the final line.
    #[arg(long, short)]
    quiet: bool,
    /// Print where the wall time went, phase by phase (start-up, waiting for
    /// data, the first step, the other steps, optimizer, validation,
    /// checkpoints, metrics and curves, test), before the final line.
    #[arg(long)]
    profile: bool,
    /// Data-parallel over the ranks of an MPI job: `mpirun -np 4 cnn train
    /// --distributed …`. --batch-size stays the global batch; rank 0 prints
    /// and writes. Needs a build with `--features distributed` (docs/distributed.md).
    #[arg(long)]
    distributed: bool,
    /// With --distributed: BatchNorm statistics over the whole global batch
    /// (SyncBatchNorm), so the run equals one process; without it each rank
    /// normalizes over its own share (DDP's default).
    #[arg(long, requires = "distributed")]
    sync_bn: bool,
}

/// Reads a training recipe (a [`TrainConfig`] as JSON).
///
/// # Errors
/// [`Error::Io`] naming the file; [`Error::Format`] for JSON that is not a recipe.
pub fn read_config(path: &std::path::Path) -> Result<TrainConfig> {
    let text = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let context = path.display().to_string();
    cnn_tensor::untrusted::contain_panic(&context, "the JSON parser", || {
        serde_json::from_slice(&text)
            .map_err(|e| Error::format(&context, format!("not a training config: {e}")))
    })
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        if let Some(path) = &self.config {
            // --seed stays the command line's: it seeds the init and data too;
            // --precision, when given, wins over the recipe's.
            let recipe = read_config(path)?.with_seed(self.seed);
            let precision = self.precision.precision.unwrap_or(recipe.precision);
            return Ok(recipe.with_precision(precision));
        }
        let d = TrainConfig::default();
        Ok(TrainConfig {
            epochs: self.epochs.unwrap_or(match self.data.data {
                DataSpec::Digits => 12,
                DataSpec::Mnist(_) => 10,
                _ => d.epochs,
            }),
            optimizer: OptimizerConfig {
                kind: match self.optimizer {
                    Opt::Sgd => OptimizerKind::Sgd,
                    Opt::Adam => OptimizerKind::Adam,
                    Opt::Adamw => OptimizerKind::AdamW,
                },
                lr: self.lr.unwrap_or(d.optimizer.lr),
                momentum: self.momentum.unwrap_or(d.optimizer.momentum),
                nesterov: !self.no_nesterov,
                weight_decay: self.weight_decay.unwrap_or(d.optimizer.weight_decay),
                no_decay_norms_biases: self.no_decay_norms,
            },
            schedule: ScheduleConfig {
                kind: match self.schedule {
                    Sched::Constant => ScheduleKind::Constant,
                    Sched::Step => ScheduleKind::Step,
                    Sched::Cosine => ScheduleKind::Cosine,
                    Sched::WarmupCosine => ScheduleKind::WarmupCosine,
                    Sched::OneCycle => ScheduleKind::OneCycle,
                },
                warmup_epochs: self.warmup_epochs.unwrap_or(d.schedule.warmup_epochs),
            },
            label_smoothing: self.label_smoothing,
            seed: self.seed,
            precision: self.precision.precision.unwrap_or_default(),
            ..d
        })
    }
}

/// A fresh run: its info (data statistics included), config, directory, and
/// the splits it read (so they are read once).
fn fresh(args: &TrainArgs) -> Result<(RunInfo, TrainConfig, PathBuf, Splits)> {
    let config = args.config()?;
    config.validate()?;
    let out = args.out.clone().unwrap_or_else(|| default_run_dir(""));
    if out.join("last").exists() || out.join(".last.old").exists() {
        return Err(Error::config(
            "train",
            format!(
                "{} already holds a run: continue it with --resume {0}, or pick another --out",
                out.display()
            ),
        ));
    }
    let (info, splits) = RunInfo::prepare(RunRequest {
        spec: &args.data.data,
        split: args.data.split_options(),
        arch: &args.arch,
        batch_size: args.batch_size,
        augment: &args.augment,
        seed: args.seed,
        normalization: None,
        bad_images: args.data.bad_images.unwrap_or_default(),
    })?;
    Ok((info, config, out, splits))
}

/// Runs `cnn train`, as one rank of an MPI job with `--distributed`.
///
/// # Errors
/// Bad settings, unreadable data, a diverged run, failed writes; with
/// `--distributed` in a build without the feature, an error saying how to build it.
pub fn run(args: TrainArgs, started: Instant, threads_given: bool) -> Result<ExitCode> {
    if args.distributed {
        return distributed(args, started, threads_given);
    }
    run_in(args, started, None)
}

#[cfg(not(feature = "distributed"))]
fn distributed(_: TrainArgs, _: Instant, _: bool) -> Result<ExitCode> {
    Err(Error::config(
        "train",
        "--distributed needs a cnn built with MPI: cargo build --release -p cnn-cli --features distributed (see docs/distributed.md)",
    ))
}

/// One rank of `mpirun -np N cnn train --distributed`. A rank that fails
/// says so and aborts the whole job (`MPI_Abort`): the others would
/// otherwise wait for it forever. A diverged run is the same on every rank,
/// so all of them stop together and only rank 0 reports it.
///
/// Without `--threads`, the ranks on one node share its cores: each computes
/// with cores ÷ ranks-on-the-node threads (as torchrun sets
/// `OMP_NUM_THREADS`), instead of every rank starting a thread per core.
#[cfg(feature = "distributed")]
fn distributed(args: TrainArgs, started: Instant, threads_given: bool) -> Result<ExitCode> {
    let mpi = cnn_train::Mpi::init()?;
    let (rank, size) = (mpi.rank(), mpi.size());
    if !threads_given {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = (cores / mpi.ranks_on_this_node()).max(1);
        // Fails only if a pool exists already, which cannot be the case here.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
    let group: Arc<dyn Collective> = mpi.clone();
    match run_in(args, started, Some(group)) {
        Ok(code) => Ok(code),
        Err(e @ Error::Diverged { .. }) if rank == 0 => Err(e),
        Err(Error::Diverged { .. }) => Ok(ExitCode::FAILURE),
        Err(e) => {
            eprintln!("error: rank {rank} of {size}: {e}");
            eprintln!("cnn: rank {rank} failed; aborting all {size} ranks");
            mpi.abort(1)
        }
    }
}

/// The checkpoint's trainer state: read by rank 0 and sent to the others
/// (their nodes need not see the run directory).
fn read_state(dir: &std::path::Path, group: Option<&Arc<dyn Collective>>) -> Result<TrainerState> {
    let read = || TrainerState::read(&find_checkpoint(dir, "last")?);
    let Some(g) = group.filter(|g| g.size() > 1) else {
        return read();
    };
    let json = broadcast_result(&**g, || {
        serde_json::to_vec(&read()?).map_err(|e| Error::format("trainer state", e.to_string()))
    })?;
    serde_json::from_slice(&json)
        .map_err(|e| Error::format("rank 0's trainer state", e.to_string()))
}

fn run_in(
    args: TrainArgs,
    started: Instant,
    group: Option<Arc<dyn Collective>>,
) -> Result<ExitCode> {
    let rank = group.as_ref().map_or(0, |g| g.rank());
    let mut recorded_bad = BadImages::Fail;
    let (mut info, config, out, splits, resuming) = match &args.resume {
        Some(dir) => {
            let state = read_state(dir, group.as_ref())?;
            let mut info = RunInfo::from_metadata(&state.metadata, dir)?;
            // A run that stopped on a bad image can go on with --bad-images skip.
            recorded_bad = info.bad_images;
            info.bad_images = args.data.bad_images.unwrap_or(info.bad_images);
            let splits = info.load_splits(&info.data_spec()?)?;
            (info, state.config, dir.clone(), splits, true)
        }
        None => {
            let (info, config, out, splits) = fresh(&args)?;
            (info, config, out, splits, false)
        }
    };
    let spec = info.data_spec()?;
    let mut notes = Vec::new();
    // A resumed run keeps its BatchNorm: --sync-bn need not be repeated.
    let recorded = info.distributed;
    let sync_bn = args.sync_bn || recorded.is_some_and(|d| d.sync_bn);
    match (&group, recorded) {
        (Some(g), Some(d)) if d.ranks != g.size() => notes.push(format!(
            "the run was trained on {} ranks: on {} the sums run in another order, so it continues as an equal run, not bit for bit",
            d.ranks,
            g.size()
        )),
        _ if resuming && args.data.bad_images.is_some_and(|b| b != recorded_bad) => {
            notes.push(format!(
                "unreadable images are now {} (the run started with --bad-images {})",
                if info.bad_images == BadImages::Skip { "skipped" } else { "errors" },
                if recorded_bad == BadImages::Skip { "skip" } else { "fail" }
            ));
        }
        (None, Some(d)) if resuming => notes.push(format!(
            "the run was trained on {} ranks; continuing on one process{}",
            d.ranks,
            if d.sync_bn { "" } else { " (BatchNorm now sees the whole batch)" }
        )),
        _ => {}
    }
    notes.extend(crate::training_run::precision_note(config.precision));
    info.distributed =
        group.as_ref().map(|g| crate::training_run::Distributed { ranks: g.size(), sync_bn });
    let mut built = info.build_model()?;
    if resuming && rank == 0 {
        // The Trainer loads the checkpoint itself, but a cached linear probe
        // computes its features from the backbone before that: put the run's
        // weights in place first (rank 0's reach the others below).
        let last = find_checkpoint(&out, "last")?;
        cnn_nn::load_state_dict(
            &mut *built.model,
            &last.join(cnn_train::checkpoint::MODEL_FILE),
            cnn_nn::LoadMode::Strict,
        )?;
    }
    if let Some(g) = &group {
        if resuming {
            // Before a cached probe's features are computed; a fresh run's
            // weights are the same on every rank (same seed), and the
            // Trainer broadcasts rank 0's before training in any case.
            cnn_train::distributed::broadcast_parameters(&mut *built.model, &**g)?;
        }
        if sync_bn {
            built.model.sync_batch_norm(Some(g.clone()));
        }
    }
    let say = |line: String| {
        if !args.quiet && rank == 0 {
            println!("{line}");
        }
    };
    let ranks = group.as_ref().map_or(String::new(), |g| {
        let bn = if sync_bn { "synced" } else { "per-rank" };
        let t = rayon::current_num_threads();
        let threads = format!("{t} thread{}", if t == 1 { "" } else { "s" });
        match g.size() {
            1 => format!(" on one MPI rank of {threads}"),
            n => format!(" over {n} ranks × {threads} ({bn} BatchNorm)"),
        }
    });
    let (params, _) = cnn_nn::count_params(&*built.model);
    say(format!(
        "{} {} ({params} parameters) on {spec}{ranks}{}: {} training images of {}, {} for validation ({}), {} classes; run directory {}",
        if resuming { "resuming" } else { "training" },
        info.arch,
        crate::training_run::precision_words(config.precision),
        splits.train.len(),
        info.image.map(|v| v.to_string()).join("×"),
        splits.val.len(),
        splits.val_source,
        info.classes.len(),
        out.display()
    ));
    for note in notes {
        say(format!("note: {note}"));
    }
    let trainer = Trainer::new(config)
        .with_resume(resuming)
        .with_progress(if args.quiet { ProgressMode::Quiet } else { ProgressMode::Auto })
        .with_tensorboard(args.board.on());
    let Some((result, times)) = fit_run(&info, &mut built, &splits, trainer, &out, &say, group)?
    else {
        return Ok(ExitCode::from(130));
    };
    if rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let board = if args.board.on() { ", TensorBoard events" } else { "" };
    say(format!(
        "run saved in {}: last/ and best/ checkpoints, metrics.csv, metrics.json, curves.png, test.json{board}",
        out.display()
    ));
    if args.profile {
        print!("{}", times.table(started));
    }
    println!(
        "test accuracy {:.2}% (loss {:.4}) in {:.1} s{}",
        100.0 * result.accuracy,
        result.loss,
        started.elapsed().as_secs_f64(),
        info.skipped_note(&out)
    );
    Ok(ExitCode::SUCCESS)
}
