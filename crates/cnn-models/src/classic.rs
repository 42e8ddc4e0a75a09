//! AlexNet and VGG, as torchvision builds them.

use cnn_act::{Act, Dropout};
use cnn_conv::{AdaptiveAvgPool2d, Conv2d, Conv2dConfig, MaxPool2d, Pool2dOptions};
use cnn_init::{normal, zeros};
use cnn_nn::{Flatten, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{Error, Float, Result};
use rand::Rng;

fn check_classes(num_classes: usize) -> Result<()> {
    if num_classes == 0 {
        return Err(Error::config("model", "num_classes must be positive"));
    }
    Ok(())
}

/// torchvision's `alexnet`: `features` (five convs, three max pools),
/// `avgpool` (adaptive, 6×6), `classifier` (dropout, 4096, dropout, 4096,
/// `num_classes`). PyTorch's default init. Dropout masks are seeded from `rng`.
///
/// # Errors
/// [`Error::Config`] when `num_classes` is 0.
pub fn alexnet<T: Float, R: Rng + ?Sized>(
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    check_classes(num_classes)?;
    let conv = |c_in, c_out, k, s, p, rng: &mut R| {
        Conv2d::<T>::new(Conv2dConfig::new(c_in, c_out, k).with_stride(s).with_padding(p), rng)
    };
    let pool = || MaxPool2d::new(Pool2dOptions::new(3).with_stride(2));
    let features = Sequential::new()
        .push(conv(3, 64, 11, 4, 2, rng)?)
        .push(Act::relu())
        .push(pool())
        .push(conv(64, 192, 5, 1, 2, rng)?)
        .push(Act::relu())
        .push(pool())
        .push(conv(192, 384, 3, 1, 1, rng)?)
        .push(Act::relu())
        .push(conv(384, 256, 3, 1, 1, rng)?)
        .push(Act::relu())
        .push(conv(256, 256, 3, 1, 1, rng)?)
        .push(Act::relu())
        .push(pool());
    let classifier = Sequential::new()
        .push(Dropout::new(0.5, rng.random())?)
        .push(Linear::new(LinearConfig::new(256 * 6 * 6, 4096), rng)?)
        .push(Act::relu())
        .push(Dropout::new(0.5, rng.random())?)
        .push(Linear::new(LinearConfig::new(4096, 4096), rng)?)
        .push(Act::relu())
        .push(Linear::new(LinearConfig::new(4096, num_classes), rng)?);
    Ok(Sequential::new()
        .push_named("features", features)
        .push_named("avgpool", AdaptiveAvgPool2d::new([6, 6]))
        .push_named("flatten", Flatten::new())
        .push_named("classifier", classifier))
}

/// The layer plans of VGG: channel counts, 0 for a 2×2 max pool.
const VGG11: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG13: &[usize] = &[64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG16: &[usize] =
    &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
const VGG19: &[usize] =
    &[64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0];

/// The settings of [`vgg`], with `with_*` builders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VggConfig {
    /// 11, 13, 16 or 19 weight layers.
    pub depth: usize,
    /// A BatchNorm after each conv (`vgg16_bn`, …). Default false.
    pub batch_norm: bool,
    /// Classes of the last linear layer. Default 1000 (ImageNet's, as torchvision).
    pub num_classes: usize,
}

impl VggConfig {
    /// torchvision's `vgg{depth}`: no BatchNorm, 1000 classes.
    pub fn new(depth: usize) -> Self {
        VggConfig { depth, batch_norm: false, num_classes: 1000 }
    }

    cnn_tensor::setters! {
        /// Sets [`VggConfig::batch_norm`].
        with_batch_norm: batch_norm: bool;
        /// Sets [`VggConfig::num_classes`].
        with_num_classes: num_classes: usize;
    }
}

/// torchvision's VGG of `depth` 11, 13, 16 or 19, with BatchNorm after each
/// conv when `batch_norm` (`vgg16_bn`, …): `features`, `avgpool` (adaptive,
/// 7×7), `classifier` (4096, dropout, 4096, dropout, `num_classes`).
/// torchvision's init: convs Kaiming normal (fan_out), biases 0, BatchNorm
/// γ = 1, β = 0, linear weights N(0, 0.01²).
///
/// # Errors
/// [`Error::Config`] for another depth or zero classes.
pub fn vgg<T: Float, R: Rng + ?Sized>(config: &VggConfig, rng: &mut R) -> Result<Sequential<T>> {
    let VggConfig { depth, batch_norm, num_classes } = *config;
    check_classes(num_classes)?;
    let plan = match depth {
        11 => VGG11,
        13 => VGG13,
        16 => VGG16,
        19 => VGG19,
        _ => {
            return Err(Error::config(
                "vgg",
                format!("depth must be 11, 13, 16 or 19, got {depth}"),
            ))
        }
    };
    let mut features = Sequential::new();
    let mut c_in = 3;
    for &v in plan {
        if v == 0 {
            features = features.push(MaxPool2d::new(Pool2dOptions::new(2)));
            continue;
        }
        let cfg = Conv2dConfig::new(c_in, v, 3).with_padding(1);
        let mut conv = cnn_nn::kaiming_conv::<T, _>(cfg, rng)?;
        if let Some(b) = conv.bias.as_mut() {
            b.set_value(zeros(&[v]));
        }
        features = features.push(conv);
        if batch_norm {
            features = features.push(BatchNorm::new_2d(BatchNormConfig::new(v))?);
        }
        features = features.push(Act::relu());
        c_in = v;
    }
    let linear = |i, o, rng: &mut R| -> Result<Linear<T>> {
        let mut l = Linear::new(LinearConfig::new(i, o), rng)?;
        l.weight.set_value(normal(&[o, i], 0.0, 0.01, rng)?);
        if let Some(b) = l.bias.as_mut() {
            b.set_value(zeros(&[o]));
        }
        Ok(l)
    };
    let classifier = Sequential::new()
        .push(linear(512 * 7 * 7, 4096, rng)?)
        .push(Act::relu())
        .push(Dropout::new(0.5, rng.random())?)
        .push(linear(4096, 4096, rng)?)
        .push(Act::relu())
        .push(Dropout::new(0.5, rng.random())?)
        .push(linear(4096, num_classes, rng)?);
    Ok(Sequential::new()
        .push_named("features", features)
        .push_named("avgpool", AdaptiveAvgPool2d::new([7, 7]))
        .push_named("flatten", Flatten::new())
        .push_named("classifier", classifier))
}
