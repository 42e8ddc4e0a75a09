//! `cnn compare`: runs side by side, in numbers and in one picture.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use cnn_tensor::Result;
use cnn_train::{find_checkpoint, plot_runs, History, TrainerState};

/// `cnn compare RUN RUN …`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn train --out runs/f32 && cnn train --precision bf16 --out runs/bf16
  cnn compare runs/f32 runs/bf16 --out f32_vs_bf16.png")]
pub struct CompareArgs {
    /// Run directories of `cnn train` or `cnn finetune` (1 to 10), each
    /// drawn in a colour of its own and named by its directory and precision.
    #[arg(required = true, num_args = 1..=10)]
    runs: Vec<PathBuf>,
    /// Where to draw the training loss, validation loss and validation accuracy of every run.
    #[arg(long, default_value = "compare.png")]
    out: PathBuf,
}

/// Runs `cnn compare`: one line per run (epochs, final losses and accuracy,
/// best accuracy), the picture, and a last line saying where it is.
///
/// # Errors
/// A directory that is not a run, a corrupt `trainer.json`, a picture that cannot be written.
pub fn run(args: CompareArgs) -> Result<ExitCode> {
    let mut runs = Vec::with_capacity(args.runs.len());
    for dir in &args.runs {
        let state = TrainerState::read(&find_checkpoint(dir, "last")?)?;
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        let label = format!("{name} ({})", state.config.precision);
        let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |a| format!("{:.2}%", 100.0 * a));
        let loss = |v: Option<f64>| v.map_or_else(|| "-".into(), |l| format!("{l:.4}"));
        let last = state.history.last();
        println!(
            "{label}: {} epoch{}, train loss {}, validation loss {}, validation accuracy {} (best {})",
            state.history.len(),
            if state.history.len() == 1 { "" } else { "s" },
            loss(last.map(|r| r.train_loss)),
            loss(last.and_then(|r| r.val_loss)),
            pct(last.and_then(|r| r.val_accuracy)),
            pct(state.best_val_accuracy),
        );
        runs.push((label, History { epochs: state.history }));
    }
    plot_runs(&runs, &args.out)?;
    println!("drew {} runs in {}", runs.len(), args.out.display());
    Ok(ExitCode::SUCCESS)
}
