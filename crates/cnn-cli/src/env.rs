//! `cnn env`: the environment switches every kernel reads
//! (`cnn_tensor::switches`), their values here, and what this machine has.

use std::process::ExitCode;

use clap::Args;
use cnn_tensor::switches::SWITCHES;
use cnn_tensor::{simd, Result};

/// Arguments of `cnn env` (none).
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  cnn env
  CNN_SIMD=avx2 cnn env      # what a run with that cap would use")]
pub struct EnvArgs {}

/// Prints each switch (name, value set here, values, default, effect), then the machine.
pub fn run(_args: EnvArgs) -> Result<ExitCode> {
    for s in SWITCHES {
        let set = std::env::var(s.name).map_or_else(|_| "unset".to_string(), |v| format!("{v:?}"));
        println!("{:<20} {set}", s.name);
        println!("    values: {}; default: {}", s.values.join(", "), s.default);
        println!("    {}", s.what);
    }
    println!(
        "machine: {} vector level in use ({} detected), {} threads",
        simd::level().name(),
        simd::detected().name(),
        rayon::current_num_threads()
    );
    println!(
        "{} switches, read once per process from the environment of a run; a value a switch does not take is ignored with a warning",
        SWITCHES.len()
    );
    Ok(ExitCode::SUCCESS)
}
