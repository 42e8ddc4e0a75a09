//! Max, average and global-average pooling: forward and backward.
//!
//! Every plane `(n, c)` is pooled on its own, so planes run in parallel and
//! the result does not depend on the thread count.

use cnn_tensor::{Error, Float, Result};
use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

/// Kernel, stride and padding of a pooling window, `[h, w]` (`F.max_pool2d` /
/// `F.avg_pool2d` arguments). [`Pool2dOptions::new`] gives PyTorch's defaults:
/// stride = kernel, no padding, floor mode, padding counted in averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dOptions {
    /// Window size `[h, w]`.
    pub kernel_size: [usize; 2],
    /// Step between windows `[h, w]`.
    pub stride: [usize; 2],
    /// Implicit padding on each side `[h, w]`: −∞ for max, zeros for average.
    pub padding: [usize; 2],
    /// Round the output size up instead of down (`ceil_mode`).
    pub ceil_mode: bool,
    /// Average pooling only: divide by the whole window, padding included
    /// (`count_include_pad`, PyTorch's default `true`).
    pub count_include_pad: bool,
}

impl Pool2dOptions {
    /// A square `k×k` window with stride `k`.
    pub fn new(k: usize) -> Self {
        Pool2dOptions {
            kernel_size: [k, k],
            stride: [k, k],
            padding: [0, 0],
            ceil_mode: false,
            count_include_pad: true,
        }
    }
    /// The same stride on both axes.
    pub fn with_stride(self, s: usize) -> Self {
        Pool2dOptions { stride: [s, s], ..self }
    }
    /// The same padding on both axes.
    pub fn with_padding(self, p: usize) -> Self {
        Pool2dOptions { padding: [p, p], ..self }
    }
    cnn_tensor::setters! {
        /// Ceil instead of floor for the output size.
        with_ceil_mode: ceil_mode: bool;
        /// Whether average pooling counts the padding.
        with_count_include_pad: count_include_pad: bool;
    }
}

/// Output length of a pooling axis, as PyTorch's `pooling_output_shape`; `None`
/// when the window does not fit in the padded input.
pub fn pool_out_len(len: usize, k: usize, s: usize, pad: usize, ceil_mode: bool) -> Option<usize> {
    let padded = len + 2 * pad;
    if padded < k {
        return None;
    }
    let extra = if ceil_mode { s - 1 } else { 0 };
    let mut out = (padded - k + extra) / s + 1;
    // The last window must start inside the input or the left padding.
    if ceil_mode && (out - 1) * s >= len + pad {
        out -= 1;
    }
    Some(out)
}

/// Checked sizes of one pooling call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolGeometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    o: Pool2dOptions,
}

impl PoolGeometry {
    fn new(op: &'static str, x: &[usize], o: &Pool2dOptions) -> Result<Self> {
        if x.len() != 4 {
            return Err(Error::shape(
                op,
                format!("input must be 4-D [N, C, H, W], got {}-D {x:?}", x.len()),
            ));
        }
        if x.contains(&0) {
            return Err(Error::shape(op, format!("input {x:?} has a zero-size dimension")));
        }
        if o.kernel_size.contains(&0) || o.stride.contains(&0) {
            return Err(Error::config(
                op,
                format!("kernel {:?} and stride {:?} must be positive", o.kernel_size, o.stride),
            ));
        }
        if o.padding[0] > o.kernel_size[0] / 2 || o.padding[1] > o.kernel_size[1] / 2 {
            return Err(Error::config(
                op,
                format!(
                    "padding {:?} must be at most half the kernel {:?}",
                    o.padding, o.kernel_size
                ),
            ));
        }
        let ho = pool_out_len(x[2], o.kernel_size[0], o.stride[0], o.padding[0], o.ceil_mode);
        let wo = pool_out_len(x[3], o.kernel_size[1], o.stride[1], o.padding[1], o.ceil_mode);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            return Err(Error::shape(
                op,
                format!(
                    "kernel {:?} is larger than the padded input {}x{}",
                    o.kernel_size,
                    x[2] + 2 * o.padding[0],
                    x[3] + 2 * o.padding[1]
                ),
            ));
        };
        Ok(PoolGeometry { n: x[0], c: x[1], h: x[2], w: x[3], ho, wo, o: *o })
    }

    /// Window of output row `p` along axis `a`: `(start, end, padded_end)`, with
    /// `start..end` inside the input and `padded_end` the end counting padding.
    fn window(&self, a: usize, p: usize) -> (usize, usize, isize) {
        let len = if a == 0 { self.h } else { self.w };
        let start = (p * self.o.stride[a]) as isize - self.o.padding[a] as isize;
        let padded_end =
            (start + self.o.kernel_size[a] as isize).min((len + self.o.padding[a]) as isize);
        let end = (start + self.o.kernel_size[a] as isize).min(len as isize);
        (start.max(0) as usize, end.max(0) as usize, padded_end - start)
    }

    fn check_dy(&self, op: &'static str, dy: &[usize]) -> Result<()> {
        let want = [self.n, self.c, self.ho, self.wo];
        if dy != want {
            return Err(Error::shape(
                op,
                format!("dy is {dy:?}, expected the output shape {want:?}"),
            ));
        }
        Ok(())
    }
}

/// Output of [`max_pool2d_forward`]: the maxima and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxPoolOutput<T> {
    /// Maxima, `[N, C, Ho, Wo]`.
    pub y: Array4<T>,
    /// For each output, the flat index `ih·W + iw` of its maximum in the
    /// input plane (PyTorch's `return_indices=True`).
    pub argmax: Array4<usize>,
}

/// Max pooling (`F.max_pool2d`): the largest value of each window, padding
/// counting as −∞. Ties go to the first in row-major order; NaN wins, as PyTorch.
///
/// # Shapes
/// `x: [N, C, H, W]` → `[N, C, Ho, Wo]`, `Ho = ⌊(H + 2p − k)/s⌋ + 1` (⌈⌉ in ceil mode).
///
/// # Errors
/// [`Error::Shape`] for a rank other than 4, zero sizes or a kernel larger than
/// the padded input; [`Error::Config`] for zero kernel or stride, or padding above half the kernel.
pub fn max_pool2d_forward<T: Float>(
    x: ArrayView4<'_, T>,
    opts: &Pool2dOptions,
) -> Result<MaxPoolOutput<T>> {
    let g = PoolGeometry::new("max_pool2d", x.shape(), opts)?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let area_in = g.h * g.w;
    let area_out = g.ho * g.wo;
    let mut y = Array4::<T>::zeros((g.n, g.c, g.ho, g.wo));
    let mut argmax = Array4::<usize>::zeros((g.n, g.c, g.ho, g.wo));
    let ys = y.as_slice_mut().expect("new arrays are contiguous");
    let am = argmax.as_slice_mut().expect("new arrays are contiguous");
    ys.par_chunks_mut(area_out).zip(am.par_chunks_mut(area_out)).enumerate().for_each(
        |(plane, (yp, ap))| {
            let xp = &xs[plane * area_in..(plane + 1) * area_in];
            for p in 0..g.ho {
                let (h0, h1, _) = g.window(0, p);
                for q in 0..g.wo {
                    let (w0, w1, _) = g.window(1, q);
                    let mut best = T::neg_infinity();
                    let mut best_at = h0 * g.w + w0;
                    for ih in h0..h1 {
                        for iw in w0..w1 {
                            let v = xp[ih * g.w + iw];
                            if v > best || v.is_nan() {
                                best = v;
                                best_at = ih * g.w + iw;
                                if v.is_nan() {
                                    break;
                                }
                            }
                        }
                        if best.is_nan() {
                            break;
                        }
                    }
                    yp[p * g.wo + q] = best;
                    ap[p * g.wo + q] = best_at;
                }
            }
        },
    );
    Ok(MaxPoolOutput { y, argmax })
}

/// Gradient of [`max_pool2d_forward`]: each `dy` goes to its window's maximum.
///
/// # Shapes
/// `dy, argmax: [N, C, Ho, Wo]`, `input_shape = [N, C, H, W]` → `dx: [N, C, H, W]`.
///
/// # Errors
/// [`Error::Shape`] when `dy` and `argmax` differ in shape, do not fit
/// `input_shape`, or an index lies outside the plane.
pub fn max_pool2d_backward<T: Float>(
    dy: ArrayView4<'_, T>,
    argmax: ArrayView4<'_, usize>,
    input_shape: [usize; 4],
) -> Result<Array4<T>> {
    const OP: &str = "max_pool2d";
    if dy.shape() != argmax.shape() || dy.shape()[..2] != input_shape[..2] {
        return Err(Error::shape(
            OP,
            format!(
                "dy {:?} and argmax {:?} must match the input {input_shape:?} in N and C",
                dy.shape(),
                argmax.shape()
            ),
        ));
    }
    let area = input_shape[2] * input_shape[3];
    if argmax.iter().any(|&i| i >= area) {
        return Err(Error::shape(
            OP,
            format!("an argmax index is outside the {area}-element plane"),
        ));
    }
    let mut dx = Array4::<T>::zeros(input_shape);
    let area_out = dy.shape()[2] * dy.shape()[3];
    let dy = dy.as_standard_layout();
    let argmax = argmax.as_standard_layout();
    let (dys, ams) = (dy.as_slice().expect("contiguous"), argmax.as_slice().expect("contiguous"));
    let dxs = dx.as_slice_mut().expect("new arrays are contiguous");
    dxs.par_chunks_mut(area).enumerate().for_each(|(plane, dxp)| {
        let range = plane * area_out..(plane + 1) * area_out;
        for (&g, &i) in dys[range.clone()].iter().zip(&ams[range]) {
            dxp[i] += g;
        }
    });
    Ok(dx)
}

/// Average pooling (`F.avg_pool2d`): the mean of each window; with
/// `count_include_pad` the divisor counts padded positions, as PyTorch.
///
/// # Shapes
/// `x: [N, C, H, W]` → `[N, C, Ho, Wo]` as [`max_pool2d_forward`].
///
/// # Errors
/// As [`max_pool2d_forward`].
pub fn avg_pool2d_forward<T: Float>(
    x: ArrayView4<'_, T>,
    opts: &Pool2dOptions,
) -> Result<Array4<T>> {
    let g = PoolGeometry::new("avg_pool2d", x.shape(), opts)?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let (area_in, area_out) = (g.h * g.w, g.ho * g.wo);
    let mut y = Array4::<T>::zeros((g.n, g.c, g.ho, g.wo));
    let ys = y.as_slice_mut().expect("new arrays are contiguous");
    ys.par_chunks_mut(area_out).enumerate().for_each(|(plane, yp)| {
        let xp = &xs[plane * area_in..(plane + 1) * area_in];
        for p in 0..g.ho {
            let (h0, h1, ph) = g.window(0, p);
            for q in 0..g.wo {
                let (w0, w1, pw) = g.window(1, q);
                let mut sum = T::zero();
                for ih in h0..h1 {
                    sum += xp[ih * g.w + w0..ih * g.w + w1].iter().copied().sum::<T>();
                }
                yp[p * g.wo + q] = sum / avg_divisor(&g, h1 - h0, w1 - w0, ph, pw);
            }
        }
    });
    Ok(y)
}

fn avg_divisor<T: Float>(
    g: &PoolGeometry,
    rows: usize,
    cols: usize,
    padded_rows: isize,
    padded_cols: isize,
) -> T {
    if g.o.count_include_pad {
        T::of((padded_rows * padded_cols) as f64)
    } else {
        T::of((rows * cols) as f64)
    }
}

/// Gradient of [`avg_pool2d_forward`]: each `dy` spread evenly over its window.
///
/// # Shapes
/// `dy: [N, C, Ho, Wo]`, `input_shape = [N, C, H, W]` → `dx: [N, C, H, W]`.
///
/// # Errors
/// As [`avg_pool2d_forward`] for `input_shape`, and [`Error::Shape`] when `dy`
/// is not the output shape.
pub fn avg_pool2d_backward<T: Float>(
    dy: ArrayView4<'_, T>,
    input_shape: [usize; 4],
    opts: &Pool2dOptions,
) -> Result<Array4<T>> {
    let g = PoolGeometry::new("avg_pool2d", &input_shape, opts)?;
    g.check_dy("avg_pool2d", dy.shape())?;
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout is contiguous");
    let (area_in, area_out) = (g.h * g.w, g.ho * g.wo);
    let mut dx = Array4::<T>::zeros(input_shape);
    let dxs = dx.as_slice_mut().expect("new arrays are contiguous");
    dxs.par_chunks_mut(area_in).enumerate().for_each(|(plane, dxp)| {
        let dyp = &dys[plane * area_out..(plane + 1) * area_out];
        for p in 0..g.ho {
            let (h0, h1, ph) = g.window(0, p);
            for q in 0..g.wo {
                let (w0, w1, pw) = g.window(1, q);
                let share = dyp[p * g.wo + q] / avg_divisor(&g, h1 - h0, w1 - w0, ph, pw);
                for ih in h0..h1 {
                    dxp[ih * g.w + w0..ih * g.w + w1].iter_mut().for_each(|v| *v += share);
                }
            }
        }
    });
    Ok(dx)
}

fn check_global(x: &[usize]) -> Result<()> {
    if x.len() != 4 || x.contains(&0) {
        return Err(Error::shape(
            "global_avg_pool2d",
            format!("input must be 4-D [N, C, H, W] with no zero size, got {x:?}"),
        ));
    }
    Ok(())
}

/// Global average pooling (`nn.AdaptiveAvgPool2d(1)`): the mean of each plane.
///
/// # Shapes
/// `x: [N, C, H, W]` → `[N, C, 1, 1]`.
///
/// # Errors
/// [`Error::Shape`] for a rank other than 4 or a zero size.
pub fn global_avg_pool2d_forward<T: Float>(x: ArrayView4<'_, T>) -> Result<Array4<T>> {
    check_global(x.shape())?;
    let (n, c, h, w) = x.dim();
    let inv = T::one() / T::of((h * w) as f64);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let means: Vec<T> =
        xs.par_chunks(h * w).map(|plane| plane.iter().copied().sum::<T>() * inv).collect();
    Ok(Array4::from_shape_vec((n, c, 1, 1), means).expect("one mean per plane"))
}

/// Gradient of [`global_avg_pool2d_forward`]: `dx = dy / (H·W)` over each plane.
///
/// # Shapes
/// `dy: [N, C, 1, 1]`, `input_shape = [N, C, H, W]` → `[N, C, H, W]`.
///
/// # Errors
/// [`Error::Shape`] when `dy` is not `[N, C, 1, 1]` of the input.
pub fn global_avg_pool2d_backward<T: Float>(
    dy: ArrayView4<'_, T>,
    input_shape: [usize; 4],
) -> Result<Array4<T>> {
    check_global(&input_shape)?;
    let [n, c, h, w] = input_shape;
    if dy.shape() != [n, c, 1, 1] {
        return Err(Error::shape(
            "global_avg_pool2d",
            format!("dy is {:?}, expected the output shape [{n}, {c}, 1, 1]", dy.shape()),
        ));
    }
    let inv = T::one() / T::of((h * w) as f64);
    let mut dx = Array4::<T>::zeros(input_shape);
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout is contiguous");
    let dxs = dx.as_slice_mut().expect("new arrays are contiguous");
    dxs.par_chunks_mut(h * w).zip(dys.par_iter()).for_each(|(plane, &g)| plane.fill(g * inv));
    Ok(dx)
}

/// Naive twins of the pools: every tap of every window tested against the
/// bounds, as the definitions read.
pub mod naive {
    use super::*;

    /// [`max_pool2d_forward`] by the definition.
    ///
    /// # Errors
    /// As [`max_pool2d_forward`].
    pub fn max_pool2d_forward_naive<T: Float>(
        x: ArrayView4<'_, T>,
        opts: &Pool2dOptions,
    ) -> Result<Array4<T>> {
        let g = PoolGeometry::new("max_pool2d", x.shape(), opts)?;
        Ok(Array4::from_shape_fn((g.n, g.c, g.ho, g.wo), |(n, c, p, q)| {
            let mut best = T::neg_infinity();
            for_window(&g, p, q, |ih, iw| {
                let v = x[[n, c, ih, iw]];
                if v > best || v.is_nan() && !best.is_nan() {
                    best = v;
                }
            });
            best
        }))
    }

    /// [`avg_pool2d_forward`] by the definition.
    ///
    /// # Errors
    /// As [`avg_pool2d_forward`].
    pub fn avg_pool2d_forward_naive<T: Float>(
        x: ArrayView4<'_, T>,
        opts: &Pool2dOptions,
    ) -> Result<Array4<T>> {
        let g = PoolGeometry::new("avg_pool2d", x.shape(), opts)?;
        Ok(Array4::from_shape_fn((g.n, g.c, g.ho, g.wo), |(n, c, p, q)| {
            let (mut sum, mut inside, mut counted) = (T::zero(), 0usize, 0usize);
            for i in 0..opts.kernel_size[0] {
                for j in 0..opts.kernel_size[1] {
                    let ih = (p * opts.stride[0] + i) as isize - opts.padding[0] as isize;
                    let iw = (q * opts.stride[1] + j) as isize - opts.padding[1] as isize;
                    // Taps past the right/bottom padding (ceil mode) are not counted at all.
                    if ih < (g.h + opts.padding[0]) as isize
                        && iw < (g.w + opts.padding[1]) as isize
                    {
                        counted += 1;
                    }
                    if ih >= 0 && iw >= 0 && (ih as usize) < g.h && (iw as usize) < g.w {
                        sum += x[[n, c, ih as usize, iw as usize]];
                        inside += 1;
                    }
                }
            }
            sum / T::of(if opts.count_include_pad { counted } else { inside } as f64)
        }))
    }

    fn for_window(g: &PoolGeometry, p: usize, q: usize, mut f: impl FnMut(usize, usize)) {
        for i in 0..g.o.kernel_size[0] {
            for j in 0..g.o.kernel_size[1] {
                let ih = (p * g.o.stride[0] + i) as isize - g.o.padding[0] as isize;
                let iw = (q * g.o.stride[1] + j) as isize - g.o.padding[1] as isize;
                if ih >= 0 && iw >= 0 && (ih as usize) < g.h && (iw as usize) < g.w {
                    f(ih as usize, iw as usize);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_len_follows_pytorch() {
        assert_eq!(pool_out_len(112, 3, 2, 1, false), Some(56));
        // ceil mode: 5 → windows at 0, 2, 4 (starts inside): 3; 6 with k2 s2: 3.
        assert_eq!(pool_out_len(5, 2, 2, 0, true), Some(3));
        assert_eq!(pool_out_len(5, 2, 2, 0, false), Some(2));
        assert_eq!(pool_out_len(1, 3, 1, 0, false), None);
    }

    #[test]
    fn bad_settings_are_errors() {
        let x = Array4::<f32>::zeros((1, 1, 4, 4));
        let e = max_pool2d_forward(x.view(), &Pool2dOptions::new(2).with_padding(2)).unwrap_err();
        assert!(e.to_string().contains("at most half the kernel"), "{e}");
        let e = avg_pool2d_forward(x.view(), &Pool2dOptions::new(5)).unwrap_err();
        assert!(e.to_string().contains("larger than the padded input 4x4"), "{e}");
        assert!(max_pool2d_forward(x.view(), &Pool2dOptions::new(2).with_stride(0)).is_err());
        let dy = Array4::<f32>::zeros((1, 1, 3, 3));
        assert!(avg_pool2d_backward(dy.view(), [1, 1, 4, 4], &Pool2dOptions::new(2)).is_err());
    }

    #[test]
    fn max_pool_propagates_nan() {
        let mut x = Array4::<f64>::zeros((1, 1, 2, 2));
        x[[0, 0, 1, 0]] = f64::NAN;
        x[[0, 0, 1, 1]] = 5.0;
        let out = max_pool2d_forward(x.view(), &Pool2dOptions::new(2)).unwrap();
        assert!(out.y[[0, 0, 0, 0]].is_nan());
        assert_eq!(out.argmax[[0, 0, 0, 0]], 2);
    }
}
