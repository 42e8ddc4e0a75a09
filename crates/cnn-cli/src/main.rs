//! `cnn`: train, evaluate, summarize and inspect convolutional networks on the CPU.

mod arch;
mod augment_spec;
mod classify;
mod compare;
mod data;
mod degradation;
mod env;
mod eval;
mod export;
mod finetune;
mod init_stats;
mod inspect;
mod train;
mod training_run;
mod tune;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::data::DataSpec;

// glibc's malloc hands every multi-MB activation back to the kernel and
// faults it in again on the next step (up to 60% of a BatchNorm forward in
// the benches); mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (15 in its v2 and v3 headers; the
/// bindings leave option numbers to the caller on purpose).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages in the process instead of handing them back to the OS
/// after 10 ms: every step frees and reallocates the same activation sizes,
/// and reusing the pages spares faulting in fresh zeroed ones (7% of an
/// MNIST epoch, measured). The cost is memory held at its peak, as PyTorch's
/// caching allocators do.
fn keep_freed_pages() {
    // SAFETY: sets one integer option; called first thing in `main`, before
    // any other thread exists (the setter is not thread-safe).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "cnn",
    version,
    about = "Train, evaluate and inspect convolutional networks on the CPU.",
    after_help = "Examples:\n  cnn train                                  # the embedded digits, the default recipe\n  cnn train --data mnist:~/data/mnist --epochs 3\n  cnn tune --budget small\n  cnn finetune --weights resnet18.safetensors --arch resnet18 --data folder:~/photos --mode linear-probe\n  cnn eval --run runs/20261127-101500 --tta 8\n  cnn export --run runs/20261127-101500 --onnx model.onnx\n  cnn compare runs/f32 runs/bf16 --out f32_vs_bf16.png\n  cnn summary --arch resnet18\n  cnn augment-preview --data cifar10:~/data/cifar-10-batches-bin --out preview.png\n  cnn stats --data folder:~/photos\n  cnn check-data --data folder:~/photos\n  cnn env                                    # the CNN_* switches: CNN_SIMD, CNN_GEMM_PANEL, CNN_CONV_ALGORITHM, CNN_FUSION"
)]
struct Cli {
    /// Worker threads (default: every core). Results are the same bitwise for any count.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network (with no arguments: the embedded digits, the default recipe).
    Train(Box<train::TrainArgs>),
    /// Run the six-step tuning recipe and write report.md and best.json.
    Tune(Box<tune::TuneArgs>),
    /// Transfer pretrained weights to new data: linear probe, fine-tuning, or named parts.
    Finetune(Box<finetune::FinetuneArgs>),
    /// Evaluate a run's checkpoint (loss, accuracy, per class, confusion matrix), or classify images with pretrained weights.
    Eval(eval::EvalArgs),
    /// Draw runs side by side (training loss, validation loss and accuracy by epoch) and print their final figures.
    Compare(compare::CompareArgs),
    /// Export a run's checkpoint or pretrained weights as an ONNX model (opset 17) for ONNX Runtime, OpenVINO, TensorRT.
    Export(export::ExportArgs),
    /// The activation-statistics probe: each layer's mean and std for several inits, and a plot.
    InitStats(init_stats::InitStatsArgs),
    /// Train ResNets and their plain twins at two depths and plot training error (He et al.'s degradation).
    Degradation(degradation::DegradationArgs),
    /// Print a network's layers, output shapes and parameter counts.
    Summary(inspect::SummaryArgs),
    /// Draw a PNG grid of random draws of an augmentation pipeline.
    AugmentPreview(inspect::PreviewArgs),
    /// Per-channel mean and standard deviation of a data set's training split.
    Stats(inspect::StatsArgs),
    /// Read every image of a data set once and list the unreadable ones.
    CheckData(inspect::CheckArgs),
    /// List the environment switches (CNN_SIMD, CNN_GEMM_PANEL, CNN_CONV_ALGORITHM, CNN_FUSION) and their values here.
    Env(env::EnvArgs),
}

/// Whether a training command writes TensorBoard event files; shared by
/// `train`, `finetune`, `tune` and `degradation`.
#[derive(Args, Debug, Clone, Copy)]
struct BoardArgs {
    /// Write TensorBoard event files (events.out.tfevents.*) beside the metrics: `tensorboard --logdir runs/` [default].
    #[arg(long, overrides_with = "no_tensorboard")]
    tensorboard: bool,
    /// Do not write TensorBoard event files.
    #[arg(long)]
    no_tensorboard: bool,
}

impl BoardArgs {
    /// Whether to log (on unless `--no-tensorboard` came last).
    fn on(self) -> bool {
        !self.no_tensorboard
    }
}

/// `--precision`, shared by `train`, `finetune`, `tune` and `eval`; parsed
/// by `cnn_tensor::Precision`'s own `FromStr` (one parser for the name).
#[derive(Args, Debug, Clone, Copy)]
struct PrecisionArgs {
    /// Products in f32, or bf16: mixed precision as PyTorch's CPU autocast
    /// (convolutions and linear layers take bf16 inputs and sum in f32; norms,
    /// the loss, the optimizer, weights and checkpoints stay f32). Fast on
    /// CPUs with AVX512-BF16; elsewhere the same numbers, slower than f32
    /// [default: f32; a recipe's or a run's own where there is one].
    #[arg(long, value_name = "f32|bf16", value_parser = parse_precision)]
    precision: Option<cnn_tensor::Precision>,
}

/// `--precision`'s value.
fn parse_precision(s: &str) -> std::result::Result<cnn_tensor::Precision, String> {
    s.parse().map_err(|e: cnn_tensor::Error| e.to_string())
}

/// How to split a data set; shared by every command that reads one.
#[derive(Args, Debug, Clone)]
struct DataArgs {
    /// digits | mnist:DIR | cifar10:DIR | cifar100:DIR | folder:DIR
    #[arg(long, default_value = "digits", value_parser = parse_data)]
    data: DataSpec,
    /// Folder data: the held-out share (default 0.2); other data: a validation
    /// split carved from training (default 0: validate on the test split; `tune` 0.2).
    #[arg(long, default_value_t = 0.0)]
    val_fraction: f64,
    /// Folder data: a directory of validation images (one sub-directory per class).
    #[arg(long)]
    val_dir: Option<PathBuf>,
    /// Images are resized to SIZE×SIZE [default: folder data 64 (224 for
    /// `finetune`), other data sets their own size].
    #[arg(long, value_parser = parse_size)]
    image_size: Option<usize>,
    /// An image that cannot be read (corrupt, truncated, vanished): `fail`
    /// stops with its name; `skip` leaves it out, lists it in the run's
    /// skipped.txt and counts it in the final line [default: fail; on
    /// --resume, what the run used]. `cnn check-data` lists them beforehand.
    #[arg(long, value_enum)]
    bad_images: Option<training_run::BadImages>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|v| (1..=4096).contains(v))
        .ok_or_else(|| format!("expected a size from 1 to 4096, got {s:?}"))
}

fn parse_data(s: &str) -> Result<DataSpec, String> {
    s.parse()
}

impl DataArgs {
    fn split_options(&self) -> data::SplitOptions {
        self.split_options_sized(None)
    }

    /// The split options with `default_size` when `--image-size` is not given.
    fn split_options_sized(&self, default_size: Option<usize>) -> data::SplitOptions {
        let size = self.image_size.or(default_size);
        let folder = matches!(self.data, DataSpec::Folder(_));
        data::SplitOptions {
            val_fraction: self.val_fraction,
            val_dir: self.val_dir.clone(),
            image_size: size.unwrap_or(64),
            resize: if folder { None } else { size },
            split_seed: 0,
        }
    }
}

/// Ends the process quietly when the reader of its output goes away
/// (`cnn train | head -1`), as Unix commands do: Rust ignores SIGPIPE, which
/// turns the next `println!` into a panic.
fn die_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores one signal's default disposition; called first thing
    // in `main`, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    die_on_closed_pipe();
    // A decoder's panic on a user's file is contained and reported as one
    // `error:` line naming the file; the hook keeps it from printing twice.
    cnn_tensor::untrusted::quiet_contained_panics();
    keep_freed_pages();
    let started = Instant::now();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Fails only if a pool exists already, which cannot be the case here.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.into()).build_global();
    }
    // A folder's unreadable image: the error says how to get past it.
    let data = match &cli.command {
        Command::Train(a) => Some(&a.data),
        Command::Tune(a) => Some(&a.data),
        Command::Finetune(a) => Some(&a.data),
        Command::AugmentPreview(a) => Some(&a.data),
        Command::Stats(a) => Some(&a.data),
        Command::CheckData(a) => Some(&a.data),
        _ => None,
    };
    let folder = data.is_some_and(|d| matches!(d.data, DataSpec::Folder(_)));
    let result = match cli.command {
        Command::Train(args) => train::run(*args, started, cli.threads.is_some()),
        Command::Tune(args) => tune::run(*args, started),
        Command::Finetune(args) => finetune::run(*args, started),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Compare(args) => compare::run(args),
        Command::InitStats(args) => init_stats::init_stats(args),
        Command::Degradation(args) => degradation::degradation(args, started),
        Command::Summary(args) => inspect::summary(args),
        Command::AugmentPreview(args) => inspect::preview(args),
        Command::Stats(args) => inspect::stats(args),
        Command::CheckData(args) => inspect::check_data(args),
        Command::Env(args) => env::run(args),
    }
    .map_err(|e| training_run::bad_image_hint(e, folder));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
