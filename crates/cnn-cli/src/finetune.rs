//! `cnn finetune`: transfer pretrained weights (torchvision's, timm's, or a
//! `cnn train` run's) to a new data set by a linear probe, fine-tuning, or
//! training named parts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use cnn_tensor::{Error, Result};
use cnn_train::{
    load_pretrained, set_transfer_mode, PretrainedOptions, ProgressMode, ScheduleKind, TrainConfig,
    Trainer, TransferMode,
};

use crate::arch::{self, ARCH_HELP};
use crate::training_run::{default_run_dir, fit_run, RunInfo, RunRequest};
use crate::DataArgs;

/// A per-channel mean and standard deviation.
pub type Normalization = (Vec<f64>, Vec<f64>);

/// ImageNet's per-channel mean (torchvision's and timm's ResNets).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Train only a new head on the frozen pretrained features.
    LinearProbe,
    /// Train every layer, the backbone at --backbone-lr-mult × the lr.
    Finetune,
    /// Train the parts named by --trainable, freeze the rest.
    Partial,
}

/// Arguments of `cnn finetune`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn finetune --weights resnet18.safetensors --arch resnet18 --data folder:~/photos --mode linear-probe
  cnn finetune --weights resnet18.safetensors --arch resnet18 --data folder:~/photos --mode finetune --epochs 10
  cnn finetune --weights resnet50.safetensors --arch resnet50 --data folder:~/photos --mode partial --trainable layer4,fc
  cnn finetune --weights runs/digits/best/model.safetensors --arch small --data mnist:~/mnist --mode finetune

The weights: a torchvision state_dict saved with safetensors.torch.save_file,
timm's model.safetensors, or a cnn run's model.safetensors, as they are
(f16/bf16 converted; a `module.` or other shared key prefix stripped). Every
backbone key must match; the head is replaced for the new classes. A linear
probe without augmentation computes the frozen features once and trains the
head on them. See docs/transfer.md.")]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[command(flatten)]
    pub(crate) board: crate::BoardArgs,
    #[command(flatten)]
    pub(crate) precision: crate::PrecisionArgs,
    /// The pretrained weights (safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// The network the weights belong to.
    #[arg(long, default_value = "resnet18", long_help = format!("The network: {ARCH_HELP}"))]
    arch: String,
    /// What trains.
    #[arg(long, value_enum, default_value = "linear-probe")]
    mode: Mode,
    /// With --mode partial: the key prefixes that train, comma-separated (layer4,fc).
    #[arg(long, value_delimiter = ',')]
    trainable: Vec<String>,
    /// With --mode finetune: the backbone's lr as a multiple of --lr.
    #[arg(long, default_value_t = 0.1)]
    backbone_lr_mult: f64,
    /// A key prefix to strip from the file's keys [default: detected, e.g. `module.`].
    #[arg(long)]
    strip_prefix: Option<String>,
    /// A JSON object renaming the file's keys: {"old.key": "new.key", "old.prefix.": "new.prefix."}.
    #[arg(long)]
    rename: Option<PathBuf>,
    /// Per-channel mean, comma-separated [default: ImageNet's for ImageNet networks,
    /// the run's for a cnn run's weights, else the training split's].
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Vec<f64>,
    /// Per-channel standard deviation, comma-separated [default: as --mean].
    #[arg(long, value_delimiter = ',')]
    std: Vec<f64>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Learning rate of the head (peak of warmup-cosine) [default: 0.1 for linear-probe, 0.01 otherwise].
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// auto (none for linear-probe, else default), none, default, or a comma list of flip, crop, jitter, cutout.
    #[arg(long, default_value = "auto")]
    augment: String,
    /// Compute a linear probe's features per step instead of once.
    #[arg(long)]
    no_cache: bool,
    /// Seed of the new head, the data order and the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The run directory [default: runs/finetune-YYYYMMDD-HHMMSS].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print only the final line.
    #[arg(long, short)]
    quiet: bool,
    /// Print where the wall time went, phase by phase (start-up, waiting for
    /// data, the first step, the other steps, optimizer, validation,
    /// checkpoints, metrics and curves, test), before the final line.
    #[arg(long)]
    profile: bool,
}

/// The normalization that goes with pretrained weights: given, the run's
/// (when the weights sit in a `cnn train` run), ImageNet's for ImageNet
/// networks, or none (the training split's statistics).
pub fn pretrained_normalization(
    weights: &Path,
    arch: &str,
    mean: &[f64],
    std: &[f64],
) -> Result<(Option<Normalization>, String)> {
    if !mean.is_empty() || !std.is_empty() {
        if mean.len() != std.len() {
            return Err(Error::config("normalize", "--mean and --std need as many values"));
        }
        return Ok((Some((mean.to_vec(), std.to_vec())), "as given".into()));
    }
    let trainer_json = weights.parent().map(|d| d.join(cnn_train::checkpoint::TRAINER_FILE));
    if let Some(path) = trainer_json.filter(|p| p.is_file()) {
        let dir = path.parent().unwrap_or(Path::new("."));
        let state = cnn_train::TrainerState::read(dir)?;
        if let Ok(info) = RunInfo::from_metadata(&state.metadata, dir) {
            return Ok((
                Some((info.mean, info.std)),
                format!("the pretraining run's ({})", path.display()),
            ));
        }
    }
    if arch == "small" {
        return Ok((None, "the training split's (no pretraining statistics known)".into()));
    }
    Ok((Some((IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())), "ImageNet's".into()))
}

fn read_rename(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let context = path.display().to_string();
    let map: BTreeMap<String, String> =
        cnn_tensor::untrusted::contain_panic(&context, "the JSON parser", || {
            serde_json::from_slice(&text).map_err(|e| {
                Error::format(&context, format!("expected a JSON object of key renames: {e}"))
            })
        })?;
    Ok(map.into_iter().collect())
}

/// Runs `cnn finetune`.
///
/// # Errors
/// Unreadable weights or data, weights that do not fit the network, bad settings.
pub fn run(args: FinetuneArgs, started: Instant) -> Result<ExitCode> {
    let mode = match args.mode {
        Mode::LinearProbe => TransferMode::LinearProbe,
        Mode::Finetune => TransferMode::Finetune,
        Mode::Partial if args.trainable.is_empty() => {
            return Err(Error::config(
                "finetune",
                "--mode partial needs --trainable, e.g. layer4,fc",
            ))
        }
        Mode::Partial => TransferMode::Partial(args.trainable.clone()),
    };
    let augment = match (args.augment.as_str(), args.mode) {
        ("auto", Mode::LinearProbe) => "none".to_string(),
        ("auto", _) => "default".to_string(),
        (a, _) => a.to_string(),
    };
    let (normalization, norm_source) =
        pretrained_normalization(&args.weights, &args.arch, &args.mean, &args.std)?;
    let default_size = (args.arch != "small").then_some(224);
    let (info, splits) = RunInfo::prepare(RunRequest {
        spec: &args.data.data,
        split: args.data.split_options_sized(default_size),
        arch: &args.arch,
        batch_size: args.batch_size,
        augment: &augment,
        seed: args.seed,
        normalization,
        bad_images: args.data.bad_images.unwrap_or_default(),
    })?;
    let out = args.out.clone().unwrap_or_else(|| default_run_dir("finetune-"));
    if out.join("last").exists() {
        return Err(Error::config(
            "finetune",
            format!("{} already holds a run: pick another --out", out.display()),
        ));
    }
    let say = |line: String| {
        if !args.quiet {
            println!("{line}");
        }
    };
    let mut built = arch::build(&info.arch, info.image, info.classes.len(), info.seed)?;
    let options = PretrainedOptions {
        strip_prefix: args.strip_prefix.clone(),
        rename: args.rename.as_deref().map(read_rename).transpose()?.unwrap_or_default(),
        seed: args.seed,
    };
    let report = load_pretrained(&mut *built.model, &args.weights, info.classes.len(), &options)?;
    say(format!(
        "{}: {}",
        args.weights.display(),
        report.to_string().trim_end().replace('\n', "; ")
    ));
    let heads = set_transfer_mode(&mut *built.model, &mode, &report.head)?;
    let (total, trainable) = cnn_nn::count_params(&*built.model);
    let lr = args.lr.unwrap_or(if args.mode == Mode::LinearProbe { 0.1 } else { 0.01 });
    let mut config = TrainConfig::default()
        .with_epochs(args.epochs)
        .with_lr(lr)
        .with_weight_decay(args.weight_decay)
        .with_schedule(ScheduleKind::WarmupCosine)
        .with_seed(args.seed)
        .with_precision(args.precision.precision.unwrap_or_default());
    if args.mode == Mode::Finetune {
        config = config.with_head(heads).with_backbone_lr_mult(args.backbone_lr_mult);
    }
    config.validate()?;
    say(format!(
        "{:?} of {} on {}{}: {trainable} of {total} parameters train; {} training images of {}, {} for validation; normalization {norm_source}; run directory {}",
        args.mode,
        info.arch,
        info.data,
        crate::training_run::precision_words(config.precision),
        splits.train.len(),
        info.image.map(|v| v.to_string()).join("×"),
        splits.val.len(),
        out.display()
    ));
    if let Some(note) = crate::training_run::precision_note(config.precision) {
        say(format!("note: {note}"));
    }
    let mut info = info;
    info.trainable = match &mode {
        TransferMode::Finetune => None,
        TransferMode::LinearProbe => Some(vec![report.head.clone()]),
        TransferMode::Partial(p) => Some(p.clone()),
    };
    info.cached_features = args.mode == Mode::LinearProbe && augment == "none" && !args.no_cache;
    let trainer = Trainer::new(config)
        .with_progress(if args.quiet { ProgressMode::Quiet } else { ProgressMode::Auto })
        .with_tensorboard(args.board.on());
    let Some((result, times)) = fit_run(&info, &mut built, &splits, trainer, &out, &say, None)?
    else {
        return Ok(ExitCode::from(130));
    };
    if args.profile {
        print!("{}", times.table(started));
    }
    println!(
        "{:?}: test accuracy {:.2}% (loss {:.4}) in {:.1} s; run saved in {}{}",
        args.mode,
        100.0 * result.accuracy,
        result.loss,
        started.elapsed().as_secs_f64(),
        out.display(),
        info.skipped_note(&out)
    );
    Ok(ExitCode::SUCCESS)
}
