//! `cnn init-stats`: the activation-statistics probe of the lecture (why the
//! initialization scale matters), each layer's mean and std for several
//! inits, and a plot.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use cnn_init::{activation_stats, ProbeActivation, ProbeConfig, ProbeInit};
use cnn_tensor::{Error, Result};
use cnn_train::LineChart;

/// Arguments of `cnn init-stats`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn init-stats                                  # 7 layers of 4096, ReLU, four inits
  cnn init-stats --act tanh --init normal:0.01,normal:0.05,xavier,kaiming
  cnn init-stats --dims 1024x10 --out deep.png

Unit Gaussian inputs go through linear layers, each followed by the
activation; the output's mean and std are printed per layer and drawn
(log scale) in the PNG. Too small and the signal vanishes, too large and it
explodes or saturates; Kaiming keeps it level.")]
pub struct InitStatsArgs {
    /// Layer widths: WIDTHxDEPTH (4096x7) or a comma list (512,256,128).
    #[arg(long, default_value = "4096x7")]
    dims: String,
    /// Initializations, comma-separated: kaiming, xavier, normal:STD.
    #[arg(long, value_delimiter = ',', default_value = "normal:0.01,normal:0.05,xavier,kaiming")]
    init: Vec<String>,
    /// The activation after each layer: relu, tanh or linear.
    #[arg(long, default_value = "relu")]
    act: String,
    /// Rows of the input batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Seed of the input and the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The plot to write.
    #[arg(long, default_value = "init_stats.png")]
    out: PathBuf,
}

fn parse_dims(s: &str) -> Result<Vec<usize>> {
    let bad = || {
        Error::config(
            "init-stats",
            format!("--dims must be WIDTHxDEPTH like 4096x7 or a comma list of widths, got {s:?}"),
        )
    };
    let dims: Vec<usize> = match s.split_once(['x', '×']) {
        Some((w, d)) => {
            let (w, d) =
                (w.trim().parse().map_err(|_| bad())?, d.trim().parse().map_err(|_| bad())?);
            vec![w; d]
        }
        None => s.split(',').map(|v| v.trim().parse().map_err(|_| bad())).collect::<Result<_>>()?,
    };
    if dims.is_empty() || dims.contains(&0) {
        return Err(bad());
    }
    Ok(dims)
}

fn parse_init(s: &str) -> Result<(ProbeInit, String)> {
    match s.trim() {
        "kaiming" => Ok((ProbeInit::Kaiming, "Kaiming".into())),
        "xavier" => Ok((ProbeInit::Xavier, "Xavier".into())),
        other => match other.strip_prefix("normal:").map(str::parse::<f64>) {
            Some(Ok(std)) if std > 0.0 && std.is_finite() => {
                Ok((ProbeInit::Normal(std), format!("N(0, {std}²)")))
            }
            _ => Err(Error::config(
                "init-stats",
                format!("unknown init {other:?}: expected kaiming, xavier or normal:STD"),
            )),
        },
    }
}

/// Runs `cnn init-stats`.
///
/// # Errors
/// Bad dims, inits or activation; a failed write.
pub fn init_stats(args: InitStatsArgs) -> Result<ExitCode> {
    let dims = parse_dims(&args.dims)?;
    let act = match args.act.as_str() {
        "relu" => ProbeActivation::Relu,
        "tanh" => ProbeActivation::Tanh,
        "linear" => ProbeActivation::Linear,
        other => {
            return Err(Error::config(
                "init-stats",
                format!("unknown activation {other:?}: expected relu, tanh or linear"),
            ))
        }
    };
    let inits = args.init.iter().map(|s| parse_init(s)).collect::<Result<Vec<_>>>()?;
    let config = ProbeConfig { dims: dims.clone(), batch: args.batch };
    let mut series = Vec::new();
    println!(
        "{} layers of widths {:?} after unit Gaussian input, {} activation, batch {}:",
        dims.len(),
        dims,
        args.act,
        args.batch
    );
    println!("{:<14} {:>5} {:>12} {:>12}", "init", "layer", "mean", "std");
    for (init, name) in &inits {
        let stats = activation_stats(&config, *init, act, args.seed)?;
        for (l, s) in stats.iter().enumerate() {
            println!("{name:<14} {:>5} {:>12.4e} {:>12.4e}", l + 1, s.mean, s.std);
        }
        series.push((
            name.clone(),
            stats.iter().enumerate().map(|(l, s)| ((l + 1) as f64, s.std)).collect(),
        ));
    }
    LineChart {
        title: format!(
            "Activation std per layer ({} layers of {}, {})",
            dims.len(),
            dims[0],
            args.act
        ),
        x_desc: "layer".into(),
        y_desc: "std of the layer's output (log scale)".into(),
        series,
        log_x: false,
        log_y: true,
        reference: Some((1.0, "std 1".into())),
    }
    .write_png(&args.out, (900, 560))?;
    println!("drew {} (one line per init, std by layer on a log scale)", args.out.display());
    Ok(ExitCode::SUCCESS)
}
