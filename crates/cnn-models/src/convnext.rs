//! ConvNeXt (Liu et al., 2022) with timm's keys, shapes, order and init.

use cnn_conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d};
use cnn_nn::{trunc02, ConvNeXtBlock, ConvNeXtBlockConfig, Flatten, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_norm::{LayerNorm2d, LayerNorm2dConfig};
use cnn_tensor::{random::mix_seed, Error, Float, Result};
use rand::Rng;

/// Settings of [`convnext`], with timm's defaults (`timm.models.convnext.ConvNeXt`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvNeXtConfig {
    /// Blocks per stage. Default `[3, 3, 9, 3]` (tiny).
    pub depths: Vec<usize>,
    /// Channels per stage. Default `[96, 192, 384, 768]` (tiny).
    pub dims: Vec<usize>,
    /// MLPs as 1×1 convs (atto–nano) rather than channels-last Linears (tiny and up). Default false.
    pub conv_mlp: bool,
    /// Classes of the head. Default 1000.
    pub num_classes: usize,
    /// Input channels. Default 3.
    pub in_chans: usize,
    /// Stochastic depth, rising linearly from 0 at the first block to this at the last. Default 0.
    pub drop_path_rate: f64,
    /// Initial layer scale γ. Default 1e-6.
    pub ls_init_value: f64,
    /// The head's weight and bias scaled by this after init. Default 1.
    pub head_init_scale: f64,
}

impl ConvNeXtConfig {
    /// ConvNeXt with `depths` and `dims`, timm's other defaults.
    pub fn new(depths: &[usize], dims: &[usize]) -> Self {
        ConvNeXtConfig {
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            conv_mlp: false,
            num_classes: 1000,
            in_chans: 3,
            drop_path_rate: 0.0,
            ls_init_value: 1e-6,
            head_init_scale: 1.0,
        }
    }
    cnn_tensor::setters! {
        /// Sets [`ConvNeXtConfig::conv_mlp`].
        with_conv_mlp: conv_mlp: bool;
        /// Sets [`ConvNeXtConfig::num_classes`].
        with_num_classes: num_classes: usize;
        /// Sets [`ConvNeXtConfig::in_chans`].
        with_in_chans: in_chans: usize;
        /// Sets [`ConvNeXtConfig::drop_path_rate`].
        with_drop_path_rate: drop_path_rate: f64;
        /// Sets [`ConvNeXtConfig::ls_init_value`].
        with_ls_init_value: ls_init_value: f64;
    }

    /// timm's named variants: `atto`, `femto`, `pico`, `nano` (conv MLPs) and
    /// `tiny`, `small`, `base`, `large` (Linear MLPs).
    pub fn named(name: &str) -> Option<Self> {
        let (depths, dims, conv_mlp): (&[usize], &[usize], bool) = match name {
            "atto" => (&[2, 2, 6, 2], &[40, 80, 160, 320], true),
            "femto" => (&[2, 2, 6, 2], &[48, 96, 192, 384], true),
            "pico" => (&[2, 2, 6, 2], &[64, 128, 256, 512], true),
            "nano" => (&[2, 2, 8, 2], &[80, 160, 320, 640], true),
            "tiny" => (&[3, 3, 9, 3], &[96, 192, 384, 768], false),
            "small" => (&[3, 3, 27, 3], &[96, 192, 384, 768], false),
            "base" => (&[3, 3, 27, 3], &[128, 256, 512, 1024], false),
            "large" => (&[3, 3, 27, 3], &[192, 384, 768, 1536], false),
            _ => return None,
        };
        Some(ConvNeXtConfig::new(depths, dims).with_conv_mlp(conv_mlp))
    }
}

impl Default for ConvNeXtConfig {
    fn default() -> Self {
        ConvNeXtConfig::named("tiny")
            .unwrap_or_else(|| ConvNeXtConfig::new(&[3, 3, 9, 3], &[96, 192, 384, 768]))
    }
}

fn conv_with_bias<T: Float, R: Rng + ?Sized>(cfg: Conv2dConfig, rng: &mut R) -> Result<Conv2d<T>> {
    let mut conv = Conv2d::new(cfg, rng)?;
    conv.weight.set_value(trunc02(&cfg.weight_shape(), rng)?);
    if let Some(b) = conv.bias.as_mut() {
        b.value_mut().fill(T::zero());
    }
    Ok(conv)
}

/// timm's `ConvNeXt`: a patch-4 stem (4×4 stride-4 conv, LayerNorm2d), stages
/// of [`ConvNeXtBlock`]s, each after the first opened by a downsampling
/// (LayerNorm2d, 2×2 stride-2 conv), then global average pooling, LayerNorm
/// and a linear head.
///
/// Keys as timm's `state_dict`: `stem.0`, `stem.1`, `stages.{i}.downsample.{0,1}`,
/// `stages.{i}.blocks.{j}.{gamma, conv_dw, norm, mlp.fc1, mlp.fc2}`,
/// `head.norm`, `head.fc`. Init as timm's: trunc-normal (std 0.02) weights,
/// zero biases, layer scale `ls_init_value`, the head scaled by `head_init_scale`.
///
/// # Errors
/// [`Error::Config`] for depths and dims of different lengths or with zeros,
/// zero classes or channels, a drop-path rate outside [0, 1).
pub fn convnext<T: Float, R: Rng + ?Sized>(
    cfg: &ConvNeXtConfig,
    rng: &mut R,
) -> Result<Sequential<T>> {
    let ConvNeXtConfig { depths, dims, .. } = cfg;
    if depths.is_empty()
        || depths.len() != dims.len()
        || depths.contains(&0)
        || dims.contains(&0)
        || cfg.num_classes == 0
        || cfg.in_chans == 0
        || !(0.0..1.0).contains(&cfg.drop_path_rate)
    {
        return Err(Error::config("convnext", format!("depths and dims must be non-empty, as long as each other and positive; classes and channels positive; drop_path_rate in [0, 1): got {cfg:?}")));
    }
    let stem = Sequential::new()
        .push(conv_with_bias::<T, _>(
            Conv2dConfig::new(cfg.in_chans, dims[0], 4).with_stride(4),
            rng,
        )?)
        .push(LayerNorm2d::new(LayerNorm2dConfig::new(dims[0]))?);
    let total: usize = depths.iter().sum();
    let mut stages = Sequential::new();
    let mut block_index = 0;
    for (i, (&depth, &dim)) in depths.iter().zip(dims).enumerate() {
        let mut stage = Sequential::new();
        if i > 0 {
            let prev = dims[i - 1];
            stage = stage.push_named(
                "downsample",
                Sequential::new().push(LayerNorm2d::<T>::new(LayerNorm2dConfig::new(prev))?).push(
                    conv_with_bias::<T, _>(Conv2dConfig::new(prev, dim, 2).with_stride(2), rng)?,
                ),
            );
        }
        let mut blocks = Sequential::new();
        for _ in 0..depth {
            // timm: rates rise linearly over all blocks, 0 at the first.
            let rate = if total > 1 {
                cfg.drop_path_rate * block_index as f64 / (total - 1) as f64
            } else {
                0.0
            };
            let block_cfg = ConvNeXtBlockConfig::new(dim)
                .with_conv_mlp(cfg.conv_mlp)
                .with_ls_init_value(Some(cfg.ls_init_value))
                .with_drop_path(rate);
            blocks = blocks.push(ConvNeXtBlock::<T>::new(
                block_cfg,
                mix_seed(0, block_index as u64),
                rng,
            )?);
            block_index += 1;
        }
        stages = stages.push(stage.push_named("blocks", blocks));
    }
    let last = dims[dims.len() - 1];
    let mut fc = Linear::<T>::new(LinearConfig::new(last, cfg.num_classes), rng)?;
    fc.weight.set_value(
        trunc02::<T, _>(&[cfg.num_classes, last], rng)?.mapv(|v| v * T::of(cfg.head_init_scale)),
    );
    if let Some(b) = fc.bias.as_mut() {
        b.value_mut().fill(T::zero());
    }
    let head = Sequential::new()
        .push_named("global_pool", GlobalAvgPool2d::new())
        .push_named("norm", LayerNorm2d::<T>::new(LayerNorm2dConfig::new(last))?)
        .push_named("flatten", Flatten::new())
        .push_named("fc", fc);
    Ok(Sequential::new()
        .push_named("stem", stem)
        .push_named("stages", stages)
        .push_named("head", head))
}

macro_rules! variants {
    ($($(#[$doc:meta])* $fn:ident = $name:literal;)*) => {
        $($(#[$doc])*
        ///
        /// # Errors
        /// As [`convnext`].
        pub fn $fn<T: Float, R: Rng + ?Sized>(num_classes: usize, rng: &mut R) -> Result<Sequential<T>> {
            let cfg = ConvNeXtConfig::named($name).ok_or_else(|| Error::config("convnext", concat!("no variant ", $name)))?;
            convnext(&cfg.with_num_classes(num_classes), rng)
        })*
    };
}

variants! {
    /// timm's `convnext_atto`: depths 2-2-6-2, dims 40…320, conv MLPs (3.7 M parameters at 1000 classes).
    convnext_atto = "atto";
    /// timm's `convnext_femto`: depths 2-2-6-2, dims 48…384, conv MLPs.
    convnext_femto = "femto";
    /// timm's `convnext_pico`: depths 2-2-6-2, dims 64…512, conv MLPs.
    convnext_pico = "pico";
    /// timm's `convnext_nano`: depths 2-2-8-2, dims 80…640, conv MLPs.
    convnext_nano = "nano";
    /// timm's `convnext_tiny`: depths 3-3-9-3, dims 96…768, Linear MLPs (28.6 M parameters).
    convnext_tiny = "tiny";
}
