//! conv2d forward and backward by im2col + GEMM, parallel over blocks of samples.
//!
//! Buffers, for a block of `s` samples and one group `g` (`G` groups):
//! ```text
//! col   [Cg·kh·kw, s·Ho·Wo]   im2col of the block          Cg  = C_in / G
//! W_g   [Cog, Cg·kh·kw]       rows of the weight            Cog = C_out / G
//! out   [Cog, s·Ho·Wo]        W_g · col, then scattered to y[n, g·Cog.., :, :]
//! dW_g  += dy_g · colᵀ        dy_g gathered like out
//! dcol   = W_gᵀ · dy_g        then col2im onto dx
//! ```
//! Blocks depend on the shapes only, never on the thread count, and partial
//! weight gradients are summed in block order: the same numbers on any number
//! of threads.

use cnn_tensor::{gemm, Error, Float, Result};
use ndarray::{
    Array1, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, Axis, ShapeBuilder,
};
use rayon::prelude::*;

use crate::im2col::{col2im, im2col};
use crate::{Conv2dOptions, ConvGeometry};

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

/// Columns a GEMM should see at least: small feature maps are batched so
/// that matrixmultiply's packing pays off (measured: see docs/benchmarks.md).
const TARGET_COLS: usize = 256;
/// At most this many blocks: bounds the memory of partial weight gradients.
const MAX_BLOCKS: usize = 16;

/// Samples per block: enough for `TARGET_COLS` columns, and at most `MAX_BLOCKS` blocks.
fn block_len(g: &ConvGeometry) -> usize {
    let for_width = TARGET_COLS.div_ceil(g.out_area()).max(1);
    let for_count = g.n.div_ceil(MAX_BLOCKS);
    for_width.max(for_count).min(g.n)
}

/// A row-major matrix view over a slice.
fn mat<T>(data: &[T], rows: usize, cols: usize, ld: usize) -> ArrayView2<'_, T> {
    // Invariant of every caller: the slice covers `rows` rows of stride `ld`.
    ArrayView2::from_shape((rows, cols).strides((ld, 1)), data)
        .expect("matrix view within its buffer")
}

fn mat_mut<T>(data: &mut [T], rows: usize, cols: usize, ld: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols).strides((ld, 1)), data)
        .expect("matrix view within its buffer")
}

fn check_bias<T>(g: &ConvGeometry, bias: Option<&ArrayView1<'_, T>>) -> Result<()> {
    match bias {
        Some(b) if b.len() != g.c_out => Err(Error::shape(
            "conv2d",
            format!("bias has {} entries, weight has {} output channels", b.len(), g.c_out),
        )),
        _ => Ok(()),
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
/// # Errors
/// [`Error::Shape`] / [`Error::Config`] as [`ConvGeometry::new`], or a bias
/// that is not `[C_out]`.
pub fn conv2d_forward<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    b: Option<ArrayView1<'_, T>>,
    opts: &Conv2dOptions,
) -> Result<Array4<T>> {
    let g = ConvGeometry::new(x.shape(), w.shape(), opts)?;
    check_bias(&g, b.as_ref())?;
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let (xs, ws) = (slice(&x), slice(&w));
    let mut y = Array4::<T>::zeros(g.out_shape());
    let per_sample_in = g.c_in * g.h * g.w;
    let per_sample_out = g.c_out * g.out_area();
    let s_max = block_len(&g);
    let bias: Option<Vec<T>> = b.map(|b| b.to_vec());
    let y_slice = y.as_slice_mut().expect("a new array is contiguous");

    y_slice.par_chunks_mut(s_max * per_sample_out).enumerate().for_each_init(
        || Scratch::new(&g, s_max),
        |scratch, (blk, y_blk)| {
            let n0 = blk * s_max;
            let s = y_blk.len() / per_sample_out;
            let x_blk = &xs[n0 * per_sample_in..(n0 + s) * per_sample_in];
            forward_block(&g, x_blk, ws, bias.as_deref(), y_blk, s, scratch);
        },
    );
    Ok(y)
}

/// Reusable buffers of one worker.
struct Scratch<T> {
    col: Vec<T>,
    out: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new(g: &ConvGeometry, s_max: usize) -> Self {
        let cols = s_max * g.out_area();
        Scratch {
            col: vec![T::zero(); g.col_rows() * cols],
            out: vec![T::zero(); g.c_out_g() * cols],
        }
    }
}

fn slice<'a, T>(a: &'a ndarray::CowArray<'_, T, ndarray::Ix4>) -> &'a [T] {
    a.as_slice().expect("standard layout is contiguous")
}

fn forward_block<T: Float>(
    g: &ConvGeometry,
    x_blk: &[T],
    ws: &[T],
    bias: Option<&[T]>,
    y_blk: &mut [T],
    s: usize,
    scratch: &mut Scratch<T>,
) {
    let (area, rows, cog, cg) = (g.out_area(), g.col_rows(), g.c_out_g(), g.c_in_g());
    let cols = s * area;
    let per_in = g.c_in * g.h * g.w;
    let per_out = g.c_out * area;
    for grp in 0..g.opts.groups {
        let w_g = mat(&ws[grp * cog * rows..], cog, rows, rows);
        let direct = s == 1;
        // One sample: the GEMM writes straight into y; several: into `out`, then scattered.
        let (col_view, beta) = if g.is_pointwise() && direct {
            (mat(&x_blk[grp * cg * area..], cg, area, area), T::zero())
        } else {
            for si in 0..s {
                let col = &mut scratch.col[si * area..];
                im2col(g, &x_blk[si * per_in..(si + 1) * per_in], grp * cg, col, cols);
            }
            (mat(&scratch.col, rows, cols, cols), T::zero())
        };
        let out = if direct {
            mat_mut(&mut y_blk[grp * cog * area..], cog, area, area)
        } else {
            mat_mut(&mut scratch.out, cog, cols, cols)
        };
        gemm(T::one(), w_g, col_view, beta, out).expect("block shapes agree by construction");
        for si in 0..s {
            let y_n = &mut y_blk[si * per_out..(si + 1) * per_out];
            for o in 0..cog {
                let dst = &mut y_n[(grp * cog + o) * area..(grp * cog + o + 1) * area];
                if !direct {
                    dst.copy_from_slice(
                        &scratch.out[o * cols + si * area..o * cols + (si + 1) * area],
                    );
                }
                if let Some(b) = bias {
                    let bo = b[grp * cog + o];
                    dst.iter_mut().for_each(|v| *v += bo);
                }
            }
        }
    }
}

/// Gradients of [`conv2d_forward`] for upstream `dy`: dL/dx, dL/dW and dL/db.
///
/// `dx = col2im(Wᵀ · dy)`, `dW = Σₙ dyₙ · im2col(xₙ)ᵀ`, `db[o] = Σ_{n,p,q} dy[n, o, p, q]`.
///
/// # Shapes
/// `x: [N, C_in, H, W]`, `w: [C_out, C_in/groups, kh, kw]`, `dy: [N, C_out, Ho, Wo]`.
///
/// # Errors
/// As [`conv2d_forward`], and [`Error::Shape`] when `dy` is not the output's shape.
pub fn conv2d_backward<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    dy: ArrayView4<'_, T>,
    opts: &Conv2dOptions,
) -> Result<Conv2dGrads<T>> {
    let g = ConvGeometry::new(x.shape(), w.shape(), opts)?;
    if dy.shape() != g.out_shape() {
        return Err(Error::shape(
            "conv2d",
            format!("dy is {:?}, expected the output shape {:?}", dy.shape(), g.out_shape()),
        ));
    }
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let dy = dy.as_standard_layout();
    let (xs, ws, dys) = (slice(&x), slice(&w), slice(&dy));
    let per_in = g.c_in * g.h * g.w;
    let per_out = g.c_out * g.out_area();
    let s_max = block_len(&g);
    let mut dx = Array4::<T>::zeros((g.n, g.c_in, g.h, g.w));
    let dx_slice = dx.as_slice_mut().expect("a new array is contiguous");

    let partials: Vec<Vec<T>> = dx_slice
        .par_chunks_mut(s_max * per_in)
        .enumerate()
        .map_init(
            || BackScratch::new(&g, s_max),
            |scratch, (blk, dx_blk)| {
                let n0 = blk * s_max;
                let s = dx_blk.len() / per_in;
                let x_blk = &xs[n0 * per_in..(n0 + s) * per_in];
                let dy_blk = &dys[n0 * per_out..(n0 + s) * per_out];
                backward_block(&g, x_blk, ws, dy_blk, dx_blk, s, scratch)
            },
        )
        .collect();

    // Fixed order: block 0 + block 1 + … whatever thread made each.
    let mut dw_flat = vec![T::zero(); ws.len()];
    for part in &partials {
        dw_flat.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
    }
    let dw = Array4::from_shape_vec(w.raw_dim(), dw_flat).expect("same length as the weight");
    let db = dy.sum_axis(Axis(3)).sum_axis(Axis(2)).sum_axis(Axis(0));
    Ok(Conv2dGrads { dx, dw, db })
}

struct BackScratch<T> {
    col: Vec<T>,
    dy_g: Vec<T>,
}

impl<T: Float> BackScratch<T> {
    fn new(g: &ConvGeometry, s_max: usize) -> Self {
        let cols = s_max * g.out_area();
        BackScratch {
            col: vec![T::zero(); g.col_rows() * cols],
            dy_g: vec![T::zero(); g.c_out_g() * cols],
        }
    }
}

/// One block's dx (written into `dx_blk`) and its partial dW (returned).
fn backward_block<T: Float>(
    g: &ConvGeometry,
    x_blk: &[T],
    ws: &[T],
    dy_blk: &[T],
    dx_blk: &mut [T],
    s: usize,
    scratch: &mut BackScratch<T>,
) -> Vec<T> {
    let (area, rows, cog, cg) = (g.out_area(), g.col_rows(), g.c_out_g(), g.c_in_g());
    let cols = s * area;
    let per_in = g.c_in * g.h * g.w;
    let per_out = g.c_out * area;
    let hw = g.h * g.w;
    let mut dw = vec![T::zero(); ws.len()];
    for grp in 0..g.opts.groups {
        let w_g = mat(&ws[grp * cog * rows..], cog, rows, rows);
        // dy of this group for the block, as one [Cog, s·area] matrix.
        let dy_g = if s == 1 {
            mat(&dy_blk[grp * cog * area..], cog, area, area)
        } else {
            for si in 0..s {
                for o in 0..cog {
                    let src = &dy_blk[si * per_out + (grp * cog + o) * area..][..area];
                    scratch.dy_g[o * cols + si * area..][..area].copy_from_slice(src);
                }
            }
            mat(&scratch.dy_g, cog, cols, cols)
        };
        let pointwise_direct = g.is_pointwise() && s == 1;
        {
            let col = if pointwise_direct {
                mat(&x_blk[grp * cg * hw..], cg, hw, hw)
            } else {
                for si in 0..s {
                    im2col(
                        g,
                        &x_blk[si * per_in..(si + 1) * per_in],
                        grp * cg,
                        &mut scratch.col[si * area..],
                        cols,
                    );
                }
                mat(&scratch.col, rows, cols, cols)
            };
            let dw_g = mat_mut(&mut dw[grp * cog * rows..], cog, rows, rows);
            gemm(T::one(), dy_g, col.t(), T::one(), dw_g)
                .expect("block shapes agree by construction");
        }
        if pointwise_direct {
            let dx_g = mat_mut(&mut dx_blk[grp * cg * hw..], cg, hw, hw);
            gemm(T::one(), w_g.t(), dy_g, T::zero(), dx_g)
                .expect("block shapes agree by construction");
        } else {
            let dcol = mat_mut(&mut scratch.col, rows, cols, cols);
            gemm(T::one(), w_g.t(), dy_g, T::zero(), dcol)
                .expect("block shapes agree by construction");
            for si in 0..s {
                col2im(
                    g,
                    &scratch.col[si * area..],
                    cols,
                    grp * cg,
                    &mut dx_blk[si * per_in..(si + 1) * per_in],
                );
            }
        }
    }
    dw
}
