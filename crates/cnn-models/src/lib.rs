//! Network architectures with torchvision's parameter names.
//!
//! So far: the CIFAR ResNets of He et al. (2016, §4.2), [`cifar_resnet`]
//! for depth 6n + 2 (20, 32, 44, 56, 110), and their plain twins (the same
//! layers without skip connections) for the degradation experiment; and
//! torchvision's `resnet18/34/50/101/152`, `alexnet`, and [`vgg`] (11, 13, 16, 19, with or without BatchNorm);
//! and [`small_cnn`], the default network of `cnn train`, fit to the image size;
//! and timm's ConvNeXts ([`convnext`], `convnext_atto` … `convnext_tiny`) with its keys.
//!
//! ```
//! use cnn_models::{cifar_resnet, CifarResNetConfig};
//! use cnn_tensor::{random, Layer, Mode};
//!
//! let mut rng = random::seeded_rng(0);
//! let mut net = cifar_resnet::<f32, _>(&CifarResNetConfig::new(20), &mut rng)?;
//! let logits = net.forward(random::normal(&[2, 3, 32, 32], 0.0, 1.0, &mut rng), Mode::Eval)?;
//! assert_eq!(logits.shape(), &[2, 10]);
//! assert_eq!(cnn_nn::count_params(&mut net).0, 272_474);
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod classic;
mod convnext;
mod small;

pub use classic::{alexnet, vgg, VggConfig};
pub use convnext::{
    convnext, convnext_atto, convnext_femto, convnext_nano, convnext_pico, convnext_tiny,
    ConvNeXtConfig,
};
pub use small::{small_cnn, small_cnn_pools, SMALL_CNN_WIDTHS};

use cnn_act::Act;
use cnn_conv::{Conv2dConfig, GlobalAvgPool2d, MaxPool2d, Pool2dOptions};
use cnn_nn::{kaiming_conv, BasicBlock, Bottleneck, Flatten, Sequential, EXPANSION};
use cnn_nn::{Linear, LinearConfig};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{Error, Float, Layer, Result};
use rand::Rng;

/// Whether a CIFAR ResNet's blocks add their shortcut ([`CifarResNetConfig::shortcuts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Shortcuts {
    /// Every block adds its input (or its projection): the ResNet.
    #[default]
    Residual,
    /// No block adds anything: the plain twin, with the same layers and keys
    /// but no `downsample` (He et al.'s degradation experiment).
    Plain,
}

/// The settings of [`cifar_resnet`], with `with_*` builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarResNetConfig {
    /// Layers, `6n + 2` with n ≥ 1: 20, 32, 44, 56, 110.
    pub depth: usize,
    /// Channels of the three stages. Default `[16, 32, 64]` (small widths
    /// make whole-network gradient checks cheap).
    pub widths: [usize; 3],
    /// Classes of the linear classifier. Default 10.
    pub num_classes: usize,
    /// Residual or plain. Default [`Shortcuts::Residual`].
    pub shortcuts: Shortcuts,
}

impl CifarResNetConfig {
    /// He et al.'s ResNet of `depth` for CIFAR-10: widths 16, 32, 64, 10 classes.
    pub fn new(depth: usize) -> Self {
        CifarResNetConfig {
            depth,
            widths: [16, 32, 64],
            num_classes: 10,
            shortcuts: Shortcuts::Residual,
        }
    }

    cnn_tensor::setters! {
        /// Sets [`CifarResNetConfig::widths`].
        with_widths: widths: [usize; 3];
        /// Sets [`CifarResNetConfig::num_classes`].
        with_num_classes: num_classes: usize;
        /// Sets [`CifarResNetConfig::shortcuts`].
        with_shortcuts: shortcuts: Shortcuts;
    }
}

/// A CIFAR ResNet of `depth = 6n + 2` layers: a 3×3 stem of `widths[0]`
/// channels, three stages of `n` [`BasicBlock`]s at the three widths (the first
/// block of stages 2 and 3 halves the map with a projection shortcut),
/// global average pooling and a linear classifier.
///
/// Keys as torchvision's ResNet: `conv1`, `bn1`, `layer1.0.conv1`, …,
/// `layer2.0.downsample.0`, `fc`. With [`Shortcuts::Plain`] it is the plain
/// twin: the same layers and keys but no shortcuts (and no `downsample`).
///
/// ```
/// use cnn_models::{cifar_resnet, CifarResNetConfig, Shortcuts};
/// let mut rng = cnn_tensor::random::seeded_rng(0);
/// let plain = CifarResNetConfig::new(20).with_shortcuts(Shortcuts::Plain);
/// let net = cifar_resnet::<f32, _>(&plain, &mut rng)?;
/// assert_eq!(cnn_nn::count_params(&net).0, 269_722);
/// # Ok::<(), cnn_tensor::Error>(())
/// ```
///
/// # Errors
/// [`Error::Config`] when `depth` is not 6n + 2 with n ≥ 1, or a width or
/// `num_classes` is 0.
pub fn cifar_resnet<T: Float, R: Rng + ?Sized>(
    config: &CifarResNetConfig,
    rng: &mut R,
) -> Result<Sequential<T>> {
    let CifarResNetConfig { depth, widths, num_classes, shortcuts } = *config;
    if depth < 8 || !(depth - 2).is_multiple_of(6) || num_classes == 0 || widths.contains(&0) {
        return Err(Error::config(
            "cifar_resnet",
            format!(
                "depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), widths and classes positive; \
                 got depth {depth}, widths {widths:?}, {num_classes} classes"
            ),
        ));
    }
    let n = (depth - 2) / 6;
    let stem = kaiming_conv::<T, _>(
        Conv2dConfig::new(3, widths[0], 3).with_padding(1).with_bias(false),
        rng,
    )?;
    let mut net = Sequential::new()
        .push_named("conv1", stem)
        .push_named("bn1", BatchNorm::new_2d(BatchNormConfig::new(widths[0]))?)
        .push_named("relu", Act::relu());
    let mut c_in = widths[0];
    for (stage, &w) in widths.iter().enumerate() {
        let mut layer = Sequential::new();
        for j in 0..n {
            let stride = if stage > 0 && j == 0 { 2 } else { 1 };
            let block = match shortcuts {
                Shortcuts::Residual => BasicBlock::new(c_in, w, stride, rng)?,
                Shortcuts::Plain => BasicBlock::plain(c_in, w, stride, rng)?,
            };
            layer = layer.push(block);
            c_in = w;
        }
        net = net.push_named(&format!("layer{}", stage + 1), layer);
    }
    Ok(net
        .push_named("avgpool", GlobalAvgPool2d::new())
        .push_named("flatten", Flatten::new())
        .push_named("fc", Linear::new(LinearConfig::new(c_in, num_classes), rng)?))
}

/// torchvision's `resnet18`: a 7×7 stride-2 stem, 3×3 max pool, four stages
/// of 2 [`BasicBlock`]s at 64/128/256/512 channels, global pooling and a
/// linear head. Keys, shapes and order as torchvision's `state_dict`.
///
/// # Errors
/// [`Error::Config`] when `num_classes` is 0.
pub fn resnet18<T: Float, R: Rng + ?Sized>(
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    resnet_basic([2, 2, 2, 2], num_classes, rng)
}

/// torchvision's `resnet34`: as [`resnet18`] with 3, 4, 6, 3 blocks per stage.
///
/// # Errors
/// [`Error::Config`] when `num_classes` is 0.
pub fn resnet34<T: Float, R: Rng + ?Sized>(
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    resnet_basic([3, 4, 6, 3], num_classes, rng)
}

/// torchvision's `resnet50`: [`Bottleneck`] blocks, 3, 4, 6, 3 per stage, 2048 features.
///
/// # Errors
/// [`Error::Config`] when `num_classes` is 0.
pub fn resnet50<T: Float, R: Rng + ?Sized>(
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    resnet_bottleneck([3, 4, 6, 3], num_classes, rng)
}

/// torchvision's `resnet101`: [`Bottleneck`] blocks, 3, 4, 23, 3 per stage.
///
/// # Errors
/// [`Error::Config`] when `num_classes` is 0.
pub fn resnet101<T: Float, R: Rng + ?Sized>(
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    resnet_bottleneck([3, 4, 23, 3], num_classes, rng)
}

/// torchvision's `resnet152`: [`Bottleneck`] blocks, 3, 8, 36, 3 per stage.
///
/// # Errors
/// [`Error::Config`] when `num_classes` is 0.
pub fn resnet152<T: Float, R: Rng + ?Sized>(
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    resnet_bottleneck([3, 8, 36, 3], num_classes, rng)
}

/// The stem every ImageNet ResNet shares: conv 7×7 stride 2, BatchNorm, ReLU, max pool 3×3 stride 2.
fn imagenet_stem<T: Float, R: Rng + ?Sized>(rng: &mut R) -> Result<Sequential<T>> {
    let stem = kaiming_conv::<T, _>(
        Conv2dConfig::new(3, 64, 7).with_stride(2).with_padding(3).with_bias(false),
        rng,
    )?;
    Ok(Sequential::new()
        .push_named("conv1", stem)
        .push_named("bn1", BatchNorm::new_2d(BatchNormConfig::new(64))?)
        .push_named("relu", Act::relu())
        .push_named(
            "maxpool",
            MaxPool2d::new(Pool2dOptions::new(3).with_stride(2).with_padding(1)),
        ))
}

/// The head every ResNet shares: global average pooling, flatten, linear.
fn head<T: Float, R: Rng + ?Sized>(
    net: Sequential<T>,
    features: usize,
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    Ok(net
        .push_named("avgpool", GlobalAvgPool2d::new())
        .push_named("flatten", Flatten::new())
        .push_named("fc", Linear::new(LinearConfig::new(features, num_classes), rng)?))
}

/// An ImageNet ResNet of `stage`-built blocks: `blocks[i]` in stage `i` at width 64·2^i.
fn resnet_stages<T: Float, R: Rng + ?Sized>(
    blocks: [usize; 4],
    num_classes: usize,
    expansion: usize,
    rng: &mut R,
    mut block: impl FnMut(usize, usize, usize, &mut R) -> Result<Box<dyn Layer<T>>>,
) -> Result<Sequential<T>> {
    if num_classes == 0 {
        return Err(Error::config("resnet", "num_classes must be positive"));
    }
    let mut net = imagenet_stem(rng)?;
    let mut c_in = 64;
    for (stage, (&n, width)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
        let mut layer = Sequential::new();
        for j in 0..n {
            let stride = if stage > 0 && j == 0 { 2 } else { 1 };
            layer = layer.push_boxed(block(c_in, width, stride, rng)?);
            c_in = width * expansion;
        }
        net = net.push_named(&format!("layer{}", stage + 1), layer);
    }
    head(net, c_in, num_classes, rng)
}

fn resnet_bottleneck<T: Float, R: Rng + ?Sized>(
    blocks: [usize; 4],
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    resnet_stages(blocks, num_classes, EXPANSION, rng, |c_in, w, s, rng| {
        Ok(Box::new(Bottleneck::new(c_in, w, s, rng)?))
    })
}

/// An ImageNet ResNet of [`BasicBlock`]s with `blocks[i]` blocks in stage `i`.
fn resnet_basic<T: Float, R: Rng + ?Sized>(
    blocks: [usize; 4],
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    resnet_stages(blocks, num_classes, 1, rng, |c_in, w, s, rng| {
        Ok(Box::new(BasicBlock::new(c_in, w, s, rng)?))
    })
}

/// Sets the last BatchNorm γ of every residual block's main branch to zero
/// (`bn3` in a Bottleneck, `bn2` in a BasicBlock), so that each block starts
/// as its shortcut: torchvision's `zero_init_residual=True`. The blocks are
/// found through the model's structure (every [`cnn_nn::Residual`] reached
/// through [`Layer::children_mut`]), not by their keys. Returns how many it zeroed.
pub fn zero_init_residual<T: Float>(model: &mut dyn Layer<T>) -> usize {
    if let Some(block) = model.as_any_mut().and_then(|a| a.downcast_mut::<cnn_nn::Residual<T>>()) {
        return usize::from(block.zero_init_residual());
    }
    model.children_mut().into_iter().map(|(_, child)| zero_init_residual(child)).sum()
}
