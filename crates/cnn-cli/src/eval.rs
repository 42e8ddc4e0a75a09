//! `cnn eval`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use cnn_nn::load_state_dict;
use cnn_tensor::Result;
use cnn_train::checkpoint::MODEL_FILE;
use cnn_train::{evaluate, evaluate_tta, find_checkpoint, plot_confusion, TrainerState};

use crate::data::DataSpec;
use crate::parse_data;
use crate::training_run::RunInfo;

/// Which checkpoint of a run (`cnn eval`, `cnn export`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Which {
    /// The end of the last epoch (the model `cnn train` reported on).
    Last,
    /// The epoch of the best validation accuracy.
    Best,
}

impl Which {
    /// The checkpoint directory's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::Last => "last",
            Which::Best => "best",
        }
    }
}

/// Arguments of `cnn eval`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn eval --run runs/20261127-101500               # the run's test split, last checkpoint
  cnn eval --run runs/20261127-101500 --tta 8       # average 8 views (the original + 7 augmented)
  cnn eval --run runs/20261127-101500 --checkpoint best --data mnist:~/other-mnist
  cnn eval --weights resnet18.safetensors --arch resnet18 --image cat.jpg dog.png --labels imagenet.txt")]
pub struct EvalArgs {
    /// The run directory of `cnn train`.
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    run: Option<PathBuf>,
    /// Pretrained weights (safetensors) to classify --image files with, instead of a run.
    #[arg(long, requires = "image")]
    weights: Option<PathBuf>,
    /// With --weights: the network they belong to.
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// With --weights: images to classify; prints each path and its top-5 as class:probability.
    #[arg(long, num_args = 1.., requires = "weights")]
    image: Vec<PathBuf>,
    /// With --weights: a file of class names, one per line in class order.
    #[arg(long, requires = "weights")]
    labels: Option<PathBuf>,
    /// With --weights: the side of the center crop (after resizing the shorter side to size·256/224).
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// With --weights: per-channel mean, comma-separated [default: the run's
    /// when the weights sit in a cnn run, else ImageNet's].
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Vec<f64>,
    /// With --weights: per-channel std, comma-separated [default: as --mean].
    #[arg(long, value_delimiter = ',')]
    std: Vec<f64>,
    /// Which checkpoint.
    #[arg(long, value_enum, default_value = "last")]
    checkpoint: Which,
    /// Another data set of the same classes and image size (default: the run's); its test split is used.
    #[arg(long, value_parser = parse_data)]
    data: Option<DataSpec>,
    /// Test-time augmentation: average the softmax over N views (1: none).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    tta: u32,
    /// Images per forward.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Where to draw the confusion matrix [default: RUN/confusion.png].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    precision: crate::PrecisionArgs,
}

/// Runs `cnn eval`.
///
/// # Errors
/// A directory that is not a run, a corrupt checkpoint, data that does not fit the run.
pub fn run(args: EvalArgs) -> Result<ExitCode> {
    if let Some(weights) = &args.weights {
        let (norm, _) =
            crate::finetune::pretrained_normalization(weights, "", &args.mean, &args.std)?;
        let (mean, std) = norm.unwrap_or_else(|| {
            (crate::finetune::IMAGENET_MEAN.to_vec(), crate::finetune::IMAGENET_STD.to_vec())
        });
        let precision = args.precision.precision.unwrap_or_default();
        let failed = cnn_tensor::with_precision(precision, || {
            crate::classify::classify(&crate::classify::ClassifyRequest {
                weights,
                arch: &args.arch,
                images: &args.image,
                labels: args.labels.as_deref(),
                size: args.image_size,
                mean: &mean,
                std: &std,
            })
        })?;
        // As `cat` or `ls` with a missing file: the others are done, the exit status says not all were.
        return Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let Some(run) = args.run.clone() else {
        return Err(cnn_tensor::Error::config(
            "eval",
            "give --run DIR, or --weights FILE with --image",
        ));
    };
    let dir = find_checkpoint(&run, args.checkpoint.name())?;
    let state = TrainerState::read(&dir)?;
    let info = RunInfo::from_metadata(&state.metadata, &run)?;
    let mut built = info.build_model()?;
    load_state_dict(&mut *built.model, &dir.join(MODEL_FILE), cnn_nn::LoadMode::Strict)?;
    let spec = match args.data {
        Some(d) => d,
        None => info.data_spec()?,
    };
    let splits = info.load_splits(&spec)?;
    let plain = info.eval_loader(splits.test.clone(), args.batch_size, built.rgb)?;
    // The run's precision unless --precision says otherwise.
    let precision = args.precision.precision.unwrap_or(state.config.precision);
    let report = cnn_tensor::with_precision(precision, || {
        if args.tta > 1 {
            let views = info.tta_loader(splits.test.clone(), args.batch_size, built.rgb)?;
            evaluate_tta(&mut *built.model, &plain, &views, args.tta as usize)
        } else {
            evaluate(&mut *built.model, &plain)
        }
    })?;
    let png = args.out.clone().unwrap_or_else(|| run.join("confusion.png"));
    plot_confusion(&report.confusion, &report.classes, &png)?;
    println!(
        "{} after epoch {}, on the test split of {spec}, products in {precision}",
        dir.display(),
        state.epoch
    );
    print!("{}", report.table());
    if let Some(top5) = report.top5 {
        println!("top-5 accuracy {:.2}%", 100.0 * top5);
    }
    println!("confusion matrix drawn in {}", png.display());
    let tta = if args.tta > 1 { format!(", {} views averaged", args.tta) } else { String::new() };
    println!(
        "test accuracy {:.2}% (loss {:.4}) on {} images{tta}",
        100.0 * report.accuracy,
        report.loss,
        report.count
    );
    Ok(ExitCode::SUCCESS)
}
