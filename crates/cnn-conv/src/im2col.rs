//! im2col and col2im: convolution as a matrix product.
//!
//! For one sample and one group, `col[(c·kh + i)·kw + j, oh·wo + ow]` is the
//! input tap `x[c, oh·sh − ph + i·dh, ow·sw − pw + j·dw]` (zero in the padding),
//! so `y_g = W_g[c_out/g, (c_in/g)·kh·kw] · col`. A block of several samples
//! sits side by side: sample `s` fills columns `s·ho·wo ..`.

use cnn_tensor::Float;

use crate::ConvGeometry;

/// The output positions `o` whose input index `o·stride + offset` lies in `[0, len)`,
/// as the range `lo..hi` (empty if none).
fn valid_range(out_len: usize, stride: usize, offset: isize, len: usize) -> (usize, usize) {
    // o·s + offset >= 0  ⇔  o >= ceil(−offset / s)
    let lo = if offset >= 0 { 0 } else { ((-offset) as usize).div_ceil(stride) };
    // o·s + offset < len  ⇔  o < ceil((len − offset) / s)
    let limit = len as isize - offset;
    let hi = if limit <= 0 { 0 } else { (limit as usize).div_ceil(stride).min(out_len) };
    (lo.min(hi), hi)
}

/// Fills `col` (row stride `ld`) with the im2col matrix of channels
/// `c0 .. c0 + c_in/groups` of one sample `x` (`[c_in, h, w]`, contiguous).
pub(crate) fn im2col<T: Float>(g: &ConvGeometry, x: &[T], c0: usize, col: &mut [T], ld: usize) {
    let [sh, sw] = g.opts.stride;
    let [ph, pw] = g.opts.padding;
    let [dh, dw] = g.opts.dilation;
    let (h, w, wo) = (g.h, g.w, g.wo);
    let mut row = 0;
    for c in c0..c0 + g.c_in_g() {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for i in 0..g.kh {
            let oh_off = (i * dh) as isize - ph as isize;
            let (oh_lo, oh_hi) = valid_range(g.ho, sh, oh_off, h);
            for j in 0..g.kw {
                let ow_off = (j * dw) as isize - pw as isize;
                let (ow_lo, ow_hi) = valid_range(wo, sw, ow_off, w);
                let dst_row = &mut col[row * ld..row * ld + g.out_area()];
                row += 1;
                for oh in 0..g.ho {
                    let dst = &mut dst_row[oh * wo..(oh + 1) * wo];
                    if oh < oh_lo || oh >= oh_hi || ow_lo >= ow_hi {
                        dst.fill(T::zero());
                        continue;
                    }
                    let ih = (oh * sh) as isize + oh_off;
                    let src = &plane[ih as usize * w..(ih as usize + 1) * w];
                    dst[..ow_lo].fill(T::zero());
                    dst[ow_hi..].fill(T::zero());
                    let iw0 = (ow_lo * sw) as isize + ow_off;
                    if sw == 1 {
                        let n = ow_hi - ow_lo;
                        dst[ow_lo..ow_hi].copy_from_slice(&src[iw0 as usize..iw0 as usize + n]);
                    } else {
                        for (k, d) in dst[ow_lo..ow_hi].iter_mut().enumerate() {
                            *d = src[iw0 as usize + k * sw];
                        }
                    }
                }
            }
        }
    }
}

/// Adds (`+=`) the im2col-shaped `col` (row stride `ld`) back onto channels
/// `c0 .. c0 + c_in/groups` of one sample's `dx` (`[c_in, h, w]`): the adjoint of [`im2col`].
pub(crate) fn col2im<T: Float>(g: &ConvGeometry, col: &[T], ld: usize, c0: usize, dx: &mut [T]) {
    let [sh, sw] = g.opts.stride;
    let [ph, pw] = g.opts.padding;
    let [dh, dw] = g.opts.dilation;
    let (h, w, wo) = (g.h, g.w, g.wo);
    let mut row = 0;
    for c in c0..c0 + g.c_in_g() {
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        for i in 0..g.kh {
            let oh_off = (i * dh) as isize - ph as isize;
            let (oh_lo, oh_hi) = valid_range(g.ho, sh, oh_off, h);
            for j in 0..g.kw {
                let ow_off = (j * dw) as isize - pw as isize;
                let (ow_lo, ow_hi) = valid_range(wo, sw, ow_off, w);
                let src_row = &col[row * ld..row * ld + g.out_area()];
                row += 1;
                if ow_lo >= ow_hi {
                    continue;
                }
                for oh in oh_lo..oh_hi {
                    let ih = ((oh * sh) as isize + oh_off) as usize;
                    let dst = &mut plane[ih * w..(ih + 1) * w];
                    let src = &src_row[oh * wo + ow_lo..oh * wo + ow_hi];
                    let iw0 = ((ow_lo * sw) as isize + ow_off) as usize;
                    if sw == 1 {
                        for (d, &s) in dst[iw0..iw0 + src.len()].iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        for (k, &s) in src.iter().enumerate() {
                            dst[iw0 + k * sw] += s;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_is_exact() {
        for out_len in 1..6 {
            for stride in 1..4 {
                for offset in -4isize..4 {
                    for len in 1..8 {
                        let (lo, hi) = valid_range(out_len, stride, offset, len);
                        let want: Vec<usize> = (0..out_len)
                            .filter(|&o| {
                                (0..len as isize).contains(&(o as isize * stride as isize + offset))
                            })
                            .collect();
                        let got: Vec<usize> = (lo..hi).collect();
                        assert_eq!(
                            got, want,
                            "out_len {out_len} stride {stride} offset {offset} len {len}"
                        );
                    }
                }
            }
        }
    }
}
