//! im2col and col2im: convolution as a matrix product.
//!
//! For one sample and one group, `col[(c·kh + i)·kw + j, oh·wo + ow]` is the
//! input tap `x[c, oh·sh − ph + i·dh, ow·sw − pw + j·dw]` (zero in the padding),
//! so `y_g = W_g[c_out/g, (c_in/g)·kh·kw] · col`. A block of several samples
//! sits side by side: sample `s` fills columns `s·ho·wo ..`.

use std::ops::Range;

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

/// Per kernel row `i` and column `j`: the tap's offset and the output
/// positions whose input lies inside the image, `(offset, lo, hi)`. The same
/// for every channel, so computed once per call, not once per channel and
/// tap (on 8×8 digits the divisions were 4.5% of a train step). A worker
/// makes them once per conv call and hands them to every [`im2col`] and
/// [`col2im`] of the call.
pub(crate) struct TapRanges {
    /// Per kernel row: `(offset, lo, hi)` of the output rows.
    pub(crate) rows: Vec<(isize, usize, usize)>,
    /// Per kernel column: `(offset, lo, hi)` of the output columns.
    pub(crate) cols: Vec<(isize, usize, usize)>,
}

impl TapRanges {
    /// The ranges of `g`'s taps.
    pub(crate) fn new(g: &ConvGeometry) -> Self {
        let [sh, sw] = g.opts.stride;
        let [ph, pw] = g.opts.padding;
        let [dh, dw] = g.opts.dilation;
        let along = |k: usize, d: usize, p: usize, out: usize, s: usize, len: usize| {
            (0..k)
                .map(|i| {
                    let off = (i * d) as isize - p as isize;
                    let (lo, hi) = valid_range(out, s, off, len);
                    (off, lo, hi)
                })
                .collect()
        };
        TapRanges {
            rows: along(g.kh, dh, ph, g.ho, sh, g.h),
            cols: along(g.kw, dw, pw, g.wo, sw, g.w),
        }
    }
}

cnn_tensor::simd_fn! {
    /// Fills `col` (row stride `ld`) with the im2col matrix of channels
    /// `c0 .. c0 + c_in/groups` of one sample `x` (`[c_in, h, w]`, contiguous),
    /// for output rows `out_rows` only: column `(oh − start)·wo + ow`.
    ///
    /// With a horizontal stride `sw > 1`, each input row is first split into its
    /// `sw` phases (`x[q], x[q + sw], …` for `q < sw`) in `phases`, so that every
    /// kernel tap copies a contiguous run instead of gathering with a stride:
    /// the strided reads happen once per input element, not once per tap.
    ///
    /// Compiled per SIMD level: its copies and adds run in the level's vectors.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn im2col<T: Float>(
        g: &ConvGeometry,
        taps: &TapRanges,
        x: &[T],
        c0: usize,
        out_rows: Range<usize>,
        col: &mut [T],
        ld: usize,
        phases: &mut Vec<T>,
    ) = im2col_body
}

/// The body of [`im2col`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn im2col_body<T: Float>(
    g: &ConvGeometry,
    taps: &TapRanges,
    x: &[T],
    c0: usize,
    out_rows: Range<usize>,
    col: &mut [T],
    ld: usize,
    phases: &mut Vec<T>,
) {
    let [sh, sw] = g.opts.stride;
    let (h, w, wo) = (g.h, g.w, g.wo);
    let in_rows = input_rows(g, &out_rows);
    let width = w.div_ceil(sw);
    if sw > 1 {
        split_phases(g, x, c0, &in_rows, phases);
    }
    let mut row = 0;
    for cc in 0..g.c_in_g() {
        let plane = &x[(c0 + cc) * h * w..(c0 + cc + 1) * h * w];
        for &(oh_off, oh_lo, oh_hi) in &taps.rows {
            for &(ow_off, ow_lo, ow_hi) in &taps.cols {
                let n = ow_hi - ow_lo;
                let dst_row = &mut col[row * ld..row * ld + out_rows.len() * wo];
                row += 1;
                if sh == 1 && sw == 1 && wo == w && n > 0 {
                    same_width_rows(
                        dst_row,
                        plane,
                        &out_rows,
                        (oh_lo, oh_hi),
                        (ow_lo, ow_hi),
                        oh_off,
                        ow_off,
                        w,
                    );
                    continue;
                }
                for (t, oh) in out_rows.clone().enumerate() {
                    let dst = &mut dst_row[t * wo..(t + 1) * wo];
                    if oh < oh_lo || oh >= oh_hi || n == 0 {
                        dst.fill(T::zero());
                        continue;
                    }
                    let ih = ((oh * sh) as isize + oh_off) as usize;
                    zero_edges(dst, ow_lo, ow_hi);
                    let iw0 = ((ow_lo * sw) as isize + ow_off) as usize;
                    let src = if sw == 1 {
                        &plane[ih * w + iw0..ih * w + iw0 + n]
                    } else {
                        let phase_row =
                            ((cc * in_rows.len() + ih - in_rows.start) * sw + iw0 % sw) * width;
                        &phases[phase_row + iw0 / sw..phase_row + iw0 / sw + n]
                    };
                    dst[ow_lo..ow_hi].copy_from_slice(src);
                }
            }
        }
    }
}

/// One im2col row of a stride-1 convolution whose output is as wide as its
/// input ("same" padding, the common 3×3 case): the valid output rows read
/// consecutive input rows at a fixed shift, so they are one contiguous copy
/// of the input instead of one short copy per row (a `memmove` call of a
/// few dozen bytes each was 10% of a 28×28 train step). The copy also fills
/// each row's padding columns with neighbouring pixels; those are zeroed
/// after it, and rows outside the image are zero.
#[allow(clippy::too_many_arguments)]
#[inline(always)] // into each SIMD level's copy of `im2col`
fn same_width_rows<T: Float>(
    dst_row: &mut [T],
    plane: &[T],
    out_rows: &Range<usize>,
    (oh_lo, oh_hi): (usize, usize),
    (ow_lo, ow_hi): (usize, usize),
    oh_off: isize,
    ow_off: isize,
    w: usize,
) {
    let first = out_rows.start.max(oh_lo);
    let last = out_rows.end.min(oh_hi);
    if first >= last {
        dst_row.fill(T::zero());
        return;
    }
    let (t0, t1) = (first - out_rows.start, last - out_rows.start);
    dst_row[..t0 * w].fill(T::zero());
    dst_row[t1 * w..].fill(T::zero());
    let ih0 = (first as isize + oh_off) as usize;
    let iw0 = (ow_lo as isize + ow_off) as usize;
    let len = (t1 - t0 - 1) * w + (ow_hi - ow_lo);
    let src = ih0 * w + iw0;
    dst_row[t0 * w + ow_lo..t0 * w + ow_lo + len].copy_from_slice(&plane[src..src + len]);
    for t in t0..t1 {
        let r = &mut dst_row[t * w..(t + 1) * w];
        zero_short(&mut r[..ow_lo]);
        zero_short(&mut r[ow_hi..]);
    }
}

/// Zeroes a run that is usually one or two elements (the padding columns of
/// a row): plain stores, where `fill` would call `memset` for each.
#[inline(always)]
fn zero_short<T: Float>(run: &mut [T]) {
    match run {
        [] => {}
        [a] => *a = T::zero(),
        [a, b] => (*a, *b) = (T::zero(), T::zero()),
        [a, b, c] => (*a, *b, *c) = (T::zero(), T::zero(), T::zero()),
        _ => run.fill(T::zero()),
    }
}

/// Zeroes `dst[..lo]` and `dst[hi..]`, the taps that fall in the padding.
///
/// These runs are a few elements long; `fill` would call `memset` for each
/// (6% of a forward pass on shape D). Two fixed-size stores of `EDGE` zeros
/// at both ends compile to a couple of vector stores; the caller writes the
/// valid run `lo..hi` afterwards, over any zeros that overlap it.
fn zero_edges<T: Float>(dst: &mut [T], lo: usize, hi: usize) {
    const EDGE: usize = 8;
    let len = dst.len();
    if lo == 0 && hi == len {
        return;
    }
    if len >= EDGE && lo <= EDGE && len - hi <= EDGE {
        dst[..EDGE].copy_from_slice(&[T::zero(); EDGE]);
        dst[len - EDGE..].copy_from_slice(&[T::zero(); EDGE]);
    } else {
        dst[..lo].fill(T::zero());
        dst[hi..].fill(T::zero());
    }
}

/// The input rows (clipped to the image) that output rows `out_rows` read.
fn input_rows(g: &ConvGeometry, out_rows: &Range<usize>) -> Range<usize> {
    let [sh, _] = g.opts.stride;
    let first = (out_rows.start * sh) as isize - g.opts.padding[0] as isize;
    let last = ((out_rows.end.max(1) - 1) * sh + (g.kh - 1) * g.opts.dilation[0]) as isize
        - g.opts.padding[0] as isize;
    let lo = first.clamp(0, g.h as isize) as usize;
    let hi = (last + 1).clamp(lo as isize, g.h as isize) as usize;
    lo..hi
}

/// `phases[((cc·rows + r)·sw + q)·⌈w/sw⌉ + t] = x[c0 + cc, in_rows.start + r, q + t·sw]`.
#[inline(always)] // into each SIMD level's copy of `im2col`
fn split_phases<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    c0: usize,
    in_rows: &Range<usize>,
    phases: &mut Vec<T>,
) {
    let [_, sw] = g.opts.stride;
    let (h, w) = (g.h, g.w);
    let width = w.div_ceil(sw);
    let needed = g.c_in_g() * in_rows.len() * sw * width;
    if phases.len() < needed {
        phases.resize(needed, T::zero());
    }
    for cc in 0..g.c_in_g() {
        for (r, ih) in in_rows.clone().enumerate() {
            let src = &x[((c0 + cc) * h + ih) * w..][..w];
            let base = (cc * in_rows.len() + r) * sw * width;
            for q in 0..sw.min(w) {
                let dst = &mut phases[base + q * width..base + (q + 1) * width];
                for (d, &v) in dst.iter_mut().zip(src[q..].iter().step_by(sw)) {
                    *d = v;
                }
            }
        }
    }
}

cnn_tensor::simd_fn! {
    /// Adds (`+=`) the im2col-shaped `col` (row stride `ld`, output rows
    /// `out_rows`) back onto channels `c0 .. c0 + c_in/groups` of one sample's
    /// `dx` (`[c_in, h, w]`): the adjoint of [`im2col`].
    ///
    /// With a horizontal stride `sw > 1` the taps are summed into `phases` (the
    /// layout [`im2col`] reads from) with contiguous adds, and the phases are
    /// interleaved back onto `dx` once at the end.
    ///
    /// Compiled per SIMD level: its copies and adds run in the level's vectors.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn col2im<T: Float>(
        g: &ConvGeometry,
        taps: &TapRanges,
        col: &[T],
        ld: usize,
        out_rows: Range<usize>,
        c0: usize,
        dx: &mut [T],
        phases: &mut Vec<T>,
    ) = col2im_body
}

/// The body of [`col2im`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn col2im_body<T: Float>(
    g: &ConvGeometry,
    taps: &TapRanges,
    col: &[T],
    ld: usize,
    out_rows: Range<usize>,
    c0: usize,
    dx: &mut [T],
    phases: &mut Vec<T>,
) {
    let [sh, sw] = g.opts.stride;
    let (h, w, wo) = (g.h, g.w, g.wo);
    let in_rows = input_rows(g, &out_rows);
    let width = w.div_ceil(sw);
    if sw > 1 {
        let needed = g.c_in_g() * in_rows.len() * sw * width;
        if phases.len() < needed {
            phases.resize(needed, T::zero());
        }
        phases[..needed].fill(T::zero());
    }
    let mut row = 0;
    for cc in 0..g.c_in_g() {
        let plane = &mut dx[(c0 + cc) * h * w..(c0 + cc + 1) * h * w];
        for &(oh_off, oh_lo, oh_hi) in &taps.rows {
            for &(ow_off, ow_lo, ow_hi) in &taps.cols {
                let src_row = &col[row * ld..row * ld + out_rows.len() * wo];
                row += 1;
                if ow_lo >= ow_hi {
                    continue;
                }
                let n = ow_hi - ow_lo;
                for oh in oh_lo.max(out_rows.start)..oh_hi.min(out_rows.end) {
                    let ih = ((oh * sh) as isize + oh_off) as usize;
                    let t = oh - out_rows.start;
                    let src = &src_row[t * wo + ow_lo..t * wo + ow_hi];
                    let iw0 = ((ow_lo * sw) as isize + ow_off) as usize;
                    let dst = if sw == 1 {
                        &mut plane[ih * w + iw0..ih * w + iw0 + n]
                    } else {
                        let phase_row =
                            ((cc * in_rows.len() + ih - in_rows.start) * sw + iw0 % sw) * width;
                        &mut phases[phase_row + iw0 / sw..phase_row + iw0 / sw + n]
                    };
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
        }
    }
    if sw > 1 {
        merge_phases(g, phases, c0, &in_rows, dx);
    }
}

/// `dx[c0 + cc, in_rows.start + r, q + t·sw] += phases[…]`: the adjoint of `split_phases`.
#[inline(always)] // into each SIMD level's copy of `col2im`
fn merge_phases<T: Float>(
    g: &ConvGeometry,
    phases: &[T],
    c0: usize,
    in_rows: &Range<usize>,
    dx: &mut [T],
) {
    let [_, sw] = g.opts.stride;
    let (h, w) = (g.h, g.w);
    let width = w.div_ceil(sw);
    for cc in 0..g.c_in_g() {
        for (r, ih) in in_rows.clone().enumerate() {
            let dst = &mut dx[((c0 + cc) * h + ih) * w..][..w];
            let base = (cc * in_rows.len() + r) * sw * width;
            for q in 0..sw.min(w) {
                let src = &phases[base + q * width..base + (q + 1) * width];
                for (d, &v) in dst[q..].iter_mut().step_by(sw).zip(src) {
                    *d += v;
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
