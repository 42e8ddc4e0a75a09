//! Naive reference kernels: the definitions as loops, to hold the fast ones to.

use cnn_tensor::{Float, Result};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};

use crate::{Conv2dGrads, Conv2dOptions, ConvGeometry};

/// Calls `f([n, o, p, q, c, i, j, ih, iw])` for every in-bounds tap of the convolution: sample, output channel, output row and column, input channel in the group, kernel row and column, and the input row and column they read.
fn for_each_tap(g: &ConvGeometry, mut f: impl FnMut([usize; 9])) {
    let (cog, cg) = (g.c_out_g(), g.c_in_g());
    let o_ = &g.opts;
    for n in 0..g.n {
        for o in 0..g.c_out {
            let grp = o / cog;
            for p in 0..g.ho {
                for q in 0..g.wo {
                    for c in 0..cg {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let ih = (p * o_.stride[0] + i * o_.dilation[0]) as isize
                                    - o_.padding[0] as isize;
                                let iw = (q * o_.stride[1] + j * o_.dilation[1]) as isize
                                    - o_.padding[1] as isize;
                                if ih >= 0 && iw >= 0 && (ih as usize) < g.h && (iw as usize) < g.w
                                {
                                    f([
                                        n,
                                        o,
                                        p,
                                        q,
                                        c,
                                        i,
                                        j,
                                        grp * cg + c,
                                        (ih as usize) * g.w + iw as usize,
                                    ]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`crate::conv2d_forward`] as seven nested loops.
///
/// # Errors
/// As [`crate::conv2d_forward`].
pub fn conv2d_forward_naive<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    b: Option<ArrayView1<'_, T>>,
    opts: &Conv2dOptions,
) -> Result<Array4<T>> {
    let g = ConvGeometry::new(x.shape(), w.shape(), opts)?;
    g.check_bias(b.as_ref().map(|b| b.len()))?;
    let mut y = Array4::<T>::zeros(g.out_shape());
    for_each_tap(&g, |[n, o, p, q, c, i, j, ci, pos]| {
        y[[n, o, p, q]] += w[[o, c, i, j]] * x[[n, ci, pos / g.w, pos % g.w]];
    });
    if let Some(b) = b {
        for ((_, o, _, _), v) in y.indexed_iter_mut() {
            *v += b[o];
        }
    }
    Ok(y)
}

/// [`crate::conv2d_backward`] as loops over the same taps as the forward.
///
/// # Errors
/// As [`crate::conv2d_backward`].
pub fn conv2d_backward_naive<T: Float>(
    x: ArrayView4<'_, T>,
    w: ArrayView4<'_, T>,
    dy: ArrayView4<'_, T>,
    opts: &Conv2dOptions,
) -> Result<Conv2dGrads<T>> {
    let g = ConvGeometry::new(x.shape(), w.shape(), opts)?;
    g.check_dy(dy.shape())?;
    let mut dx = Array4::<T>::zeros(x.raw_dim());
    let mut dw = Array4::<T>::zeros(w.raw_dim());
    for_each_tap(&g, |[n, o, p, q, c, i, j, ci, pos]| {
        let (ih, iw) = (pos / g.w, pos % g.w);
        dx[[n, ci, ih, iw]] += w[[o, c, i, j]] * dy[[n, o, p, q]];
        dw[[o, c, i, j]] += x[[n, ci, ih, iw]] * dy[[n, o, p, q]];
    });
    let mut db = Array1::<T>::zeros(g.c_out);
    for ((_, o, _, _), &v) in dy.indexed_iter() {
        db[o] += v;
    }
    Ok(Conv2dGrads { dx, dw, db })
}
