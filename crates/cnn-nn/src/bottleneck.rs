//! ResNet's `Bottleneck`: 1×1 reduce, 3×3, 1×1 expand (×4), with a skip connection.

use cnn_act::Act;
use cnn_conv::Conv2dConfig;
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{join_key, ArrayD, Error, Float, Layer, Mode, Param, Result};
use rand::Rng;

use crate::block::add_shortcut;
use crate::{kaiming_conv, Sequential};

/// Output channels per `width` of a [`Bottleneck`].
pub const EXPANSION: usize = 4;

/// torchvision's `Bottleneck` (ResNet v1.5: the stride sits on the 3×3 conv):
/// `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x))))))) + shortcut(x))`,
/// from `c_in` to `4·width` channels; the shortcut is a projection
/// `downsample = Sequential(conv 1×1 stride, BatchNorm)` when the stride or
/// channel count changes. Keys: `conv1..3`, `bn1..3`, `downsample.0/1`.
pub struct Bottleneck<T: Float = f32> {
    convs: [cnn_conv::Conv2d<T>; 3],
    bns: [BatchNorm<T>; 3],
    relus: [Act<T>; 3],
    downsample: Option<Sequential<T>>,
}

impl<T: Float> Bottleneck<T> {
    /// A block from `c_in` channels through `width` to `4·width`, with the given stride.
    ///
    /// # Errors
    /// [`Error::Config`] for zero channels or stride.
    pub fn new<R: Rng + ?Sized>(
        c_in: usize,
        width: usize,
        stride: usize,
        rng: &mut R,
    ) -> Result<Self> {
        if stride == 0 || width == 0 || c_in == 0 {
            return Err(Error::config("bottleneck", "channels and stride must be positive"));
        }
        let out = width * EXPANSION;
        let convs = [
            kaiming_conv(Conv2dConfig::new(c_in, width, 1).with_bias(false), rng)?,
            kaiming_conv(
                Conv2dConfig::new(width, width, 3)
                    .with_stride(stride)
                    .with_padding(1)
                    .with_bias(false),
                rng,
            )?,
            kaiming_conv(Conv2dConfig::new(width, out, 1).with_bias(false), rng)?,
        ];
        let bn = |c| BatchNorm::new_2d(BatchNormConfig::new(c));
        let downsample = if stride != 1 || c_in != out {
            let conv = kaiming_conv(
                Conv2dConfig::new(c_in, out, 1).with_stride(stride).with_bias(false),
                rng,
            )?;
            Some(Sequential::new().push(conv).push(bn(out)?))
        } else {
            None
        };
        Ok(Bottleneck {
            convs,
            bns: [bn(width)?, bn(width)?, bn(out)?],
            relus: [Act::relu(), Act::relu(), Act::relu()],
            downsample,
        })
    }
}

impl<T: Float> Bottleneck<T> {
    /// Eval mode with fused inference: each conv with its norm (and ReLU) as
    /// one convolution, the shortcut added in place, no copy of the input.
    fn forward_fused(&mut self, x: ArrayD<T>) -> Result<ArrayD<T>> {
        let x = crate::fusion::to4("bottleneck", x)?;
        let [c1, c2, c3] = &mut self.convs;
        let [b1, b2, b3] = &mut self.bns;
        let [r1, r2, r3] = &mut self.relus;
        let y = crate::fusion::conv_bn(c1, b1, Some(r1), x.view())?;
        let y = crate::fusion::conv_bn(c2, b2, Some(r2), y.view())?;
        let mut y = crate::fusion::conv_bn(c3, b3, None, y.view())?.into_dyn();
        match &mut self.downsample {
            Some(ds) => add_shortcut(&mut y, ds.forward(x.into_dyn(), Mode::Eval)?.view())?,
            None => add_shortcut(&mut y, x.into_dyn().view())?,
        }
        r3.forward(y, Mode::Eval)
    }
}

impl<T: Float> Layer<T> for Bottleneck<T> {
    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if mode == Mode::Eval && crate::fusion_enabled() {
            return self.forward_fused(x);
        }
        // The identity shortcut reads the copy conv1 keeps for backward (no clone).
        let projected = match &mut self.downsample {
            Some(ds) => Some(ds.forward(x.clone(), mode)?),
            None => None,
        };
        let x_eval = (projected.is_none() && mode == Mode::Eval).then(|| x.clone());
        let mut y = x;
        for i in 0..3 {
            y = self.bns[i].forward(self.convs[i].forward(y, mode)?, mode)?;
            if i < 2 {
                y = self.relus[i].forward(y, mode)?;
            }
        }
        match (&projected, &x_eval) {
            (Some(s), _) | (None, Some(s)) => add_shortcut(&mut y, s.view())?,
            (None, None) => {
                let s =
                    self.convs[0].cached_input().ok_or(Error::NoForward { op: "bottleneck" })?;
                add_shortcut(&mut y, s.into_dyn())?;
            }
        }
        self.relus[2].forward(y, mode)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        // The main path reads dz (bn3 takes a view), then the shortcut takes it (no copy).
        let dz = self.relus[2].backward(dy)?;
        let mut d = self.convs[2].backward(self.bns[2].backward_view(dz.view())?)?;
        for i in (0..2).rev() {
            d = self.relus[i].backward(d)?;
            d = self.convs[i].backward(self.bns[i].backward(d)?)?;
        }
        match &mut self.downsample {
            Some(ds) => add_shortcut(&mut d, ds.backward(dz)?.view())?,
            None => add_shortcut(&mut d, dz.view())?,
        }
        Ok(d)
    }

    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        for i in 0..3 {
            self.convs[i].visit(&join_key(prefix, &format!("conv{}", i + 1)), f);
            self.bns[i].visit(&join_key(prefix, &format!("bn{}", i + 1)), f);
        }
        if let Some(ds) = self.downsample.as_mut() {
            ds.visit(&join_key(prefix, "downsample"), f);
        }
    }
}
