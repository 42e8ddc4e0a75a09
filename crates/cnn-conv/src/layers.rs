//! `Conv2d`, `MaxPool2d`, `AvgPool2d` and `GlobalAvgPool2d`: the kernels as [`Layer`]s.

use cnn_tensor::{join_key, ArrayD, Error, Float, Layer, Mode, Param, Result};
use ndarray::{Array4, ArrayView1, ArrayView4, Ix1, Ix4};
use rand::Rng;

use crate::conv2d::conv2d_forward_cached;
use crate::epilogue::Epilogue;
use crate::fold::{ChannelAffine, FoldCache};
use crate::weight_cache::WeightCache;
use crate::{
    avg_pool2d_backward, avg_pool2d_forward, conv2d_backward, global_avg_pool2d_backward,
    global_avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward, Conv2dOptions,
    Pool2dOptions,
};

/// `x` as `[N, C, H, W]`, or an error naming `op`.
fn to4<T: Float>(op: &'static str, x: ArrayD<T>) -> Result<Array4<T>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality::<Ix4>().map_err(|_| {
        Error::shape(op, format!("input must be 4-D [N, C, H, W], got {}-D {shape:?}", shape.len()))
    })
}

fn shape4(a: &Array4<impl Sized>) -> [usize; 4] {
    let (n, c, h, w) = a.dim();
    [n, c, h, w]
}

/// Settings of a [`Conv2d`] layer (`nn.Conv2d`'s arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]` (PyTorch's `kernel_size`).
    pub kernel_size: [usize; 2],
    /// Stride, padding, dilation, groups.
    pub options: Conv2dOptions,
    /// Whether there is a bias (default `true`, as PyTorch).
    pub bias: bool,
}

impl Conv2dConfig {
    /// `in → out` channels with a square `k×k` kernel, stride 1, no padding, a bias.
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size: [k, k],
            options: Conv2dOptions::default(),
            bias: true,
        }
    }
    /// A rectangular `kh×kw` kernel.
    pub fn with_kernel_hw(mut self, kh: usize, kw: usize) -> Self {
        self.kernel_size = [kh, kw];
        self
    }
    /// The same stride on both axes.
    pub fn with_stride(mut self, s: usize) -> Self {
        self.options.stride = [s, s];
        self
    }
    /// Stride `[h, w]`.
    pub fn with_stride_hw(mut self, sh: usize, sw: usize) -> Self {
        self.options.stride = [sh, sw];
        self
    }
    /// The same padding on both axes.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.options.padding = [p, p];
        self
    }
    /// Padding `[h, w]`.
    pub fn with_padding_hw(mut self, ph: usize, pw: usize) -> Self {
        self.options.padding = [ph, pw];
        self
    }
    /// The same dilation on both axes.
    pub fn with_dilation(mut self, d: usize) -> Self {
        self.options.dilation = [d, d];
        self
    }
    /// Channel groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.options.groups = groups;
        self
    }
    cnn_tensor::setters! {
        /// With or without a bias.
        with_bias: bias: bool;
    }
    /// The weight shape `[out, in/groups, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.options.groups.max(1),
            self.kernel_size[0],
            self.kernel_size[1],
        ]
    }
}

/// `nn.Conv2d`: weight `[out, in/groups, kh, kw]` (key `weight`), optional bias `[out]` (key `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d<T: Float = f32> {
    /// The kernel, `[out, in/groups, kh, kw]`.
    pub weight: Param<T>,
    /// The bias, `[out]`.
    pub bias: Option<Param<T>>,
    /// Stride, padding, dilation, groups.
    pub options: Conv2dOptions,
    cache: Option<Array4<T>>,
    /// The Winograd weight transform of the last eval-mode call.
    eval_weights: WeightCache<T>,
    /// Fused inference: this conv's weights with the next norm folded in.
    folded: FoldCache<T>,
}

impl<T: Float> Conv2d<T> {
    /// A layer with PyTorch's default init (weight and bias from U(±1/√fan_in)).
    ///
    /// # Errors
    /// [`Error::Config`] for zero sizes, or groups that do not divide both channel counts.
    pub fn new<R: Rng + ?Sized>(cfg: Conv2dConfig, rng: &mut R) -> Result<Self> {
        if cfg.in_channels == 0 || cfg.out_channels == 0 || cfg.kernel_size.contains(&0) {
            return Err(Error::config(
                "conv2d",
                format!("channels and kernel_size must be positive, got {cfg:?}"),
            ));
        }
        cfg.options.check("conv2d")?;
        if let Some(msg) = cfg.options.groups_mismatch(cfg.in_channels, cfg.out_channels) {
            return Err(Error::config("conv2d", msg));
        }
        let shape = cfg.weight_shape();
        let weight = cnn_init::pytorch_default_weight(&shape, rng)?;
        let bias = if cfg.bias {
            Some(Param::new(cnn_init::pytorch_default_bias(&shape, rng)?))
        } else {
            None
        };
        Ok(Conv2d {
            weight: Param::new(weight),
            bias,
            options: cfg.options,
            cache: None,
            eval_weights: WeightCache::default(),
            folded: FoldCache::default(),
        })
    }

    /// A layer from given weights (`[out, in/groups, kh, kw]`, bias `[out]`).
    ///
    /// # Errors
    /// [`Error::Shape`] when the weight is not 4-D or the bias not `[out]`.
    pub fn from_weights(
        weight: ArrayD<T>,
        bias: Option<ArrayD<T>>,
        options: Conv2dOptions,
    ) -> Result<Self> {
        if weight.ndim() != 4 {
            return Err(Error::shape(
                "conv2d",
                format!("weight must be 4-D, got {:?}", weight.shape()),
            ));
        }
        if let Some(b) = &bias {
            if b.shape() != [weight.shape()[0]] {
                return Err(Error::shape(
                    "conv2d",
                    format!("bias must be [{}], got {:?}", weight.shape()[0], b.shape()),
                ));
            }
        }
        Ok(Conv2d {
            weight: Param::new(weight),
            bias: bias.map(Param::new),
            options,
            cache: None,
            eval_weights: WeightCache::default(),
            folded: FoldCache::default(),
        })
    }
}

/// The weight as `[out, in/groups, kh, kw]` and the bias as `[out]`.
impl<T: Float> Conv2d<T> {
    /// Fused inference: `epilogue(norm(conv(x)))` in one pass, for eval mode
    /// (nothing is kept for backward). With `norm` (a BatchNorm's eval map,
    /// `cnn_norm::BatchNorm::eval_scale_shift`) the norm is folded into this
    /// conv's weights and bias, computed once and recomputed when the
    /// weights, the bias or the norm change; the epilogue (ReLU) is applied
    /// to each output tile while it is in cache. Equal to the three layers
    /// run one after the other within f32 rounding (the folded weights round
    /// differently), bit for bit without a norm.
    ///
    /// # Errors
    /// As [`crate::conv2d_forward`]; [`Error::Shape`] when `norm` has not one
    /// value per output channel.
    pub fn forward_fused(
        &mut self,
        x: ArrayView4<'_, T>,
        norm: Option<ChannelAffine<'_, T>>,
        epilogue: Epilogue,
    ) -> Result<Array4<T>> {
        let (w, b) = views(&self.weight, self.bias.as_ref())?;
        self.cache = None;
        match norm {
            None => conv2d_forward_cached(
                x,
                w,
                b,
                &self.options,
                Some((&mut self.eval_weights, self.weight.version())),
                epilogue,
            ),
            Some(norm) => {
                let b = b.map(|b| b.to_vec());
                let versions = (self.weight.version(), self.bias.as_ref().map(Param::version));
                let (w, b, prepared) = self.folded.get(w, b.as_deref(), versions, norm)?;
                let b = ndarray::ArrayView1::from(b);
                conv2d_forward_cached(x, w, Some(b), &self.options, Some(prepared), epilogue)
            }
        }
    }

    /// The input kept by the last train-mode forward, for a caller that
    /// needs it too (a residual block's shortcut) instead of a copy.
    pub fn cached_input(&self) -> Option<ArrayView4<'_, T>> {
        self.cache.as_ref().map(|x| x.view())
    }
}

fn views<'a, T: Float>(
    weight: &'a Param<T>,
    bias: Option<&'a Param<T>>,
) -> Result<(ArrayView4<'a, T>, Option<ArrayView1<'a, T>>)> {
    let w = weight
        .value()
        .view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| Error::shape("conv2d", "weight must be 4-D"))?;
    let b = match bias {
        Some(b) => Some(
            b.value()
                .view()
                .into_dimensionality::<Ix1>()
                .map_err(|_| Error::shape("conv2d", "bias must be 1-D"))?,
        ),
        None => None,
    };
    Ok((w, b))
}

impl<T: Float> Layer<T> for Conv2d<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let x = to4("conv2d", x)?;
        let (w, b) = views(&self.weight, self.bias.as_ref())?;
        // In eval mode the Winograd weight transform is kept between calls.
        let cache = (mode == Mode::Eval).then_some((&mut self.eval_weights, self.weight.version()));
        let y = conv2d_forward_cached(x.view(), w, b, &self.options, cache, Epilogue::None)?;
        self.cache = (mode == Mode::Train).then_some(x);
        Ok(y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let x = self.cache.take().ok_or(Error::NoForward { op: "conv2d" })?;
        let dy = to4("conv2d", dy)?;
        let (w, _) = views(&self.weight, self.bias.as_ref())?;
        let grads = conv2d_backward(x.view(), w, dy.view(), &self.options)?;
        if self.weight.trainable {
            self.weight.grad += &grads.dw.into_dyn();
        }
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable) {
            b.grad += &grads.db.into_dyn();
        }
        Ok(grads.dx.into_dyn())
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&join_key(prefix, "weight"), &mut self.weight);
        if let Some(b) = self.bias.as_mut() {
            f(&join_key(prefix, "bias"), b);
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        f(&join_key(prefix, "weight"), &self.weight);
        if let Some(b) = self.bias.as_ref() {
            f(&join_key(prefix, "bias"), b);
        }
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

/// `nn.MaxPool2d`: no parameters.
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    /// Window, stride, padding, ceil mode.
    pub options: Pool2dOptions,
    cache: Option<(Array4<usize>, [usize; 4])>,
}

impl MaxPool2d {
    /// A max pool with these options.
    pub fn new(options: Pool2dOptions) -> Self {
        MaxPool2d { options, cache: None }
    }
}

impl<T: Float> Layer<T> for MaxPool2d {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let x = to4("max_pool2d", x)?;
        let out = max_pool2d_forward(x.view(), &self.options)?;
        self.cache = (mode == Mode::Train).then(|| (out.argmax, shape4(&x)));
        Ok(out.y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let (argmax, shape) = self.cache.take().ok_or(Error::NoForward { op: "max_pool2d" })?;
        let dy = to4("max_pool2d", dy)?;
        if dy.shape() != argmax.shape() {
            return Err(Error::shape(
                "max_pool2d",
                format!("dy is {:?}, expected {:?}", dy.shape(), argmax.shape()),
            ));
        }
        Ok(max_pool2d_backward(dy.view(), argmax.view(), shape)?.into_dyn())
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}
}

/// `nn.AvgPool2d`: no parameters.
#[derive(Debug, Clone)]
pub struct AvgPool2d {
    /// Window, stride, padding, ceil mode, `count_include_pad`.
    pub options: Pool2dOptions,
    cache: Option<[usize; 4]>,
}

impl AvgPool2d {
    /// An average pool with these options.
    pub fn new(options: Pool2dOptions) -> Self {
        AvgPool2d { options, cache: None }
    }
}

impl<T: Float> Layer<T> for AvgPool2d {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let x = to4("avg_pool2d", x)?;
        let y = avg_pool2d_forward(x.view(), &self.options)?;
        self.cache = (mode == Mode::Train).then(|| shape4(&x));
        Ok(y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let shape = self.cache.take().ok_or(Error::NoForward { op: "avg_pool2d" })?;
        let dy = to4("avg_pool2d", dy)?;
        Ok(avg_pool2d_backward(dy.view(), shape, &self.options)?.into_dyn())
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}
}

/// `nn.AdaptiveAvgPool2d(1)`: `[N, C, H, W]` → `[N, C, 1, 1]`, no parameters.
#[derive(Debug, Clone, Default)]
pub struct GlobalAvgPool2d {
    cache: Option<[usize; 4]>,
}

impl GlobalAvgPool2d {
    /// A global average pool.
    pub fn new() -> Self {
        GlobalAvgPool2d::default()
    }
}

impl<T: Float> Layer<T> for GlobalAvgPool2d {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let x = to4("global_avg_pool2d", x)?;
        let y = global_avg_pool2d_forward(x.view())?;
        self.cache = (mode == Mode::Train).then(|| shape4(&x));
        Ok(y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let shape = self.cache.take().ok_or(Error::NoForward { op: "global_avg_pool2d" })?;
        let dy = to4("global_avg_pool2d", dy)?;
        Ok(global_avg_pool2d_backward(dy.view(), shape)?.into_dyn())
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}
}
