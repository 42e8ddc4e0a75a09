//! ResNet's `BasicBlock`: two 3×3 convolutions with a skip connection.

use cnn_act::Act;
use cnn_conv::{Conv2d, Conv2dConfig};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{join_key, ArrayD, Error, Float, Layer, Mode, Param, Result};
use ndarray::ArrayViewD;
use rand::Rng;

use crate::{kaiming_conv, Sequential};

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, as torchvision's
/// `BasicBlock`. The shortcut is the identity, or, when the stride or width
/// changes, a projection `downsample = Sequential(conv 1×1 stride s, BatchNorm)`.
/// With `skip = false` it is the plain twin (no shortcut), for the degradation
/// experiment. Keys: `conv1`, `bn1`, `conv2`, `bn2`, `downsample.0`, `downsample.1`.
pub struct BasicBlock<T: Float = f32> {
    conv1: Conv2d<T>,
    bn1: BatchNorm<T>,
    relu1: Act<T>,
    conv2: Conv2d<T>,
    bn2: BatchNorm<T>,
    downsample: Option<Sequential<T>>,
    relu_out: Act<T>,
    skip: bool,
}

impl<T: Float> BasicBlock<T> {
    /// A block from `c_in` to `c_out` channels with the given stride; convs
    /// Kaiming-normal (fan_out), BatchNorm γ = 1, β = 0, as torchvision.
    ///
    /// # Errors
    /// [`Error::Config`] for zero channels or stride.
    pub fn new<R: Rng + ?Sized>(
        c_in: usize,
        c_out: usize,
        stride: usize,
        skip: bool,
        rng: &mut R,
    ) -> Result<Self> {
        if stride == 0 {
            return Err(Error::config("basic_block", "stride must be positive"));
        }
        let conv1 = kaiming_conv(
            Conv2dConfig::new(c_in, c_out, 3).with_stride(stride).with_padding(1).with_bias(false),
            rng,
        )?;
        let conv2 =
            kaiming_conv(Conv2dConfig::new(c_out, c_out, 3).with_padding(1).with_bias(false), rng)?;
        let downsample = if skip && (stride != 1 || c_in != c_out) {
            let conv = kaiming_conv(
                Conv2dConfig::new(c_in, c_out, 1).with_stride(stride).with_bias(false),
                rng,
            )?;
            Some(Sequential::new().push(conv).push(BatchNorm::new_2d(BatchNormConfig::new(c_out))?))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1,
            bn1: BatchNorm::new_2d(BatchNormConfig::new(c_out))?,
            relu1: Act::relu(),
            conv2,
            bn2: BatchNorm::new_2d(BatchNormConfig::new(c_out))?,
            downsample,
            relu_out: Act::relu(),
            skip,
        })
    }

    /// Sets the last BatchNorm's γ to zero, so the block starts as the identity
    /// (torchvision's `zero_init_residual`).
    pub fn zero_init_residual(&mut self) {
        self.bn2.visit("", &mut |k, p| {
            if k == "weight" {
                p.value.fill(T::zero());
            }
        });
    }
}

impl<T: Float> BasicBlock<T> {
    /// Eval mode with fused inference: conv1+bn1+ReLU and conv2+bn2 as one
    /// convolution each (the norms folded in), the shortcut added in place,
    /// no copy of the input.
    fn forward_fused(&mut self, x: ArrayD<T>) -> Result<ArrayD<T>> {
        let x = crate::fusion::to4("basic_block", x)?;
        let y = crate::fusion::conv_bn(
            &mut self.conv1,
            &mut self.bn1,
            Some(&mut self.relu1),
            x.view(),
        )?;
        let mut y =
            crate::fusion::conv_bn(&mut self.conv2, &mut self.bn2, None, y.view())?.into_dyn();
        match (&mut self.downsample, self.skip) {
            (Some(ds), _) => add_shortcut(&mut y, ds.forward(x.into_dyn(), Mode::Eval)?.view())?,
            (None, true) => add_shortcut(&mut y, x.into_dyn().view())?,
            (None, false) => {}
        }
        self.relu_out.forward(y, Mode::Eval)
    }
}

/// `y += shortcut`, or an error when the shapes differ.
pub(crate) fn add_shortcut<T: Float>(y: &mut ArrayD<T>, shortcut: ArrayViewD<'_, T>) -> Result<()> {
    if shortcut.shape() != y.shape() {
        return Err(Error::shape(
            "residual",
            format!("shortcut {:?} and main path {:?} differ", shortcut.shape(), y.shape()),
        ));
    }
    *y += &shortcut;
    Ok(())
}

impl<T: Float> Layer<T> for BasicBlock<T> {
    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if mode == Mode::Eval && crate::fusion_enabled() {
            return self.forward_fused(x);
        }
        // The projection reads its own copy of x; the identity shortcut reads
        // the copy conv1 keeps for backward (no clone), once the main path is done.
        let projected = match &mut self.downsample {
            Some(ds) => Some(ds.forward(x.clone(), mode)?),
            None => None,
        };
        let identity = self.skip && self.downsample.is_none();
        let x_eval = (identity && mode == Mode::Eval).then(|| x.clone());
        let mut y = self.conv1.forward(x, mode)?;
        y = self.relu1.forward(self.bn1.forward(y, mode)?, mode)?;
        y = self.bn2.forward(self.conv2.forward(y, mode)?, mode)?;
        if let Some(s) = &projected {
            add_shortcut(&mut y, s.view())?;
        } else if let Some(s) = &x_eval {
            add_shortcut(&mut y, s.view())?;
        } else if identity {
            let s = self.conv1.cached_input().ok_or(Error::NoForward { op: "basic_block" })?;
            add_shortcut(&mut y, s.into_dyn())?;
        }
        self.relu_out.forward(y, mode)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        // The sum's gradient flows unchanged into both paths: the main path
        // reads it (bn2 takes a view), then the shortcut takes it (no copy).
        let dz = self.relu_out.backward(dy)?;
        let mut d = self.conv2.backward(self.bn2.backward_view(dz.view())?)?;
        d = self.conv1.backward(self.bn1.backward(self.relu1.backward(d)?)?)?;
        match (&mut self.downsample, self.skip) {
            (Some(ds), _) => add_shortcut(&mut d, ds.backward(dz)?.view())?,
            (None, true) => add_shortcut(&mut d, dz.view())?,
            (None, false) => {}
        }
        Ok(d)
    }

    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        self.conv1.visit(&join_key(prefix, "conv1"), f);
        self.bn1.visit(&join_key(prefix, "bn1"), f);
        self.conv2.visit(&join_key(prefix, "conv2"), f);
        self.bn2.visit(&join_key(prefix, "bn2"), f);
        if let Some(ds) = self.downsample.as_mut() {
            ds.visit(&join_key(prefix, "downsample"), f);
        }
    }
}
