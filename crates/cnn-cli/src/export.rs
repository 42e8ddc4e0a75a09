//! `cnn export`: a run's checkpoint or pretrained weights as an ONNX model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use cnn_nn::{export_onnx_with, load_state_dict, OnnxConfig, ONNX_INPUT, ONNX_OUTPUT};
use cnn_tensor::{Error, Result};
use cnn_train::checkpoint::MODEL_FILE;
use cnn_train::{find_checkpoint, TrainerState};

use crate::eval::Which;
use crate::training_run::RunInfo;

/// Arguments of `cnn export`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn export --run runs/20261127-101500 --onnx digits.onnx
  cnn export --run runs/20261127-101500 --checkpoint best --onnx best.onnx
  cnn export --weights resnet18.safetensors --arch resnet18 --onnx resnet18.onnx

The model is the network in eval mode: input `input` [batch, C, H, W] of
normalized pixels ((x/255 - mean) / std, recorded in the file's metadata),
output `logits` [batch, classes]. docs/deploy.md runs it in onnxruntime.")]
pub struct ExportArgs {
    /// The run directory of `cnn train` or `cnn finetune`.
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    run: Option<PathBuf>,
    /// Which checkpoint of the run.
    #[arg(long, value_enum, default_value = "last")]
    checkpoint: Which,
    /// Pretrained weights (safetensors) instead of a run.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// With --weights: the network they belong to.
    #[arg(long, default_value = "resnet18", requires = "weights")]
    arch: String,
    /// With --weights: the side of the square input [default: 224, 32 for the CIFAR ResNets].
    #[arg(long, requires = "weights")]
    image_size: Option<usize>,
    /// With --weights: a file of class names, one per line in class order, for the metadata.
    #[arg(long, requires = "weights")]
    labels: Option<PathBuf>,
    /// With --weights: per-channel mean for the metadata, comma-separated
    /// [default: the run's when the weights sit in a cnn run, else ImageNet's].
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, requires = "weights")]
    mean: Vec<f64>,
    /// With --weights: per-channel std [default: as --mean].
    #[arg(long, value_delimiter = ',', requires = "weights")]
    std: Vec<f64>,
    /// Keep each BatchNorm as a BatchNormalization node instead of folding it into the conv before it.
    #[arg(long)]
    no_fold_batch_norm: bool,
    /// Where to write the model.
    #[arg(long)]
    onnx: PathBuf,
}

/// A network to export and what the metadata says of it.
struct Source {
    built: crate::arch::Built,
    arch: String,
    image: [usize; 3],
    classes: Vec<String>,
    mean: Vec<f64>,
    std: Vec<f64>,
    from: String,
}

fn from_run(run: &std::path::Path, which: Which) -> Result<Source> {
    let dir = find_checkpoint(run, which.name())?;
    let state = TrainerState::read(&dir)?;
    let info = RunInfo::from_metadata(&state.metadata, run)?;
    let mut built = info.build_model()?;
    load_state_dict(&mut *built.model, &dir.join(MODEL_FILE), cnn_nn::LoadMode::Strict)?;
    // Gray images are repeated into RGB for three-channel networks.
    let channels = if built.rgb { 3 } else { info.image[0] };
    // One value per channel; a gray run's single value repeated for RGB.
    let repeat = |v: &[f64], what: &str| match v {
        _ if v.len() == channels => Ok(v.to_vec()),
        [one] => Ok(vec![*one; channels]),
        _ => Err(Error::format(
            dir.display(),
            format!("the run's {what} has {} values for {channels} channels", v.len()),
        )),
    };
    Ok(Source {
        arch: info.arch.clone(),
        image: [channels, info.image[1], info.image[2]],
        classes: info.classes.clone(),
        mean: repeat(&info.mean, "mean")?,
        std: repeat(&info.std, "std")?,
        from: format!("{} after epoch {}", dir.display(), state.epoch),
        built,
    })
}

fn from_weights(args: &ExportArgs, weights: &std::path::Path) -> Result<Source> {
    let size = args.image_size.unwrap_or(crate::arch::default_input(&args.arch)[1]);
    let (built, classes, channels) = crate::classify::load_pretrained(weights, &args.arch, size)?;
    let (norm, _) =
        crate::finetune::pretrained_normalization(weights, &args.arch, &args.mean, &args.std)?;
    let (mean, std) = norm.unwrap_or_else(|| {
        (crate::finetune::IMAGENET_MEAN.to_vec(), crate::finetune::IMAGENET_STD.to_vec())
    });
    let names = match &args.labels {
        Some(path) => crate::classify::read_labels(path, classes, "export")?,
        None => Vec::new(),
    };
    Ok(Source {
        built,
        arch: args.arch.clone(),
        image: [channels, size, size],
        classes: names,
        mean,
        std,
        from: weights.display().to_string(),
    })
}

/// Runs `cnn export`.
///
/// # Errors
/// A directory that is not a run, unreadable or unfitting weights, a layer
/// with no ONNX mapping, a file that cannot be written.
pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let source = match (&args.run, &args.weights) {
        (Some(run), _) => from_run(run, args.checkpoint)?,
        (None, Some(weights)) => from_weights(&args, weights)?,
        (None, None) => {
            return Err(Error::config("export", "give --run DIR, or --weights FILE with --arch"))
        }
    };
    let json = |v: &serde_json::Value| v.to_string();
    let [c, h, w] = source.image;
    let mut config = OnnxConfig::default()
        .with_fold_batch_norm(!args.no_fold_batch_norm)
        .with_metadata("arch", source.arch.clone())
        .with_metadata("image_size", json(&serde_json::json!([c, h, w])))
        .with_metadata("mean", json(&serde_json::json!(source.mean)))
        .with_metadata("std", json(&serde_json::json!(source.std)))
        .with_metadata("normalization", "input = (pixel / 255 - mean) / std, per channel")
        .with_metadata("source", source.from.clone())
        .with_doc_string(format!("{} exported by cnn {}", source.arch, env!("CARGO_PKG_VERSION")));
    if !source.classes.is_empty() {
        config = config.with_metadata("classes", json(&serde_json::json!(source.classes)));
    }
    let report = export_onnx_with(&*source.built.model, &[1, c, h, w], &args.onnx, &config)?;
    let classes = if source.classes.is_empty() {
        String::new()
    } else {
        format!(", {} classes", source.classes.len())
    };
    println!(
        "exported {} ({} nodes, {} weights, {:.1} MB{classes}) to {} in {:.2} s; input `{ONNX_INPUT}` [batch, {c}, {h}, {w}], output `{ONNX_OUTPUT}`",
        source.arch,
        report.nodes,
        report.initializers,
        report.bytes as f64 / 1e6,
        args.onnx.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
