//! `Residual`: `post(main(x) + shortcut(x))`, the one place the skip
//! connection is wired; ResNet's [`BasicBlock`] and [`Bottleneck`] are built
//! from it.

use cnn_act::Act;
use cnn_conv::{Conv2d, Conv2dConfig};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{join_key, ArrayD, Error, Float, Layer, Mode, Param, Result};
use ndarray::ArrayViewD;
use rand::Rng;

use crate::{kaiming_conv, Sequential};

/// Output channels per `width` of a [`Bottleneck`].
pub const EXPANSION: usize = 4;

/// What a [`Residual`] adds to its main branch.
pub enum Shortcut<T: Float = f32> {
    /// The input itself.
    Identity,
    /// A projection of the input (torchvision's `downsample`: a 1×1 conv with
    /// the block's stride, then a BatchNorm), its keys under `downsample`.
    Projection(Sequential<T>),
    /// Nothing: the block is its main branch alone (a "plain" network, for
    /// the degradation experiment).
    Off,
}

/// `post(main(x) + shortcut(x))` (`post` is usually a ReLU).
///
/// Keys: the main branch's children sit directly under the block's prefix
/// (`conv1`, `bn1`, … as torchvision names them), the projection under
/// `downsample`. Summaries descend into both branches.
///
/// In training the identity shortcut reads the input the main branch's first
/// convolution keeps for backward (no copy); in eval mode with fused
/// inference the main branch's first convolution reads the input in place
/// and the shortcut is added into the output. Backward hands the main branch
/// the sum's gradient by view ([`Layer::backward_view`]) and the shortcut
/// takes it after, so it is not copied either.
pub struct Residual<T: Float = f32> {
    /// The main branch, applied in order.
    pub main: Sequential<T>,
    /// What is added to the main branch's output.
    pub shortcut: Shortcut<T>,
    /// Applied to the sum (ResNets: a ReLU); `None` for none.
    pub post: Option<Act<T>>,
    /// The type name summaries show (`BasicBlock`, `Bottleneck`, `Residual`).
    name: &'static str,
}

impl<T: Float> Residual<T> {
    /// `main(x) + shortcut(x)`, nothing after the sum.
    pub fn new(main: Sequential<T>, shortcut: Shortcut<T>) -> Self {
        Residual { main, shortcut, post: None, name: "cnn_nn::Residual" }
    }

    /// With `post` applied to the sum.
    pub fn with_post(mut self, post: Act<T>) -> Self {
        self.post = Some(post);
        self
    }

    cnn_tensor::setters! {
        /// With the type name a summary shows for it (`"cnn_nn::BasicBlock"`).
        with_name: name: &'static str;
    }

    /// Sets γ of the main branch's last BatchNorm to zero, so the block starts
    /// as its shortcut (torchvision's `zero_init_residual`). Returns whether
    /// the branch has a BatchNorm.
    pub fn zero_init_residual(&mut self) -> bool {
        let last_norm = self
            .main
            .children
            .iter_mut()
            .rev()
            .find_map(|(_, l)| l.as_any_mut().and_then(|a| a.downcast_mut::<BatchNorm<T>>()));
        let Some(bn) = last_norm else { return false };
        bn.visit_mut("", &mut |k, p| {
            if k == "weight" {
                p.value_mut().fill(T::zero());
            }
        });
        true
    }

    /// The main branch's first layer, when it is a convolution (in training
    /// its cached input is the block's input).
    fn first_conv(&mut self) -> Option<&mut Conv2d<T>> {
        let (_, first) = self.main.children.first_mut()?;
        first.as_any_mut().and_then(|a| a.downcast_mut::<Conv2d<T>>())
    }

    /// Eval mode with fused inference: the main branch reads `x` in place,
    /// the shortcut is added into its output.
    fn forward_fused(&mut self, x: ArrayD<T>) -> Result<ArrayD<T>> {
        let mut y = self.main.forward_eval_borrowed(&x)?;
        match &mut self.shortcut {
            Shortcut::Projection(ds) => add_shortcut(&mut y, ds.forward(x, Mode::Eval)?.view())?,
            Shortcut::Identity => add_shortcut(&mut y, x.view())?,
            Shortcut::Off => {}
        }
        match &mut self.post {
            Some(post) => post.forward(y, Mode::Eval),
            None => Ok(y),
        }
    }
}

/// `y += shortcut`, or an error when the shapes differ.
fn add_shortcut<T: Float>(y: &mut ArrayD<T>, shortcut: ArrayViewD<'_, T>) -> Result<()> {
    if shortcut.shape() != y.shape() {
        return Err(Error::shape(
            "residual",
            format!("shortcut {:?} and main path {:?} differ", shortcut.shape(), y.shape()),
        ));
    }
    *y += &shortcut;
    Ok(())
}

impl<T: Float> Layer<T> for Residual<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if mode == Mode::Eval && crate::fusion_enabled() {
            return self.forward_fused(x);
        }
        let projected = match &mut self.shortcut {
            Shortcut::Projection(ds) => Some(ds.forward(x.clone(), mode)?),
            _ => None,
        };
        let identity = matches!(self.shortcut, Shortcut::Identity);
        // In training the first conv keeps x for its backward: the identity
        // shortcut reads that instead of a copy.
        let from_cache = identity && mode == Mode::Train && self.first_conv().is_some();
        let copy = (identity && !from_cache).then(|| x.clone());
        let mut y = self.main.forward(x, mode)?;
        if let Some(s) = projected.as_ref().or(copy.as_ref()) {
            add_shortcut(&mut y, s.view())?;
        } else if from_cache {
            let conv = self.first_conv().ok_or(Error::NoForward { op: "residual" })?;
            let s = conv.cached_input().ok_or(Error::NoForward { op: "residual" })?;
            add_shortcut(&mut y, s.into_dyn())?;
        }
        match &mut self.post {
            Some(post) => post.forward(y, mode),
            None => Ok(y),
        }
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        // The sum's gradient flows unchanged into both branches: the main
        // branch reads it by view, then the shortcut takes it (no copy).
        let dz = match &mut self.post {
            Some(post) => post.backward(dy)?,
            None => dy,
        };
        let mut d = self.main.backward_view(dz.view())?;
        match &mut self.shortcut {
            Shortcut::Projection(ds) => add_shortcut(&mut d, ds.backward(dz)?.view())?,
            Shortcut::Identity => add_shortcut(&mut d, dz.view())?,
            Shortcut::Off => {}
        }
        Ok(d)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        self.main.visit(prefix, f);
        if let Shortcut::Projection(ds) = &self.shortcut {
            ds.visit(&join_key(prefix, "downsample"), f);
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        self.main.visit_mut(prefix, f);
        if let Shortcut::Projection(ds) = &mut self.shortcut {
            ds.visit_mut(&join_key(prefix, "downsample"), f);
        }
    }

    fn type_name(&self) -> &'static str {
        self.name
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    /// The main branch, transparent (its children's keys sit under the
    /// block's prefix), then the projection as `downsample`.
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<T>)> {
        let mut children: Vec<(String, &mut dyn Layer<T>)> = vec![(String::new(), &mut self.main)];
        if let Shortcut::Projection(ds) = &mut self.shortcut {
            children.push(("downsample".into(), ds));
        }
        children
    }

    fn children(&self) -> Vec<(String, &dyn Layer<T>)> {
        let mut children: Vec<(String, &dyn Layer<T>)> = vec![(String::new(), &self.main)];
        if let Shortcut::Projection(ds) = &self.shortcut {
            children.push(("downsample".into(), ds));
        }
        children
    }

    fn wiring(&self) -> cnn_tensor::Wiring {
        cnn_tensor::Wiring::Branches
    }
}

/// torchvision's `BasicBlock`, built as a [`Residual`]:
/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`. The shortcut is the
/// identity or, when the stride or width changes, a projection
/// `downsample = (conv 1×1 stride s, BatchNorm)`. Keys: `conv1`, `bn1`,
/// `conv2`, `bn2`, `downsample.0`, `downsample.1`.
pub struct BasicBlock;

impl BasicBlock {
    /// A block from `c_in` to `c_out` channels with the given stride; convs
    /// Kaiming-normal (fan_out), BatchNorm γ = 1, β = 0, as torchvision.
    ///
    /// # Errors
    /// [`Error::Config`] for zero channels or stride.
    // Named as torchvision's class, but a block is a `Residual`: no type of its own.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<T: Float, R: Rng + ?Sized>(
        c_in: usize,
        c_out: usize,
        stride: usize,
        rng: &mut R,
    ) -> Result<Residual<T>> {
        Self::build(c_in, c_out, stride, true, rng)
    }

    /// The plain twin of [`BasicBlock::new`]: the same layers and keys, no
    /// shortcut (`Shortcut::Off`), for the degradation experiment.
    ///
    /// # Errors
    /// As [`BasicBlock::new`].
    pub fn plain<T: Float, R: Rng + ?Sized>(
        c_in: usize,
        c_out: usize,
        stride: usize,
        rng: &mut R,
    ) -> Result<Residual<T>> {
        Self::build(c_in, c_out, stride, false, rng)
    }

    fn build<T: Float, R: Rng + ?Sized>(
        c_in: usize,
        c_out: usize,
        stride: usize,
        skip: bool,
        rng: &mut R,
    ) -> Result<Residual<T>> {
        if stride == 0 {
            return Err(Error::config("basic_block", "stride must be positive"));
        }
        let bn = |c| BatchNorm::<T>::new_2d(BatchNormConfig::new(c));
        let main = Sequential::new()
            .push_named("conv1", conv3x3(c_in, c_out, stride, rng)?)
            .push_named("bn1", bn(c_out)?)
            .push_named("relu1", Act::relu())
            .push_named("conv2", conv3x3(c_out, c_out, 1, rng)?)
            .push_named("bn2", bn(c_out)?);
        let shortcut = if !skip {
            Shortcut::Off
        } else if stride != 1 || c_in != c_out {
            Shortcut::Projection(projection(c_in, c_out, stride, rng)?)
        } else {
            Shortcut::Identity
        };
        Ok(Residual::new(main, shortcut).with_post(Act::relu()).with_name("cnn_nn::BasicBlock"))
    }
}

/// torchvision's `Bottleneck` (ResNet v1.5: the stride sits on the 3×3
/// conv), built as a [`Residual`]:
/// `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x))))))) + shortcut(x))`,
/// from `c_in` to `4·width` channels; the shortcut is a projection
/// `downsample = (conv 1×1 stride, BatchNorm)` when the stride or channel
/// count changes. Keys: `conv1..3`, `bn1..3`, `downsample.0/1`.
pub struct Bottleneck;

impl Bottleneck {
    /// A block from `c_in` channels through `width` to `4·width`, with the given stride.
    ///
    /// # Errors
    /// [`Error::Config`] for zero channels or stride.
    // Named as torchvision's class, but a block is a `Residual`: no type of its own.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<T: Float, R: Rng + ?Sized>(
        c_in: usize,
        width: usize,
        stride: usize,
        rng: &mut R,
    ) -> Result<Residual<T>> {
        if stride == 0 || width == 0 || c_in == 0 {
            return Err(Error::config("bottleneck", "channels and stride must be positive"));
        }
        let out = width * EXPANSION;
        let bn = |c| BatchNorm::<T>::new_2d(BatchNormConfig::new(c));
        let main = Sequential::new()
            .push_named("conv1", conv1x1(c_in, width, 1, rng)?)
            .push_named("bn1", bn(width)?)
            .push_named("relu1", Act::relu())
            .push_named("conv2", conv3x3(width, width, stride, rng)?)
            .push_named("bn2", bn(width)?)
            .push_named("relu2", Act::relu())
            .push_named("conv3", conv1x1(width, out, 1, rng)?)
            .push_named("bn3", bn(out)?);
        let shortcut = if stride != 1 || c_in != out {
            Shortcut::Projection(projection(c_in, out, stride, rng)?)
        } else {
            Shortcut::Identity
        };
        Ok(Residual::new(main, shortcut).with_post(Act::relu()).with_name("cnn_nn::Bottleneck"))
    }
}

/// torchvision's `conv3x3`: padding 1, no bias, Kaiming-normal (fan_out).
fn conv3x3<T: Float, R: Rng + ?Sized>(
    c_in: usize,
    c_out: usize,
    stride: usize,
    rng: &mut R,
) -> Result<Conv2d<T>> {
    let cfg = Conv2dConfig::new(c_in, c_out, 3).with_stride(stride).with_padding(1);
    kaiming_conv(cfg.with_bias(false), rng)
}

/// torchvision's `conv1x1`: no bias, Kaiming-normal (fan_out).
fn conv1x1<T: Float, R: Rng + ?Sized>(
    c_in: usize,
    c_out: usize,
    stride: usize,
    rng: &mut R,
) -> Result<Conv2d<T>> {
    kaiming_conv(Conv2dConfig::new(c_in, c_out, 1).with_stride(stride).with_bias(false), rng)
}

/// The projection shortcut: `(conv1x1 stride s, BatchNorm)`, keys `0` and `1`.
fn projection<T: Float, R: Rng + ?Sized>(
    c_in: usize,
    c_out: usize,
    stride: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    Ok(Sequential::new()
        .push(conv1x1(c_in, c_out, stride, rng)?)
        .push(BatchNorm::new_2d(BatchNormConfig::new(c_out))?))
}
