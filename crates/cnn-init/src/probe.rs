//! The activation-statistics probe: why the initialization scale matters.
//!
//! A batch of unit Gaussian inputs goes through a stack of linear layers,
//! each followed by an activation; the probe reports every layer's output
//! mean and standard deviation (CS231n's experiment, with dims `[4096] × 7`).
//! With weights drawn too small the signal shrinks geometrically with depth,
//! too large and it explodes (or, with tanh, saturates); Kaiming keeps it level.
//!
//! The std of each layer's output, from `cargo run --release --example kaiming_probe`:
//!
//! | activation | init | std layer 1 | std layer 2 | std layer 3 | std layer 4 | std layer 5 | std layer 6 | std layer 7 |
//! | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
//! | Relu | N(0, 0.01²) | 3.756e-1 | 1.718e-1 | 7.781e-2 | 3.574e-2 | 1.621e-2 | 7.445e-3 | 3.312e-3 |
//! | Relu | N(0, 0.05²) | 1.878e0 | 4.294e0 | 9.726e0 | 2.234e1 | 5.066e1 | 1.163e2 | 2.588e2 |
//! | Relu | Xavier | 5.869e-1 | 4.193e-1 | 2.968e-1 | 2.130e-1 | 1.510e-1 | 1.083e-1 | 7.531e-2 |
//! | Relu | Kaiming | 8.301e-1 | 8.387e-1 | 8.395e-1 | 8.522e-1 | 8.540e-1 | 8.667e-1 | 8.521e-1 |
//! | Tanh | N(0, 0.01²) | 4.926e-1 | 2.894e-1 | 1.797e-1 | 1.137e-1 | 7.216e-2 | 4.609e-2 | 2.936e-2 |
//! | Tanh | N(0, 0.05²) | 8.712e-1 | 8.518e-1 | 8.484e-1 | 8.501e-1 | 8.492e-1 | 8.511e-1 | 8.478e-1 |
//! | Tanh | Xavier | 6.282e-1 | 4.861e-1 | 4.089e-1 | 3.589e-1 | 3.220e-1 | 2.948e-1 | 2.724e-1 |
//! | Tanh | Kaiming | 7.593e-1 | 6.923e-1 | 6.681e-1 | 6.603e-1 | 6.548e-1 | 6.536e-1 | 6.515e-1 |
//!
//! (docs/init.md reads the table against the math.)

use std::fmt::Write as _;

use cnn_tensor::{gemm, random, Error, Result};
use ndarray::{Array2, Ix2};

use crate::{kaiming_normal, normal, xavier_normal, FanMode, Nonlinearity};

/// How the probe draws each weight matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeInit {
    /// N(0, std²), whatever the width.
    Normal(f64),
    /// Xavier normal: std = √(2 / (fan_in + fan_out)) (1/√n for square layers).
    Xavier,
    /// Kaiming normal: std = gain / √fan_in, with the activation's gain (√2 for ReLU, 5/3 for tanh).
    Kaiming,
}

/// The activation after each layer of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeActivation {
    /// max(x, 0).
    Relu,
    /// tanh(x).
    Tanh,
    /// The identity.
    Linear,
}

impl ProbeActivation {
    fn apply(self, v: f32) -> f32 {
        match self {
            ProbeActivation::Relu => v.max(0.0),
            ProbeActivation::Tanh => v.tanh(),
            ProbeActivation::Linear => v,
        }
    }

    fn gain(self) -> Nonlinearity {
        match self {
            ProbeActivation::Relu => Nonlinearity::Relu,
            ProbeActivation::Tanh => Nonlinearity::Tanh,
            ProbeActivation::Linear => Nonlinearity::Linear,
        }
    }
}

/// Size of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Width of each layer's output; the input has `dims[0]` features. Default `[4096; 7]`.
    pub dims: Vec<usize>,
    /// Rows of the input batch. Default 16.
    pub batch: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { dims: vec![4096; 7], batch: 16 }
    }
}

/// Mean and standard deviation of one layer's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerStats {
    /// Mean over the batch and features.
    pub mean: f64,
    /// Standard deviation over the batch and features.
    pub std: f64,
}

/// Runs the probe: `x ~ N(0, 1)` of shape `[batch, dims[0]]`, then for each
/// width `d` in `dims`, `x ← act(x·Wᵀ)` with `W [d, width of x]` drawn by `init`.
///
/// All draws come from `seed`. Computed in f32, the statistics in f64.
///
/// # Errors
/// [`Error::Config`] for an empty `dims`, a zero width or batch, or an invalid std.
pub fn activation_stats(
    config: &ProbeConfig,
    init: ProbeInit,
    activation: ProbeActivation,
    seed: u64,
) -> Result<Vec<LayerStats>> {
    if config.dims.is_empty() || config.dims.contains(&0) || config.batch == 0 {
        return Err(Error::config(
            "activation_stats",
            format!("dims and batch must be non-empty and positive, got {config:?}"),
        ));
    }
    let mut rng = random::seeded_rng(seed);
    let as2 = |a: ndarray::ArrayD<f32>| {
        a.into_dimensionality::<Ix2>().map_err(|e| Error::shape("activation_stats", e.to_string()))
    };
    let mut x = as2(random::normal(&[config.batch, config.dims[0]], 0.0, 1.0, &mut rng))?;
    let mut stats = Vec::with_capacity(config.dims.len());
    for &out in &config.dims {
        let shape = [out, x.ncols()];
        let w = as2(match init {
            ProbeInit::Normal(std) => normal(&shape, 0.0, std, &mut rng)?,
            ProbeInit::Xavier => xavier_normal(&shape, 1.0, &mut rng)?,
            ProbeInit::Kaiming => {
                kaiming_normal(&shape, FanMode::FanIn, activation.gain(), &mut rng)?
            }
        })?;
        let mut y = Array2::<f32>::zeros((config.batch, out));
        gemm(1.0, x.view(), w.t(), 0.0, y.view_mut())?;
        y.mapv_inplace(|v| activation.apply(v));
        let n = y.len() as f64;
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        stats.push(LayerStats { mean, std: var.sqrt() });
        x = y;
    }
    Ok(stats)
}

/// A Markdown table of the probe for every `(init, activation)` pair: one row
/// per pair, one column of std per layer.
///
/// # Errors
/// As [`activation_stats`].
pub fn probe_table(
    config: &ProbeConfig,
    cases: &[(ProbeInit, ProbeActivation)],
    seed: u64,
) -> Result<String> {
    let mut out = String::from("| activation | init |");
    for l in 1..=config.dims.len() {
        let _ = write!(out, " std layer {l} |");
    }
    out.push_str("\n| --- | --- |");
    out.push_str(&" ---: |".repeat(config.dims.len()));
    out.push('\n');
    for &(init, act) in cases {
        let stats = activation_stats(config, init, act, seed)?;
        let init_name = match init {
            ProbeInit::Normal(s) => format!("N(0, {s}²)"),
            ProbeInit::Xavier => "Xavier".into(),
            ProbeInit::Kaiming => "Kaiming".into(),
        };
        let _ = write!(out, "| {act:?} | {init_name} |");
        for s in &stats {
            let _ = write!(out, " {:.3e} |", s.std);
        }
        out.push('\n');
    }
    Ok(out)
}
