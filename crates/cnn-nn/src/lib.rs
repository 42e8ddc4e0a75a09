//! Containers and building blocks over the `cnn` layers, with PyTorch's
//! `state_dict` names: [`Sequential`], [`Flatten`], the ResNet
//! [`BasicBlock`], freezing by key prefix, parameter counts, and `state_dict`
//! files in safetensors ([`save_state_dict`], [`load_state_dict`]) that
//! PyTorch reads and writes.
//!
//! ```
//! use cnn_nn::{count_params, freeze, Flatten, Sequential};
//! use cnn_conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d};
//! use cnn_tensor::{random, Layer};
//! use cnn_nn::{Linear, LinearConfig};
//!
//! let mut rng = random::seeded_rng(0);
//! let mut net = Sequential::<f32>::new()
//!     .push_named("conv", Conv2d::new(Conv2dConfig::new(3, 8, 3), &mut rng)?)
//!     .push_named("pool", GlobalAvgPool2d::new())
//!     .push_named("flatten", Flatten::new())
//!     .push_named("fc", Linear::new(LinearConfig::new(8, 10), &mut rng)?);
//! assert_eq!(count_params(&mut net), (3 * 8 * 9 + 8 + 8 * 10 + 10, 3 * 8 * 9 + 8 + 8 * 10 + 10));
//! freeze(&mut net, "conv"); // a linear probe: only the head trains
//! assert_eq!(count_params(&mut net).1, 8 * 10 + 10);
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod convnext;
mod fusion;
mod linear;
pub mod onnx;
mod residual;
mod sequential;
mod state_dict;
mod summary;

pub use cnn_tensor::write_atomic;
pub use convnext::{trunc02, ConvNeXtBlock, ConvNeXtBlockConfig, PixelLinear};
pub use fusion::{count_fused, fusable, fusion_enabled, with_fusion, FusionCount};
pub use linear::{Linear, LinearConfig};
pub use onnx::{
    export_onnx, export_onnx_with, onnx_model, read_onnx, OnnxConfig, OnnxExport, ONNX_INPUT,
    ONNX_IR_VERSION, ONNX_OPSET, ONNX_OUTPUT,
};
pub use residual::{BasicBlock, Bottleneck, Residual, Shortcut, EXPANSION};
pub use sequential::{Flatten, Identity, Sequential};
pub use state_dict::{
    bf16_to_f32, f16_to_f32, load_state_dict, save_state_dict, LoadMode, LoadReport, SaveDtype,
    StateDict,
};
pub use summary::{summary, SummaryRow};

use cnn_conv::{Conv2d, Conv2dConfig};
use cnn_init::{kaiming_normal, FanMode, Nonlinearity};
use cnn_tensor::{Float, Layer, Result};
use rand::Rng;

/// A conv layer with torchvision's ResNet init: Kaiming normal, fan_out, ReLU gain.
///
/// # Errors
/// As [`Conv2d::new`].
pub fn kaiming_conv<T: Float, R: Rng + ?Sized>(
    cfg: Conv2dConfig,
    rng: &mut R,
) -> Result<Conv2d<T>> {
    let mut conv = Conv2d::new(cfg, rng)?;
    conv.weight.set_value(kaiming_normal(
        &cfg.weight_shape(),
        FanMode::FanOut,
        Nonlinearity::Relu,
        rng,
    )?);
    Ok(conv)
}

fn under(key: &str, prefix: &str) -> bool {
    prefix.is_empty() || key == prefix || key.starts_with(&format!("{prefix}."))
}

/// Marks every parameter whose key is `prefix` or starts with `prefix.` as frozen
/// (not trained; optimizers skip it). Returns how many tensors it froze.
pub fn freeze<T: Float>(model: &mut dyn Layer<T>, prefix: &str) -> usize {
    set_trainable(model, prefix, false)
}

/// Undoes [`freeze`] for the parameters under `prefix` (buffers stay untrained).
pub fn unfreeze<T: Float>(model: &mut dyn Layer<T>, prefix: &str) -> usize {
    set_trainable(model, prefix, true)
}

fn set_trainable<T: Float>(model: &mut dyn Layer<T>, prefix: &str, trainable: bool) -> usize {
    let mut n = 0;
    model.visit_mut("", &mut |key, p| {
        if !p.buffer && under(key, prefix) {
            p.trainable = trainable;
            n += 1;
        }
    });
    n
}

/// `(total, trainable)` parameter counts (buffers excluded), as torchinfo reports.
pub fn count_params<T: Float>(model: &dyn Layer<T>) -> (usize, usize) {
    let (mut total, mut trainable) = (0, 0);
    model.visit("", &mut |_, p| {
        if !p.buffer {
            total += p.len();
            if p.trainable {
                trainable += p.len();
            }
        }
    });
    (total, trainable)
}
