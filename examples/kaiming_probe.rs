//! Prints the activation-statistics table: the std of each of 7 layers of
//! 4096 units for ReLU and tanh under four initializations.
//!
//! `cargo run --release --example kaiming_probe`

use cnn::init::{probe_table, ProbeActivation, ProbeConfig, ProbeInit};

fn main() -> Result<(), cnn::tensor::Error> {
    let mut cases = Vec::new();
    for act in [ProbeActivation::Relu, ProbeActivation::Tanh] {
        for init in [
            ProbeInit::Normal(0.01),
            ProbeInit::Normal(0.05),
            ProbeInit::Xavier,
            ProbeInit::Kaiming,
        ] {
            cases.push((init, act));
        }
    }
    print!("{}", probe_table(&ProbeConfig::default(), &cases, 0)?);
    Ok(())
}
