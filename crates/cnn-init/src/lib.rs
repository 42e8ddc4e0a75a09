//! Weight initializers with PyTorch's semantics (`torch.nn.init`), drawing
//! from a seeded generator the caller passes.
//!
//! ```
//! use cnn_init::{kaiming_normal, FanMode, Nonlinearity};
//! use cnn_tensor::random::seeded_rng;
//!
//! let mut rng = seeded_rng(0);
//! // A 3x3 conv from 64 to 128 channels, for a ReLU network (He et al., 2015).
//! let w = kaiming_normal::<f32, _>(&[128, 64, 3, 3], FanMode::FanIn, Nonlinearity::Relu, &mut rng)?;
//! let std = (w.mapv(|v| v * v).mean().unwrap_or(0.0)).sqrt();
//! assert!((std - (2.0f32 / 576.0).sqrt()).abs() < 0.002);
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod fan;
mod init;
mod probe;

pub use fan::{calculate_gain, fans, FanMode, Nonlinearity};
pub use init::{
    constant, kaiming_normal, kaiming_uniform, normal, ones, pytorch_default_bias,
    pytorch_default_weight, trunc_normal, uniform, xavier_normal, xavier_uniform, zeros,
};
pub use probe::{
    activation_stats, probe_table, LayerStats, ProbeActivation, ProbeConfig, ProbeInit,
};
