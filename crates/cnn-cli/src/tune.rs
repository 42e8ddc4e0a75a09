//! `cnn tune`: the six-step tuning recipe, written up as `report.md`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use cnn_tensor::{Error, Result};
use cnn_train::{Budget, ProgressMode, TrainConfig, TuneConfig, TuneData, Tuner, Verdict};

use crate::arch::{self, ARCH_HELP};
use crate::data::DataSpec;
use crate::training_run::{default_run_dir, RunInfo, RunRequest};
use crate::DataArgs;

/// `--budget`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BudgetArg {
    Small,
    Medium,
    Large,
}

/// Arguments of `cnn tune`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn tune                                   # the embedded digits, the default network, about a minute
  cnn tune --budget small --out runs/tune-quick
  cnn tune --data cifar10:~/data/cifar-10-batches-bin --arch resnet20 --budget large

The six steps: 1 the initial loss against ln C, 2 overfitting a small sample,
3 a learning-rate sweep, 4 a coarse random search of lr and weight decay,
5 a refined search with warmup and cosine decay, 6 reading the curves.
The directory gets report.md (a section, a verdict and a next step for each),
overfit.png, lr_sweep.png, coarse.png, refine.png, curves.png and best.json,
which `cnn train --config best.json` takes. Unless --val-fraction is given,
a fifth of the training set is held out to select on (never the test set).")]
pub struct TuneArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[command(flatten)]
    pub(crate) board: crate::BoardArgs,
    #[command(flatten)]
    pub(crate) precision: crate::PrecisionArgs,
    /// The network.
    #[arg(long, default_value = "small", long_help = format!("The network: {ARCH_HELP}"))]
    arch: String,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// none, default (digits and MNIST: crop; others: crop,flip) or a comma list of flip, crop, jitter, cutout.
    #[arg(long, default_value = "default")]
    augment: String,
    /// Seed of the initialization, the data order, the augmentation and every draw of the search.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How many trials and epochs the search spends.
    #[arg(long, value_enum, default_value = "medium")]
    budget: BudgetArg,
    /// Step 2: training images to overfit (10–100 is usual).
    #[arg(long, default_value_t = 50)]
    overfit_samples: usize,
    /// Step 3: the learning rates tried, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.01,0.001,0.0001")]
    lrs: Vec<f64>,
    /// The output directory [default: runs/tune-YYYYMMDD-HHMMSS].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print only the final line.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `cnn tune`.
///
/// # Errors
/// Bad settings, unreadable data, failed writes.
pub fn run(args: TuneArgs, started: Instant) -> Result<ExitCode> {
    let mut split = args.data.split_options();
    let folder = matches!(args.data.data, DataSpec::Folder(_));
    if split.val_fraction == 0.0 && !folder {
        split.val_fraction = 0.2;
    }
    let (info, splits) = RunInfo::prepare(RunRequest {
        spec: &args.data.data,
        split,
        arch: &args.arch,
        batch_size: args.batch_size,
        augment: &args.augment,
        seed: args.seed,
        normalization: None,
        bad_images: args.data.bad_images.unwrap_or_default(),
    })?;
    let out = args.out.clone().unwrap_or_else(|| default_run_dir("tune-"));
    if out.join("report.md").exists() {
        return Err(Error::config(
            "tune",
            format!("{} already holds a tuning report: pick another --out", out.display()),
        ));
    }
    let rgb = arch::build(&info.arch, info.image, info.classes.len(), info.seed)?.rgb;
    let data = TuneData {
        train: info.train_loader(splits.train.clone(), rgb)?,
        plain: info.eval_loader(splits.train.clone(), info.batch_size, rgb)?.with_shuffle(true),
        val: info.eval_loader(splits.val.clone(), 256, rgb)?,
    };
    let budget = match args.budget {
        BudgetArg::Small => Budget::Small,
        BudgetArg::Medium => Budget::Medium,
        BudgetArg::Large => Budget::Large,
    };
    let config = TuneConfig::for_budget(budget)
        .with_seed(args.seed)
        .with_overfit_samples(args.overfit_samples)
        .with_lr_candidates(args.lrs.clone());
    let precision = args.precision.precision.unwrap_or_default();
    let context = vec![
        format!("Data: {} ({} training images of {}, {} for validation: {}; {} classes)", info.data, splits.train.len(), info.image.map(|v| v.to_string()).join("×"), splits.val.len(), splits.val_source, info.classes.len()),
        format!("Network: {} (seed {}), batch size {}, augmentation {}", info.arch, info.seed, info.batch_size, info.augment),
        format!("Budget: {budget:?}; base recipe: SGD with Nesterov momentum 0.9, one-cycle, products in {precision}; the search sets lr, weight decay, epochs and, in step 5, the schedule"),
    ];
    let quiet = args.quiet;
    let board = args.board.on();
    if !quiet {
        println!(
            "tuning {} on {}: {} training images, {} for validation; writing {}",
            info.arch,
            info.data,
            splits.train.len(),
            splits.val.len(),
            out.display()
        );
    }
    // Bars for each trial on a terminal; in a log, the trial lines alone.
    let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let progress = if terminal && !quiet { ProgressMode::Bars } else { ProgressMode::Quiet };
    let base = TrainConfig::default().with_precision(precision);
    let mut tuner = Tuner::new(config, base)
        .with_out_dir(&out)
        .with_progress(progress)
        .with_tensorboard(board)
        .with_context(context)
        .with_log(move |line| {
            if !quiet {
                println!("{line}");
            }
        });
    let arch_name = info.arch.clone();
    let (image, classes) = (info.image, info.classes.len());
    let mut factory = |seed: u64| Ok(arch::build(&arch_name, image, classes, seed)?.model);
    let report = tuner.run(&mut factory, &data);
    // Under --bad-images skip, what was left out is listed whatever the outcome.
    if let Err(e) = info.write_skipped(&out) {
        eprintln!("warning: {e}");
    }
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    match (&report.best, report.best_val_accuracy) {
        (Some(best), Some(acc)) => println!(
            "tuned in {secs:.1} s: best lr {:.3e}, weight decay {:.3e}, {} epochs: validation {:.2}%; report {}; train it with: cnn train --config {}{}",
            best.optimizer.lr,
            best.optimizer.weight_decay,
            best.epochs,
            100.0 * acc,
            out.join("report.md").display(),
            out.join("best.json").display(),
            info.skipped_note(&out)
        ),
        _ => {
            let failed = report.steps.iter().find(|s| s.verdict == Verdict::Fail);
            println!(
                "tuning stopped in {secs:.1} s at step {}: {}; report {}",
                failed.map_or(0, |s| s.number),
                failed.map_or("no configuration trained", |s| s.summary.trim_end_matches('.')),
                out.join("report.md").display()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
