//! ConvNeXt's building blocks, with timm's keys: the per-pixel linear layer
//! of its MLP and the ConvNeXt block.

use cnn_act::{activation_in_place, Act, DropPath};
use cnn_conv::{Conv2d, Conv2dConfig, Epilogue};
use cnn_norm::{LayerNorm2d, LayerNorm2dConfig};
use cnn_tensor::scratch::Scratch as Pooled;
use cnn_tensor::simd;
use cnn_tensor::{
    gemm, gemm_packed_split, join_key, ArrayD, Error, Float, GemmSplit, IxDyn, Layer, Mode,
    PackedLhs, Param, Result, Version,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A linear map over the channels of every pixel: a 1×1 convolution, or
/// timm's channels-last `nn.Linear`. `y[n, o, p] = Σ_i W[o, i]·x[n, i, p] + b[o]`.
///
/// The weight is stored as `[out, in, 1, 1]` (a conv, ConvNeXt's
/// `conv_mlp = True`) or `[out, in]` (a Linear, `conv_mlp = False`), so that
/// both state dicts load as they are; the arithmetic is the same.
///
/// Keys: `weight`, `bias`.
///
/// # Shapes
/// `x: [N, in, H, W]` → `y: [N, out, H, W]`.
pub struct PixelLinear<T: Float = f32> {
    /// `[out, in]` or `[out, in, 1, 1]`.
    pub weight: Param<T>,
    /// `[out]`.
    pub bias: Param<T>,
    x: Option<ArrayD<T>>,
    /// The weight packed for the product in eval mode, kept between calls
    /// with the weight's version and the product width it was packed for.
    eval_packed: Option<((Version, usize, cnn_tensor::Precision), PackedLhs<T>)>,
}

impl<T: Float> PixelLinear<T> {
    /// A layer from `weight` (`[out, in]` or `[out, in, 1, 1]`) and zero bias.
    ///
    /// # Errors
    /// [`Error::Shape`] for any other weight shape.
    pub fn new(weight: ArrayD<T>) -> Result<Self> {
        let s = weight.shape();
        if !(s.len() == 2 || (s.len() == 4 && s[2] == 1 && s[3] == 1)) || s[0] == 0 || s[1] == 0 {
            return Err(Error::shape(
                "pixel_linear",
                format!("weight must be [out, in] or [out, in, 1, 1], got {s:?}"),
            ));
        }
        let bias = Param::new(ArrayD::zeros(IxDyn(&[s[0]])));
        Ok(PixelLinear { weight: Param::new(weight), bias, x: None, eval_packed: None })
    }

    fn dims(&self) -> (usize, usize) {
        (self.weight.value().shape()[0], self.weight.value().shape()[1])
    }

    fn w2(&self) -> Result<ndarray::ArrayView2<'_, T>> {
        let (o, i) = self.dims();
        self.weight
            .value()
            .view()
            .into_shape_with_order((o, i))
            .map_err(|e| Error::shape("pixel_linear", e.to_string()))
    }
}

/// `[N, C, H, W]` as `N` contiguous `[C, H·W]` matrices.
fn as_matrices<T: Float>(op: &'static str, x: &ArrayD<T>, c: usize) -> Result<(usize, usize)> {
    if x.ndim() != 4 || x.shape()[1] != c || x.is_empty() {
        return Err(Error::shape(op, format!("input must be [N, {c}, H, W], got {:?}", x.shape())));
    }
    Ok((x.shape()[0], x.shape()[2] * x.shape()[3]))
}

/// Columns a product should have at least: samples with fewer pixels sit
/// side by side in one product. The micro-kernel's panels are 48 columns
/// wide, so a product per sample of a 4×4 map (16 columns) wasted two thirds
/// of every multiply; 512 as the im2col path's `TARGET_COLS`.
const TARGET_COLS: usize = 512;

/// Parallel tasks a product is cut into at least (by columns, bitwise the
/// same for any cut): enough for 16 threads when there are few blocks.
const MIN_TASKS: usize = 16;

/// Samples per product for maps of `p` pixels: one when a sample alone has
/// [`TARGET_COLS`] pixels, else enough to reach it (at most `n`).
fn samples_per_product(p: usize, n: usize) -> usize {
    TARGET_COLS.div_ceil(p.max(1)).clamp(1, n.max(1))
}

/// What a product does to each row of its output while the block is in
/// cache: `finish(sample, row, values)` (an activation, a layer scale and a
/// residual sum, in fused inference).
pub(crate) type RowFinish<'a, T> = dyn Fn(usize, usize, &mut [T]) + Sync + 'a;

/// `out[n] = a · inp[n] (+ bias[row])` for every sample, then `finish` on
/// each output row: `inp: [N, k, p]`, `out: [N, m, p]`, `a: [m, k]` packed
/// once. Blocks of [`samples_per_product`] samples run in parallel; a block
/// of several samples is gathered side by side (`[k, s·p]`), multiplied in
/// one product and scattered back with the bias. Every output is one
/// product's sum in `k` order: the same numbers on any thread count.
fn products<T: Float>(
    a: &PackedLhs<T>,
    inp: &[T],
    bias: Option<&[T]>,
    out: &mut [MaybeUninit<T>],
    p: usize,
    finish: Option<&RowFinish<'_, T>>,
) -> Result<()> {
    let (m, k) = (a.rows(), a.cols());
    let n = out.len() / (m * p).max(1);
    let s = samples_per_product(p, n);
    let blocks = n.div_ceil(s);
    let split = GemmSplit { rows: 1, cols: MIN_TASKS.div_ceil(blocks) };
    let chunks = out.par_chunks_mut(s * m * p).zip(inp.par_chunks(s * k * p)).enumerate();
    chunks.try_for_each(|(blk, (o, i))| {
        let o = block_product(a, i, bias, o, p, split)?;
        if let Some(finish) = finish {
            for (si, sample) in o.chunks_exact_mut(m * p).enumerate() {
                for (r, row) in sample.chunks_exact_mut(p).enumerate() {
                    finish(blk * s + si, r, row);
                }
            }
        }
        Ok(())
    })
}

/// One block's product: `o = a · i (+ bias)` for its `s` samples (`i:
/// [s, k, p]`, `o: [s, m, p]`), alone or side by side. Writes every value of
/// `o` (no zeroing pass before) and returns it as values.
fn block_product<'o, T: Float>(
    a: &PackedLhs<T>,
    i: &[T],
    bias: Option<&[T]>,
    o: &'o mut [MaybeUninit<T>],
    p: usize,
    split: GemmSplit,
) -> Result<&'o mut [T]> {
    let (m, k) = (a.rows(), a.cols());
    let shape_err = |e: ndarray::ShapeError| Error::shape("pixel_linear", e.to_string());
    let s = o.len() / (m * p);
    if s == 1 {
        // y starts as b[row] (or 0) and the product is added to it (β = 1):
        // no zeroed y, no bias pass after.
        for (r, row) in o.chunks_exact_mut(p).enumerate() {
            row.fill(MaybeUninit::new(bias.map_or(T::zero(), |b| b[r])));
        }
        // SAFETY: every row of `o` was filled just above.
        let o = unsafe { simd::assume_init_mut(o) };
        let i = ndarray::ArrayView2::from_shape((k, p), i).map_err(shape_err)?;
        let ov = ndarray::ArrayViewMut2::from_shape((m, p), &mut *o).map_err(shape_err)?;
        gemm_packed_split(a, i, T::one(), ov, split)?;
        return Ok(o);
    }
    // Every value of both written before it is read.
    let (cols, mut gi, mut go) =
        (s * p, Pooled::<T>::take(k * s * p), Pooled::<T>::take(m * s * p));
    side_by_side(i, k, p, &mut gi);
    let gi_v = ndarray::ArrayView2::from_shape((k, cols), &gi[..]).map_err(shape_err)?;
    let go_v = ndarray::ArrayViewMut2::from_shape((m, cols), &mut go[..]).map_err(shape_err)?;
    gemm_packed_split(a, gi_v, T::zero(), go_v, split)?;
    for (si, sample) in o.chunks_exact_mut(m * p).enumerate() {
        for (r, row) in sample.chunks_exact_mut(p).enumerate() {
            let src = &go[r * cols + si * p..][..p];
            match bias {
                Some(b) => row.iter_mut().zip(src).for_each(|(d, &v)| {
                    d.write(v + b[r]);
                }),
                None => copy_row(row, simd::as_uninit(src)),
            }
        }
    }
    // SAFETY: the loops above wrote every row of every sample of `o`.
    Ok(unsafe { simd::assume_init_mut(o) })
}

/// `dst[c, si·p + q] = src[si, c, q]`: the samples of `src` (`[s, rows, p]`)
/// side by side in one `[rows, s·p]` matrix.
fn side_by_side<T: Copy>(src: &[T], rows: usize, p: usize, dst: &mut [T]) {
    let cols = src.len() / rows.max(1);
    for (si, sample) in src.chunks_exact(rows * p).enumerate() {
        for (c, row) in sample.chunks_exact(p).enumerate() {
            copy_row(&mut dst[c * cols + si * p..][..p], row);
        }
    }
}

/// `dst ← src` for the rows of one sample's plane, which on ConvNeXt's
/// small maps are 4 to 64 values: in blocks of 8 moved in registers, since a
/// `memmove` call per row of a few values was 12% of the train step.
#[inline(always)]
fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    if src.len() >= 256 {
        dst.copy_from_slice(src);
        return;
    }
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (a, b) in (&mut d).zip(&mut s) {
        let b: &[T; 8] = b.try_into().expect("8 values");
        let a: &mut [T; 8] = a.try_into().expect("8 values");
        *a = *b;
    }
    for (a, &b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = b;
    }
}

/// Row blocks of `dW` computed in parallel, each one product over every
/// sample's pixels: fixed (never the thread count), so every entry is one
/// product's sum on any machine.
const DW_ROW_BLOCKS: usize = 4;

/// `dW = Σ_n dy_n · x_nᵀ` (`[o, i]`, row-major) over `N` samples of
/// `x: [N, i, p]` and `dy: [N, o, p]`, as one product over all pixels:
/// both gathered side by side (`[i, N·p]`, `[o, N·p]`), then
/// `dW = DY · Xᵀ` in [`DW_ROW_BLOCKS`] row blocks in parallel. A product per
/// sample rewrote the whole `dW` for every sample (`p = 4` multiply-adds
/// per entry on a 2×2 map) on one thread: 10% of the ConvNeXt-atto step.
fn weight_grad<T: Float>(x: &[T], dy: &[T], (o, i, p): (usize, usize, usize)) -> Result<Vec<T>> {
    let n = x.len() / (i * p).max(1);
    let cols = n * p;
    let gather = |src: &[T], rows: usize| {
        // Every value written before it is read.
        let mut g = Pooled::<T>::take(rows * cols);
        side_by_side(src, rows, p, &mut g);
        g
    };
    let (gx, gdy) = (gather(x, i), gather(dy, o));
    let shape_err = |e: ndarray::ShapeError| Error::shape("pixel_linear", e.to_string());
    let xt = ndarray::ArrayView2::from_shape((i, cols), &gx[..]).map_err(shape_err)?;
    let mut dw = vec![T::zero(); o * i];
    let rows = o.div_ceil(DW_ROW_BLOCKS).max(1);
    let precision = cnn_tensor::precision();
    dw.par_chunks_mut(rows * i).enumerate().try_for_each(|(blk, part)| -> Result<()> {
        let r = part.len() / i;
        let dys = ndarray::ArrayView2::from_shape((r, cols), &gdy[blk * rows * cols..][..r * cols])
            .map_err(shape_err)?;
        let part = ndarray::ArrayViewMut2::from_shape((r, i), part).map_err(shape_err)?;
        cnn_tensor::with_precision(precision, || gemm(T::one(), dys, xt.t(), T::zero(), part))
    })?;
    Ok(dw)
}

impl<T: Float> PixelLinear<T> {
    /// The forward, with `finish` applied to each output row while its
    /// block is in cache (fused inference; see [`products`]). In eval mode
    /// the packed weight is kept for the next call (rebuilt when the
    /// weight's version or the product width changes).
    pub(crate) fn forward_with(
        &mut self,
        x: ArrayD<T>,
        mode: Mode,
        finish: Option<&RowFinish<'_, T>>,
    ) -> Result<ArrayD<T>> {
        let (o, i) = self.dims();
        let (n, p) = as_matrices("pixel_linear", &x, i)?;
        let x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
        let (h, w) = (x.shape()[2], x.shape()[3]);
        let xs =
            x.as_slice().ok_or_else(|| Error::shape("pixel_linear", "input is not contiguous"))?;
        // y starts as b[o] on every pixel and the product is added to it
        // (β = 1): one pass over y fewer than a zeroed y and a bias pass after.
        let bias = self
            .bias
            .value()
            .as_slice()
            .ok_or_else(|| Error::shape("pixel_linear", "bias is not contiguous"))?;
        // Written whole by `products` (the bias, then the product added).
        let mut y = simd::uninit_vec::<T>(n * o * p);
        let width = p * samples_per_product(p, n);
        let fresh;
        let packed = if mode == Mode::Eval {
            let key = (self.weight.version(), width, cnn_tensor::precision());
            if self.eval_packed.as_ref().is_none_or(|(k, _)| *k != key) {
                self.eval_packed = Some((key, PackedLhs::new(self.w2()?, width)));
            }
            &self.eval_packed.as_ref().expect("set above").1
        } else {
            self.eval_packed = None;
            fresh = PackedLhs::new(self.w2()?, width);
            &fresh
        };
        products(packed, xs, Some(bias), &mut y, p, finish)?;
        // SAFETY: `products` wrote every value of `y`.
        let y = unsafe { simd::assume_init(y) };
        let y = ArrayD::from_shape_vec(IxDyn(&[n, o, h, w]), y)
            .map_err(|e| Error::shape("pixel_linear", e.to_string()))?;
        self.x = (mode == Mode::Train).then_some(x);
        Ok(y)
    }
}

impl<T: Float> Layer<T> for PixelLinear<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        self.forward_with(x, mode, None)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let x = self.x.take().ok_or(Error::NoForward { op: "pixel_linear" })?;
        let (o, i) = self.dims();
        if dy.shape() != [x.shape()[0], o, x.shape()[2], x.shape()[3]] {
            return Err(Error::shape(
                "pixel_linear",
                format!(
                    "dy is {:?}, the output was [{}, {o}, {}, {}]",
                    dy.shape(),
                    x.shape()[0],
                    x.shape()[2],
                    x.shape()[3]
                ),
            ));
        }
        let dy = if dy.is_standard_layout() { dy } else { dy.as_standard_layout().into_owned() };
        let p = x.shape()[2] * x.shape()[3];
        let shape_err = |e: ndarray::ShapeError| Error::shape("pixel_linear", e.to_string());
        let dys =
            dy.as_slice().ok_or_else(|| Error::shape("pixel_linear", "dy is not contiguous"))?;
        // dx_n = Wᵀ · dy_n, samples in parallel.
        let mut dx = simd::uninit_vec::<T>(x.len());
        let wt = self.w2()?.t().as_standard_layout().into_owned();
        let n = x.shape()[0];
        products(
            &PackedLhs::new(wt.view(), p * samples_per_product(p, n)),
            dys,
            None,
            &mut dx,
            p,
            None,
        )?;
        // SAFETY: `products` wrote every value of `dx`.
        let dx = unsafe { simd::assume_init(dx) };
        if self.weight.trainable {
            let xs =
                x.as_slice().ok_or_else(|| Error::shape("pixel_linear", "x is not contiguous"))?;
            let dw = weight_grad(xs, dys, (o, i, p))?;
            let dw = ndarray::Array2::from_shape_vec((o, i), dw)
                .map_err(shape_err)?
                .into_dyn()
                .into_shape_with_order(self.weight.grad.raw_dim())
                .map_err(shape_err)?;
            self.weight.grad += &dw;
        }
        if self.bias.trainable {
            // db[o] = Σ_n Σ_p dy[n, o, p], each plane summed in lanes, samples in order.
            let db = self
                .bias
                .grad
                .as_slice_mut()
                .ok_or_else(|| Error::shape("pixel_linear", "bias grad is not contiguous"))?;
            for (r, plane) in dys.chunks_exact(p).enumerate() {
                db[r % o] += cnn_tensor::sum(plane);
            }
        }
        ArrayD::from_shape_vec(x.raw_dim(), dx).map_err(shape_err)
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&join_key(prefix, "weight"), &mut self.weight);
        f(&join_key(prefix, "bias"), &mut self.bias);
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        f(&join_key(prefix, "weight"), &self.weight);
        f(&join_key(prefix, "bias"), &self.bias);
    }
}

/// Settings of a [`ConvNeXtBlock`], with timm's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvNeXtBlockConfig {
    /// Channels `C`.
    pub dim: usize,
    /// The MLP as 1×1 convs (`true`, weights `[out, in, 1, 1]`) or
    /// channels-last Linears (`false`, `[out, in]`). Default false.
    pub conv_mlp: bool,
    /// Hidden width as a multiple of `C`. Default 4.
    pub mlp_ratio: usize,
    /// Initial layer scale γ (`None`: no layer scale). Default `Some(1e-6)`.
    pub ls_init_value: Option<f64>,
    /// Stochastic-depth probability of the branch. Default 0.
    pub drop_path: f64,
    /// Depthwise kernel size. Default 7.
    pub kernel_size: usize,
}

impl ConvNeXtBlockConfig {
    /// timm's defaults for `dim` channels.
    pub fn new(dim: usize) -> Self {
        ConvNeXtBlockConfig {
            dim,
            conv_mlp: false,
            mlp_ratio: 4,
            ls_init_value: Some(1e-6),
            drop_path: 0.0,
            kernel_size: 7,
        }
    }
    cnn_tensor::setters! {
        /// Sets [`ConvNeXtBlockConfig::conv_mlp`].
        with_conv_mlp: conv_mlp: bool;
        /// Sets [`ConvNeXtBlockConfig::ls_init_value`].
        with_ls_init_value: ls_init_value: Option<f64>;
        /// Sets [`ConvNeXtBlockConfig::drop_path`].
        with_drop_path: drop_path: f64;
    }
}

/// timm's `ConvNeXtBlock`: `x + drop_path(γ · fc2(gelu(fc1(norm(conv_dw(x))))))`,
/// with a depthwise 7×7 conv (bias), a per-pixel LayerNorm over channels
/// (eps 1e-6), an inverted-bottleneck MLP to 4C and back, and a learned
/// per-channel layer scale γ.
///
/// Keys, in timm's order: `gamma`, `conv_dw`, `norm`, `mlp.fc1`, `mlp.fc2`.
///
/// # Shapes
/// `x: [N, C, H, W]` → the same shape.
pub struct ConvNeXtBlock<T: Float = f32> {
    pub(crate) gamma: Option<Param<T>>,
    pub(crate) conv_dw: Conv2d<T>,
    pub(crate) norm: LayerNorm2d<T>,
    pub(crate) fc1: PixelLinear<T>,
    pub(crate) act: Act<T>,
    pub(crate) fc2: PixelLinear<T>,
    drop_path: DropPath,
    /// The branch before γ, kept in training for dγ.
    branch: Option<ArrayD<T>>,
}

impl<T: Float> ConvNeXtBlock<T> {
    /// A block with timm's init: convs and linears truncated-normal (std
    /// 0.02, bounds ±2), biases zero, γ = `ls_init_value`.
    ///
    /// # Errors
    /// [`Error::Config`] for zero channels or ratio, or a drop-path probability outside [0, 1).
    pub fn new<R: rand::Rng + ?Sized>(
        cfg: ConvNeXtBlockConfig,
        seed: u64,
        rng: &mut R,
    ) -> Result<Self> {
        let (c, k) = (cfg.dim, cfg.kernel_size);
        if c == 0 || cfg.mlp_ratio == 0 || k % 2 == 0 {
            return Err(Error::config(
                "convnext_block",
                format!("dim and mlp_ratio must be positive and the kernel odd, got {cfg:?}"),
            ));
        }
        let hidden = cfg.mlp_ratio * c;
        let mut conv_dw =
            Conv2d::new(Conv2dConfig::new(c, c, k).with_padding(k / 2).with_groups(c), rng)?;
        conv_dw.weight.set_value(trunc02(&[c, 1, k, k], rng)?);
        if let Some(b) = conv_dw.bias.as_mut() {
            b.value_mut().fill(T::zero());
        }
        let shape = |o: usize, i: usize| if cfg.conv_mlp { vec![o, i, 1, 1] } else { vec![o, i] };
        Ok(ConvNeXtBlock {
            gamma: cfg.ls_init_value.map(|v| Param::new(ArrayD::from_elem(IxDyn(&[c]), T::of(v)))),
            conv_dw,
            norm: LayerNorm2d::new(LayerNorm2dConfig::new(c))?,
            fc1: PixelLinear::new(trunc02(&shape(hidden, c), rng)?)?,
            act: Act::gelu(),
            fc2: PixelLinear::new(trunc02(&shape(c, hidden), rng)?)?,
            drop_path: DropPath::new(cfg.drop_path, seed)?,
            branch: None,
        })
    }
}

/// timm's weight init for ConvNeXt: N(0, 0.02²) truncated to ±2.
pub fn trunc02<T: Float, R: rand::Rng + ?Sized>(shape: &[usize], rng: &mut R) -> Result<ArrayD<T>> {
    cnn_init::trunc_normal(shape, 0.0, 0.02, (-2.0, 2.0), rng)
}

/// `x[n, c, …] · g[c]`, plane by plane on the contiguous data (the
/// ndarray walk over dynamic-rank views was most of its time).
fn scale_channels<T: Float>(x: &mut ArrayD<T>, g: &ArrayD<T>) {
    let c = g.len();
    let plane = x.len() / (x.shape()[0] * c).max(1);
    let mut contiguous = x.as_standard_layout().into_owned();
    let data = contiguous.as_slice_mut().expect("standard layout is contiguous");
    for (r, values) in data.chunks_exact_mut(plane.max(1)).enumerate() {
        let s = g[r % c];
        values.iter_mut().for_each(|v| *v *= s);
    }
    *x = contiguous;
}

impl<T: Float> ConvNeXtBlock<T> {
    /// Eval mode, fused: the depthwise conv reads `x` where it is (no copy
    /// kept for the residual), the activation runs on each block of fc1's
    /// output and γ and the residual sum on fc2's while they are in cache,
    /// instead of a pass (and a new tensor) each. The same operations on the
    /// same values as the layers one by one: the same bits.
    fn forward_fused(&mut self, x: ArrayD<T>) -> Result<ArrayD<T>> {
        let x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
        let x4 = crate::fusion::to4("convnext_block", x)?;
        self.branch = None;
        self.act.clear_cache();
        let h = self.conv_dw.forward_fused(x4.view(), None, Epilogue::None)?;
        let h = self.norm.forward(h.into_dyn(), Mode::Eval)?;
        let act = self.act.activation;
        // Checked here, once: on the rows below it cannot fail.
        activation_in_place::<T>(act, &mut [])?;
        let activate = |_: usize, _: usize, row: &mut [T]| {
            let _ = activation_in_place(act, row);
        };
        let h = self.fc1.forward_with(h, Mode::Eval, Some(&activate))?;
        let xs = x4.as_slice().expect("standard layout");
        let (c, p) = (x4.shape()[1], x4.shape()[2] * x4.shape()[3]);
        let gamma = self.gamma.as_ref().map(|g| g.value().iter().copied().collect::<Vec<T>>());
        // `γ·h + x`, as `scale_channels` then the sum of the unfused path.
        let scale_add = |n: usize, r: usize, row: &mut [T]| {
            let residual = &xs[(n * c + r) * p..][..p];
            match &gamma {
                Some(g) => row.iter_mut().zip(residual).for_each(|(v, &x)| *v = *v * g[r] + x),
                None => row.iter_mut().zip(residual).for_each(|(v, &x)| *v += x),
            }
        };
        let y = self.fc2.forward_with(h, Mode::Eval, Some(&scale_add))?;
        crate::fusion::record_mlp();
        Ok(y)
    }
}

impl<T: Float> Layer<T> for ConvNeXtBlock<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if mode == Mode::Eval && crate::fusion::fusion_enabled() {
            return self.forward_fused(x);
        }
        let h = self.conv_dw.forward(x.clone(), mode)?;
        let h = self.norm.forward(h, mode)?;
        let h = self.fc1.forward(h, mode)?;
        let h = self.act.forward(h, mode)?;
        let mut h = self.fc2.forward(h, mode)?;
        if let Some(g) = &self.gamma {
            self.branch = (mode == Mode::Train).then(|| h.clone());
            scale_channels(&mut h, g.value());
        }
        let h = self.drop_path.forward(h, mode)?;
        Ok(h + x)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let mut d = self.drop_path.backward(dy.clone())?;
        if let Some(g) = &mut self.gamma {
            let branch = self.branch.take().ok_or(Error::NoForward { op: "convnext_block" })?;
            if g.trainable {
                // dγ[c] += Σ over samples and pixels of d · branch, samples in order.
                let grad = g.grad.as_slice_mut().ok_or_else(|| {
                    Error::shape("convnext_block", "gamma's grad is not contiguous")
                })?;
                let c = grad.len();
                let (d, branch) = (d.as_standard_layout(), branch.as_standard_layout());
                let (ds, bs) = (d.as_slice().unwrap_or(&[]), branch.as_slice().unwrap_or(&[]));
                let plane = ds.len() / (d.shape()[0] * c).max(1);
                for (r, (dc, bc)) in
                    ds.chunks_exact(plane.max(1)).zip(bs.chunks_exact(plane.max(1))).enumerate()
                {
                    grad[r % c] += dc.iter().zip(bc).fold(T::zero(), |acc, (&a, &b)| acc + a * b);
                }
            }
            scale_channels(&mut d, g.value());
        }
        let d = self.fc2.backward(d)?;
        let d = self.act.backward(d)?;
        let d = self.fc1.backward(d)?;
        let d = self.norm.backward(d)?;
        let d = self.conv_dw.backward(d)?;
        Ok(d + dy)
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        if let Some(g) = self.gamma.as_mut() {
            f(&join_key(prefix, "gamma"), g);
        }
        self.conv_dw.visit_mut(&join_key(prefix, "conv_dw"), f);
        self.norm.visit_mut(&join_key(prefix, "norm"), f);
        self.fc1.visit_mut(&join_key(prefix, "mlp.fc1"), f);
        self.fc2.visit_mut(&join_key(prefix, "mlp.fc2"), f);
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        if let Some(g) = self.gamma.as_ref() {
            f(&join_key(prefix, "gamma"), g);
        }
        self.conv_dw.visit(&join_key(prefix, "conv_dw"), f);
        self.norm.visit(&join_key(prefix, "norm"), f);
        self.fc1.visit(&join_key(prefix, "mlp.fc1"), f);
        self.fc2.visit(&join_key(prefix, "mlp.fc2"), f);
    }

    fn children(&self) -> Vec<(String, &dyn Layer<T>)> {
        vec![
            ("conv_dw".into(), &self.conv_dw),
            ("norm".into(), &self.norm),
            ("mlp.fc1".into(), &self.fc1),
            ("mlp.act".into(), &self.act),
            ("mlp.fc2".into(), &self.fc2),
            ("drop_path".into(), &self.drop_path),
        ]
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<T>)> {
        vec![
            ("conv_dw".into(), &mut self.conv_dw),
            ("norm".into(), &mut self.norm),
            ("mlp.fc1".into(), &mut self.fc1),
            ("mlp.act".into(), &mut self.act),
            ("mlp.fc2".into(), &mut self.fc2),
            ("drop_path".into(), &mut self.drop_path),
        ]
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}
