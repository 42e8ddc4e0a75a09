//! `cnn summary`, `cnn augment-preview`, `cnn stats` and `cnn check-data`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use cnn_data::{
    channel_stats_with, first_of_each_class, preview_grid, Dataset, ImageFolder, SampleName,
};
use cnn_tensor::untrusted::contain_panic;
use cnn_tensor::{Error, Result};

use crate::arch::{self, ARCH_HELP};
use crate::augment_spec::{augmentations, parse_augment};
use crate::data;
use crate::DataArgs;

/// Arguments of `cnn summary`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn summary                         # the default network for the digits
  cnn summary --arch resnet20
  cnn summary --arch resnet18 --input 3x224x224 --classes 1000")]
pub struct SummaryArgs {
    /// The network.
    #[arg(long, default_value = "small", long_help = format!("The network: {ARCH_HELP}"))]
    arch: String,
    /// Input as CxHxW [default: 1x8x8 for small, 3x32x32 for CIFAR ResNets, else 3x224x224].
    #[arg(long, value_parser = parse_input)]
    input: Option<[usize; 3]>,
    /// Number of classes [default: 10, or 1000 for ImageNet networks].
    #[arg(long)]
    classes: Option<usize>,
}

fn parse_input(s: &str) -> std::result::Result<[usize; 3], String> {
    let dims: Vec<usize> = s
        .split(['x', '×'])
        .map(|d| d.trim().parse::<usize>().ok().filter(|&v| v > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("expected CxHxW with positive sizes, like 3x32x32, got {s:?}"))?;
    dims.try_into().map_err(|_| format!("expected three sizes CxHxW, like 3x32x32, got {s:?}"))
}

/// Runs `cnn summary`.
///
/// # Errors
/// An unknown architecture, or an input the network cannot take.
pub fn summary(args: SummaryArgs) -> Result<ExitCode> {
    let input = args.input.unwrap_or_else(|| arch::default_input(&args.arch));
    let classes = args.classes.unwrap_or(if input[1] >= 224 { 1000 } else { 10 });
    let mut built = arch::build(&args.arch, input, classes, 0)?;
    if built.rgb && input[0] != 3 {
        return Err(Error::config(
            "summary",
            format!("{} takes 3 input channels, got {}", args.arch, input[0]),
        ));
    }
    let (_, table) = cnn_nn::summary(&mut *built.model, &[1, input[0], input[1], input[2]])?;
    print!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `cnn augment-preview`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn augment-preview --out preview.png                       # digits, the default augmentation
  cnn augment-preview --data cifar10:~/data/cifar-10-batches-bin --augment crop,flip,jitter,cutout --out p.png")]
pub struct PreviewArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// none, default or a comma list of flip, crop, jitter, cutout.
    #[arg(long, default_value = "default")]
    augment: String,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Rows: samples, one per class in turn.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Random draws per sample (after the original).
    #[arg(long, default_value_t = 8)]
    draws: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `cnn augment-preview`.
///
/// # Errors
/// Unreadable data, a bad augmentation spec, a failed write.
pub fn preview(args: PreviewArgs) -> Result<ExitCode> {
    let spec = &args.data.data;
    let augs = parse_augment(&args.augment, spec)?;
    let splits = data::load(spec, &args.data.split_options())?;
    let (policy, _) = bad_samples(&args.data);
    let image = splits.image_shape(&policy)?;
    // The first sample of each class in turn, so the rows show the classes.
    let train = &*splits.train;
    let picked = first_of_each_class(train, args.samples, |i| {
        Ok(policy.read(train, i, i as u64)?.map(|(img, _)| img))
    })?;
    let pipe = augmentations(&augs, image)?;
    let scale = (96 / image[1].max(image[2])).clamp(1, 12);
    preview_grid(&picked, &pipe, args.draws, args.seed, scale, &args.out)?;
    println!(
        "wrote {} ({} samples of {spec}, the original then {} draws of {})",
        args.out.display(),
        picked.len(),
        args.draws,
        if augs.is_empty() {
            "no augmentation".to_string()
        } else {
            format!("{augs:?}").to_lowercase()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `cnn stats`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn stats
  cnn stats --data cifar10:~/data/cifar-10-batches-bin")]
pub struct StatsArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

/// Runs `cnn stats`.
///
/// # Errors
/// Unreadable data.
pub fn stats(args: StatsArgs) -> Result<ExitCode> {
    let spec = &args.data.data;
    let splits = data::load(spec, &args.data.split_options())?;
    let (policy, log) = bad_samples(&args.data);
    let (mean, std) = channel_stats_with(&*splits.train, &policy)?;
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
    let skipped = match log.0.len() {
        0 => String::new(),
        n => format!(" ({n} unreadable left out: cnn check-data lists them)"),
    };
    println!(
        "{spec}: {} training images of {}, {} classes: mean [{}] std [{}]{skipped}",
        splits.train.len() - log.0.len(),
        splits.image_shape(&policy)?.map(|v| v.to_string()).join("×"),
        splits.classes().len(),
        fmt(&mean),
        fmt(&std)
    );
    Ok(ExitCode::SUCCESS)
}

/// The loader policy `--bad-images` asks for (default fail), and its log.
fn bad_samples(args: &DataArgs) -> (cnn_data::BadSamples, crate::training_run::SharedSkipLog) {
    let log = crate::training_run::SharedSkipLog::default();
    (crate::training_run::policy(args.bad_images.unwrap_or_default(), &log), log)
}

/// Arguments of `cnn check-data`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn check-data --data folder:~/photos
  cnn check-data --data folder:~/photos --val-dir ~/photos-val

Reads every image once (in parallel, as training would decode it) and lists
each one that cannot be read with its error, so a folder can be cleaned
before a long run (or trained with --bad-images skip). Exits 1 when any image
is unreadable.")]
pub struct CheckArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

/// Runs `cnn check-data`: every sample read once; each unreadable one
/// printed (`error: …` naming it), then one summary line.
///
/// # Errors
/// A data set that cannot be opened at all (a missing directory, an empty class).
pub fn check_data(args: CheckArgs) -> Result<ExitCode> {
    use rayon::prelude::*;
    let started = std::time::Instant::now();
    let spec = &args.data.data;
    let opts = args.data.split_options();
    let sets: Vec<Arc<dyn Dataset>> = match spec {
        // Every file of the folder (and of --val-dir), not a split of them.
        data::DataSpec::Folder(dir) => {
            let size = [opts.image_size, opts.image_size];
            let mut sets: Vec<Arc<dyn Dataset>> = vec![Arc::new(ImageFolder::new(dir, size)?)];
            if let Some(val) = &opts.val_dir {
                sets.push(Arc::new(ImageFolder::new(val, size)?));
            }
            sets
        }
        // The other formats are parsed whole when opened; their samples are read here too.
        _ => {
            let splits = data::load(spec, &opts)?;
            vec![splits.train, splits.test]
        }
    };
    let total: usize = sets.iter().map(|d| d.len()).sum();
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("reading {pos}/{len} images {bar:30} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut bad: Vec<String> = Vec::new();
    for set in &sets {
        let errors: Vec<String> = (0..set.len())
            .into_par_iter()
            .filter_map(|i| {
                let name = SampleName { dataset: &**set, index: i };
                let read = contain_panic(name, "the dataset's reader", || set.get(i));
                bar.inc(1);
                read.err().map(|e| e.to_string())
            })
            .collect();
        bad.extend(errors);
    }
    bar.finish_and_clear();
    for e in &bad {
        println!("error: {e}");
    }
    let secs = started.elapsed().as_secs_f64();
    if bad.is_empty() {
        println!("{spec}: all {total} images readable ({secs:.1} s)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{spec}: {} of {total} images unreadable, listed above ({secs:.1} s); remove them, or train with --bad-images skip",
        bad.len()
    );
    Ok(ExitCode::FAILURE)
}
