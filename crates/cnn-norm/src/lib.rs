//! Normalization layers built on one kernel: `y = γ·(x − mean)/√(var + eps) + β`,
//! "the same formula over different axes".
//!
//! | layer | statistics over | per | depends on the batch? | pick it when |
//! | --- | --- | --- | --- | --- |
//! | [`BatchNorm`] (1d, 2d) | (N, H, W) | channel | yes: train uses the batch, eval the running averages | CNNs with batches of 16 and more |
//! | [`LayerNorm`] | the trailing `normalized_shape` | sample | no | sequences, transformers, any batch size |
//! | [`LayerNorm2d`] | C, per pixel | sample and pixel | no | ConvNeXt (timm's `LayerNorm2d`) |
//! | [`InstanceNorm2d`] | (H, W) | sample and channel | no | style transfer: per-image contrast is removed |
//! | [`GroupNorm`] | (C/G, H, W) | sample and group | no | CNNs with small batches (detection, segmentation); G = 1 is LayerNorm over (C, H, W), G = C is InstanceNorm |
//!
//! The kernel ([`moments`], [`normalize_forward`], [`normalize_backward`])
//! views the input as `[outer, groups, inner]` and takes one mean and
//! variance per group; the layers only choose that view and the shape of γ
//! and β (see [`NormAxes`], [`AffineAxes`]). Its naive twin, plain loops
//! the fast paths are held equal to, is [`naive`].
//!
//! ```
//! use cnn_norm::{BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig};
//! use cnn_tensor::{random, Layer, Mode};
//!
//! let mut bn = BatchNorm::<f64>::new_2d(BatchNormConfig::new(4))?;
//! let x = random::normal(&[8, 4, 5, 5], 3.0, 2.0, &mut random::seeded_rng(0));
//! let y = bn.forward(x.clone(), Mode::Train)?;
//! assert!(y.mean().unwrap().abs() < 1e-12); // each channel now has mean 0
//!
//! let mut gn = GroupNorm::<f64>::new(GroupNormConfig::new(2, 4))?;
//! let report = cnn_tensor::gradcheck::check_layer(&mut gn, &x, 1, &Default::default())?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod batch_backward;
mod batch_norm;
mod common;
mod group_norm;
mod kernel;
mod layer_norm;
mod layer_norm2d;
pub mod naive;

pub use batch_backward::normalize_backward_relu;
pub use batch_norm::{BatchNorm, BatchNormConfig};
pub use group_norm::{GroupNorm, GroupNormConfig, InstanceNorm2d, InstanceNormConfig};
pub use kernel::{
    grad_sums, group_squares, group_sums, moments, normalize_backward, normalize_backward_from,
    normalize_backward_fused, normalize_forward, normalize_forward_relu, normalize_fused, rstd,
    Affine, AffineAxes, Moments, NormAxes, NormGrads, Statistics,
};
pub use layer_norm::{LayerNorm, LayerNormConfig};
pub use layer_norm2d::{LayerNorm2d, LayerNorm2dConfig};
