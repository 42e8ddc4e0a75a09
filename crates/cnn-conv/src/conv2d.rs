//! conv2d's public entry points and the choice of algorithm: each call is
//! routed to the direct depthwise kernel (`depthwise.rs`), Winograd
//! (`winograd/`, 3×3 stride-1) or im2col + GEMM (`im2col_gemm.rs`) by
//! [`Conv2dOptions::algorithm`], the scope of [`with_conv_algorithm`],
//! `CNN_CONV_ALGORITHM` and the shape rule, in that order. The kernels know
//! nothing of the choice, nor of the weight cache: this module hands each its
//! prepared weights.

use cnn_tensor::{switches, with_precision, Error, Float, Precision, Result};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};
use std::cell::Cell;
use std::sync::OnceLock;

use crate::epilogue::{bias_grad, Epilogue, Finish};
use crate::im2col_gemm::{self, Pass, Plan};
use crate::matrix::contiguous;
use crate::weight_cache::Prepared;
use crate::winograd::{self, Tile};
use crate::{Conv2dOptions, ConvAlgorithm, ConvGeometry};

/// Gradients of a convolution: [`conv2d_backward`] and its naive twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dGrads<T> {
    /// dL/dx, `[n, c_in, h, w]`.
    pub dx: Array4<T>,
    /// dL/dW, `[c_out, c_in/groups, kh, kw]`.
    pub dw: Array4<T>,
    /// dL/db, `[c_out]` (the sum of `dy` over n, h, w; use it only if there is a bias).
    pub db: Array1<T>,
}

/// The kernel that computes one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The direct depthwise kernel (`groups == C_in == C_out`).
    Depthwise,
    /// Winograd with this tile.
    Winograd(Tile),
    /// im2col + GEMM: everything else.
    Im2col,
}

thread_local! {
    /// The algorithm [`with_conv_algorithm`] set for this thread, if any.
    static SCOPED: Cell<Option<ConvAlgorithm>> = const { Cell::new(None) };
}

/// The algorithm `CNN_CONV_ALGORITHM` asks for (read once; [`switches::CONV_ALGORITHM`]).
fn env_algorithm() -> Option<ConvAlgorithm> {
    static ALGO: OnceLock<Option<ConvAlgorithm>> = OnceLock::new();
    switches::CONV_ALGORITHM.cached(&ALGO, ConvAlgorithm::parse)
}

/// Runs `f` with every convolution of this thread whose options say
/// [`ConvAlgorithm::Auto`] computed by `algorithm` where it applies (im2col
/// where it does not), ahead of `CNN_CONV_ALGORITHM`; restored afterwards,
/// also on a panic. Like `torch.backends.cudnn.flags(...)`: for a
/// reproducibility check or a comparison, without rebuilding the model.
///
/// ```
/// use cnn_conv::{conv2d_forward, with_conv_algorithm, Conv2dOptions, ConvAlgorithm};
/// use ndarray::Array4;
///
/// let (x, w) = (Array4::<f32>::ones((1, 32, 8, 8)), Array4::<f32>::ones((32, 32, 3, 3)));
/// let opts = Conv2dOptions::default().with_padding(1);
/// let y = with_conv_algorithm(ConvAlgorithm::Im2col, || conv2d_forward(x.view(), w.view(), None, &opts))?;
/// assert_eq!(y[[0, 0, 4, 4]], 288.0);
/// # Ok::<(), cnn_tensor::Error>(())
/// ```
pub fn with_conv_algorithm<R>(algorithm: ConvAlgorithm, f: impl FnOnce() -> R) -> R {
    switches::scoped(&SCOPED, algorithm, f)
}

/// The shape rule of [`ConvAlgorithm::Auto`] (measured; docs/conv.md): F(4×4)
/// when both channel counts are at least 32, the map is at least 6×6 and the
/// batch has 32 tiles — below that the transforms (or the padded products)
/// cost more than the multiplies they save.
fn auto_rule(g: &ConvGeometry) -> Option<Tile> {
    let (cg, cog) = (g.c_in_g(), g.c_out_g());
    // The α² products are [C_out × C_in]·[C_in × tiles]: with fewer than 32
    // tiles in the whole batch (a 7×7 map at batch 1 has 4) the micro-kernel
    // pads each product to 32 columns and im2col does less work.
    let tiles = g.n * g.ho.div_ceil(4) * g.wo.div_ceil(4);
    (cg >= 32 && cog >= 32 && g.ho >= 6 && g.wo >= 6 && tiles >= 32).then_some(Tile::F4)
}

/// Which kernel computes `g`: depthwise when it applies; else the option,
/// then (for `Auto`) [`with_conv_algorithm`], `CNN_CONV_ALGORITHM`, the shape rule.
///
/// # Errors
/// [`Error::Config`] when the options force Winograd on a convolution it cannot compute.
pub(crate) fn route(g: &ConvGeometry) -> Result<Route> {
    if crate::depthwise::applies(g) {
        return Ok(Route::Depthwise);
    }
    let applies = winograd::applies(g);
    let forced = |tile: Tile| {
        if applies {
            Ok(Route::Winograd(tile))
        } else {
            Err(Error::config(
                "conv2d",
                format!(
                    "algorithm {:?} needs a 3x3 kernel with stride 1 and dilation 1, got {}x{} \
                     with stride {:?} and dilation {:?}",
                    g.opts.algorithm, g.kh, g.kw, g.opts.stride, g.opts.dilation
                ),
            ))
        }
    };
    let winograd_or_im2col = |tile: Option<Tile>| match tile {
        Some(tile) if applies => Route::Winograd(tile),
        _ => Route::Im2col,
    };
    match g.opts.algorithm {
        ConvAlgorithm::Im2col => Ok(Route::Im2col),
        ConvAlgorithm::Winograd | ConvAlgorithm::Winograd4 => forced(Tile::F4),
        ConvAlgorithm::Winograd2 => forced(Tile::F2),
        ConvAlgorithm::Auto => {
            let asked = SCOPED.with(Cell::get).or_else(env_algorithm).unwrap_or_default();
            Ok(winograd_or_im2col(match asked {
                ConvAlgorithm::Im2col => None,
                ConvAlgorithm::Winograd | ConvAlgorithm::Winograd4 => Some(Tile::F4),
                ConvAlgorithm::Winograd2 => Some(Tile::F2),
                // The same rule under a bf16 scope: where it takes Winograd,
                // F(4×4) in f32 (2.25 multiplies per output and input channel)
                // outruns im2col in bf16 (9 at twice f32's rate) and keeps
                // f32's error (docs/conv.md).
                ConvAlgorithm::Auto if applies => auto_rule(g),
                ConvAlgorithm::Auto => None,
            }))
        }
    }
}

/// 2-D convolution (cross-correlation, as `F.conv2d`).
///
/// `y[n, o, p, q] = b[o] + Σ_{c, i, j} w[o, c, i, j] · x[n, g·Cg + c, p·sh − ph + i·dh, q·sw − pw + j·dw]`
/// where `g = o / (C_out / groups)` and taps in the padding read zero.
///
/// # Shapes
/// `x: [N, C_in, H, W]`, `w: [C_out, C_in/groups, kh, kw]`, `b: [C_out]` →
/// `[N, C_out, Ho, Wo]` with `Ho = ⌊(H + 2ph − dh(kh − 1) − 1)/sh⌋ + 1` (likewise `Wo`).
///
/// Computed by im2col + GEMM, the direct depthwise kernel, or Winograd for
/// 3×3 stride-1 convs, as [`crate::ConvAlgorithm`] and its shape rule say
/// (docs/conv.md); the results agree within rounding.
///
/// # Errors
/// [`cnn_tensor::Error::Shape`] / [`cnn_tensor::Error::Config`] as [`ConvGeometry::new`], a bias
/// that is not `[C_out]`, or an algorithm forced on a convolution it cannot compute.
pub fn conv2d_forward<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    b: Option<ArrayView1<'_, T>>,
    opts: &Conv2dOptions,
) -> Result<Array4<T>> {
    conv2d_forward_cached(x, w, b, opts, None, Epilogue::None)
}

/// [`conv2d_forward`] followed by `epilogue`, applied tile by tile in the
/// kernel (equal to a separate ReLU, bit for bit).
///
/// # Errors
/// As [`conv2d_forward`].
pub fn conv2d_forward_with<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    b: Option<ArrayView1<'_, T>>,
    opts: &Conv2dOptions,
    epilogue: Epilogue,
) -> Result<Array4<T>> {
    conv2d_forward_cached(x, w, b, opts, None, epilogue)
}

/// [`conv2d_forward_with`], keeping the weights prepared for the kernel (the
/// Winograd transform, or the packed `W_g`) in `cache` between calls (a layer
/// in eval mode: the weights rarely change there), for `w` at the version given.
pub(crate) fn conv2d_forward_cached<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    b: Option<ArrayView1<'_, T>>,
    opts: &Conv2dOptions,
    cache: Option<Prepared<'_, T>>,
    epilogue: Epilogue,
) -> Result<Array4<T>> {
    let g = ConvGeometry::new(x.shape(), w.shape(), opts)?;
    g.check_bias(b.as_ref().map(|b| b.len()))?;
    let b = b.map(|b| b.to_vec());
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let (xs, ws) = (contiguous(&x), contiguous(&w));
    let mut y = Array4::<T>::zeros(g.out_shape());
    let y_slice = y.as_slice_mut().expect("a new array is contiguous");
    match route(&g)? {
        Route::Depthwise => crate::depthwise::forward(&g, xs, ws, b.as_deref(), y_slice, epilogue),
        // Winograd computes in f32 whatever the scope, its products and the
        // cached U: in bf16 its transforms magnify the rounding past the
        // bound of bf16 products (docs/conv.md).
        Route::Winograd(tile) => with_precision(Precision::F32, || {
            let cols = winograd::gemm_cols::<T>(tile, &g);
            let build = || winograd::transform_weights(tile, &g, ws, cols);
            let fresh;
            let u = match cache {
                Some((c, version)) => {
                    c.winograd((tile.m(), g.opts.groups, cols), (version, ws), build)
                }
                None => {
                    fresh = build();
                    &fresh
                }
            };
            winograd::forward(tile, &g, xs, u, b.as_deref(), y_slice, epilogue);
        }),
        Route::Im2col => {
            let plan = Plan::new::<T>(&g, Pass::Forward);
            let build = || im2col_gemm::pack_weights(&g, &plan, ws, false);
            let fresh;
            let packed = match cache {
                Some((c, version)) => {
                    let key = (g.opts.groups, plan.max_cols(&g), cnn_tensor::precision());
                    c.im2col(key, (version, ws), build)
                }
                None => {
                    fresh = build();
                    &fresh
                }
            };
            let finish = Finish { bias: b.as_deref(), epilogue };
            im2col_gemm::forward(&g, &plan, xs, packed, finish, y_slice);
        }
    }
    Ok(y)
}

/// Gradients of [`conv2d_forward`] for upstream `dy`: dL/dx, dL/dW and dL/db.
///
/// `dx = col2im(Wᵀ · dy)`, `dW = Σₙ dyₙ · im2col(xₙ)ᵀ`, `db[o] = Σ_{n,p,q} dy[n, o, p, q]`.
///
/// # Shapes
/// `x: [N, C_in, H, W]`, `w: [C_out, C_in/groups, kh, kw]`, `dy: [N, C_out, Ho, Wo]`.
///
/// # Errors
/// As [`conv2d_forward`], and [`cnn_tensor::Error::Shape`] when `dy` is not the output's shape.
pub fn conv2d_backward<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    dy: ArrayView4<'_, T>,
    opts: &Conv2dOptions,
) -> Result<Conv2dGrads<T>> {
    let g = ConvGeometry::new(x.shape(), w.shape(), opts)?;
    g.check_dy(dy.shape())?;
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let dy = dy.as_standard_layout();
    let (xs, ws, dys) = (contiguous(&x), contiguous(&w), contiguous(&dy));
    let route = route(&g)?;
    if route == Route::Depthwise {
        let (dx, dw, db) = crate::depthwise::backward(&g, xs, ws, dys);
        return Ok(Conv2dGrads {
            dx: Array4::from_shape_vec((g.n, g.c_in, g.h, g.w), dx).expect("the input's length"),
            dw: Array4::from_shape_vec(w.raw_dim(), dw).expect("the weight's length"),
            db: Array1::from_vec(db),
        });
    }
    let mut dx = Array4::<T>::zeros((g.n, g.c_in, g.h, g.w));
    let dx_slice = dx.as_slice_mut().expect("a new array is contiguous");
    let mut dw_flat = vec![T::zero(); ws.len()];
    match (route, g.dx_as_forward()) {
        // dx and dW by Winograd when it applies: then no im2col block is needed.
        (Route::Winograd(tile), Some(gt)) => with_precision(Precision::F32, || {
            winograd::backward_dx(tile, &g, &gt, ws, dys, dx_slice);
            winograd::backward_dw(tile, &g, xs, dys, &mut dw_flat);
        }),
        _ => im2col_gemm::backward(&g, xs, ws, dys, dx_slice, &mut dw_flat),
    }
    let dw = Array4::from_shape_vec(w.raw_dim(), dw_flat).expect("same length as the weight");
    Ok(Conv2dGrads { dx, dw, db: bias_grad(&g, dys) })
}
