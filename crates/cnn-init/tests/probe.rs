//! The activation-statistics probe against the math of each initialization.
//!
//! For a ReLU layer `h = relu(W·x)` with `W ~ N(0, σ²)` over `n` inputs, the
//! pre-activation variance is `n·σ²·E[x²]` and ReLU halves the second moment,
//! so `E[h²]` changes by the factor `n·σ²/2` per layer and the std by its
//! square root:
//! - Kaiming, `σ² = 2/n`: factor 1, the std stays level (≈ 0.826 for unit inputs);
//! - N(0, 0.01²), n = 4096: `√(4096·1e-4/2) = 0.4525` per layer; over the six
//!   layers from 1 to 7, `0.4525⁶ ≈ 0.0086`, below 1%;
//! - N(0, 0.05²): `√(4096·0.0025/2) = 2.263` per layer, `2.263⁶ ≈ 134`, above 10×.

#![allow(clippy::unwrap_used)]

use cnn_init::{activation_stats, ProbeActivation, ProbeConfig, ProbeInit};

fn ratios(init: ProbeInit) -> Vec<f64> {
    let stats = activation_stats(&ProbeConfig::default(), init, ProbeActivation::Relu, 0).unwrap();
    assert_eq!(stats.len(), 7);
    stats.iter().map(|s| s.std / stats[0].std).collect()
}

#[test]
fn kaiming_keeps_relu_activations_level() {
    let r = ratios(ProbeInit::Kaiming);
    assert!(r.iter().all(|&x| (0.5..=2.0).contains(&x)), "{r:?}");
}

#[test]
fn too_small_weights_make_the_signal_vanish() {
    let r = ratios(ProbeInit::Normal(0.01));
    assert!(r[6] < 0.01, "layer 7 / layer 1 = {}", r[6]);
    // Each layer shrinks by about 0.4525.
    for w in r.windows(2) {
        assert!((w[1] / w[0] - 0.4525).abs() < 0.05, "{r:?}");
    }
}

#[test]
fn too_large_weights_make_it_explode() {
    let r = ratios(ProbeInit::Normal(0.05));
    assert!(r[6] > 10.0, "layer 7 / layer 1 = {}", r[6]);
}

#[test]
fn bad_settings_are_errors() {
    let empty = ProbeConfig { dims: vec![], batch: 4 };
    assert!(activation_stats(&empty, ProbeInit::Kaiming, ProbeActivation::Relu, 0).is_err());
    let small = ProbeConfig { dims: vec![8, 8], batch: 4 };
    assert!(activation_stats(&small, ProbeInit::Normal(-1.0), ProbeActivation::Tanh, 0).is_err());
    assert_eq!(
        activation_stats(&small, ProbeInit::Xavier, ProbeActivation::Linear, 0).unwrap().len(),
        2
    );
}
