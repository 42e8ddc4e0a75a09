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
use crate::run::RunInfo;

/// Which checkpoint of a run.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Which {
    /// The end of the last epoch (the model `cnn train` reported on).
    Last,
    /// The epoch of the best validation accuracy.
    Best,
}

/// Arguments of `cnn eval`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn eval --run runs/20261127-101500               # the run's test split, last checkpoint
  cnn eval --run runs/20261127-101500 --tta 8       # average 8 views (the original + 7 augmented)
  cnn eval --run runs/20261127-101500 --checkpoint best --data mnist:~/other-mnist")]
pub struct EvalArgs {
    /// The run directory of `cnn train`.
    #[arg(long)]
    run: PathBuf,
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
}

/// Runs `cnn eval`.
///
/// # Errors
/// A directory that is not a run, a corrupt checkpoint, data that does not fit the run.
pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let name = match args.checkpoint {
        Which::Last => "last",
        Which::Best => "best",
    };
    let dir = find_checkpoint(&args.run, name)?;
    let state = TrainerState::read(&dir)?;
    let info = RunInfo::from_metadata(&state.metadata, &args.run)?;
    let mut built = info.build_model()?;
    load_state_dict(&mut *built.model, &dir.join(MODEL_FILE), true)?;
    let spec = match args.data {
        Some(d) => d,
        None => info.data_spec()?,
    };
    let splits = info.load_splits(&spec)?;
    let plain = info.eval_loader(splits.test.clone(), args.batch_size, built.rgb)?;
    let report = if args.tta > 1 {
        let views = info.tta_loader(splits.test.clone(), args.batch_size, built.rgb)?;
        evaluate_tta(&mut *built.model, &plain, &views, args.tta as usize)?
    } else {
        evaluate(&mut *built.model, &plain)?
    };
    let png = args.out.unwrap_or_else(|| args.run.join("confusion.png"));
    plot_confusion(&report.confusion, &report.classes, &png)?;
    println!("{} after epoch {}, on the test split of {spec}", dir.display(), state.epoch);
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
