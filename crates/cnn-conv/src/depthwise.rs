//! A direct depthwise convolution (`groups = C_in = C_out`): each channel's
//! plane convolved with its own `kh × kw` kernel, no im2col.
//!
//! Forward and dx run one `(sample, channel)` plane per task; dW and db one
//! channel per task, adding the samples in order, so results do not depend
//! on the thread count. Along the width the work is a sliding
//! `y[q] += w·x[q·s + j·d − p]` over a row, which for stride 1 is a plain
//! scaled row add the compiler vectorizes. The naive twin is
//! [`crate::naive::conv2d_forward_naive`] and its backward, as for the
//! im2col path (tests hold them equal).

use cnn_tensor::Float;
use rayon::prelude::*;

use crate::epilogue::{relu_in_place, Epilogue};
use crate::ConvGeometry;

/// Whether `g` is a depthwise convolution with one output per input channel.
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.opts.groups == g.c_in && g.c_out == g.c_in && g.c_in > 1
}

/// The output columns `q` whose tap `x[q·s + off]` (with `off = j·d − p`) lies in `0..w`.
fn valid_cols(wo: usize, w: usize, s: usize, off: isize) -> std::ops::Range<usize> {
    // q·s + off >= 0  ⇔  q >= ceil(−off / s); q·s + off <= w − 1.
    let lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s) };
    let hi = if (w as isize - 1 - off) < 0 {
        0
    } else {
        ((w as isize - 1 - off) as usize / s + 1).min(wo)
    };
    lo.min(hi)..hi
}

/// `acc[q] += k · x[q·s + off]` for the valid columns.
#[inline]
fn row_axpy<T: Float>(acc: &mut [T], x_row: &[T], k: T, s: usize, off: isize) {
    let cols = valid_cols(acc.len(), x_row.len(), s, off);
    if cols.is_empty() {
        return;
    }
    let start = (cols.start * s) as isize + off;
    if s == 1 {
        let src = &x_row[start as usize..start as usize + cols.len()];
        acc[cols].iter_mut().zip(src).for_each(|(a, &v)| *a += k * v);
    } else {
        for (i, a) in acc[cols].iter_mut().enumerate() {
            *a += k * x_row[start as usize + i * s];
        }
    }
}

/// The kernel rows `i` that output row `p` reads, with the input row `r`
/// they land on (rows in the padding are left out).
fn input_rows(g: &ConvGeometry, p: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let ([sh, _], [ph, _], [dh, _]) = (g.opts.stride, g.opts.padding, g.opts.dilation);
    (0..g.kh).filter_map(move |i| {
        let r = (p * sh + i * dh) as isize - ph as isize;
        (0..g.h as isize).contains(&r).then_some((i, r as usize))
    })
}

/// One output plane: `y[p, q] = b + Σ_{i, j} w[i, j]·x[p·sh − ph + i·dh, q·sw − pw + j·dw]`.
///
/// # Shapes
/// `x: [H·W]`, `k: [kh·kw]`, `y: [Ho·Wo]`; `padded` is a task's scratch, reused
/// from plane to plane.
#[inline(always)]
fn forward_plane_body<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    k: &[T],
    bias: T,
    y: &mut [T],
    padded: &mut Vec<T>,
) {
    let ([_, sw], [_, pw], [_, dw]) = (g.opts.stride, g.opts.padding, g.opts.dilation);
    if sw == 1 && dw == 1 {
        return forward_plane_unit(g, x, k, bias, y, padded);
    }
    y.iter_mut().for_each(|v| *v = bias);
    for (p, y_row) in y.chunks_mut(g.wo).enumerate() {
        for (i, r) in input_rows(g, p) {
            let x_row = &x[r * g.w..][..g.w];
            for j in 0..g.kw {
                row_axpy(y_row, x_row, k[i * g.kw + j], sw, (j * dw) as isize - pw as isize);
            }
        }
    }
}

cnn_tensor::simd_fn! {
    /// One output plane, compiled per SIMD level.
    fn forward_plane<T: Float>(
        g: &ConvGeometry,
        x: &[T],
        k: &[T],
        bias: T,
        y: &mut [T],
        padded: &mut Vec<T>,
    ) = forward_plane_body
}

/// The plane `x` (`[h, w]`) as `h` rows of `width` in `padded`: `pw` zeros,
/// the row, zeros to the end. The borders are rewritten each time, since the
/// buffer is reused from a plane of another shape.
#[inline(always)]
fn pad_rows<T: Float>(g: &ConvGeometry, x: &[T], width: usize, padded: &mut Vec<T>) {
    let pw = g.opts.padding[1];
    padded.resize(g.h * width, T::zero());
    for (dst, src) in padded.chunks_mut(width).zip(x.chunks(g.w)) {
        dst[..pw].fill(T::zero());
        dst[pw..pw + g.w].copy_from_slice(src);
        dst[pw + g.w..].fill(T::zero());
    }
}

/// Output columns accumulated in registers at once by [`forward_plane_unit`].
const COLS: usize = 16;

/// `acc[l] += k·src[l]` over one block of [`COLS`] outputs (the portable
/// path, and f64).
#[inline(always)]
fn axpy_block<T: Float>(acc: &mut [T; COLS], k: T, src: &[T; COLS]) {
    for (a, &s) in acc.iter_mut().zip(src) {
        *a += k * s;
    }
}

/// [`forward_plane_unit`]'s blocks in f32 on AVX-512, one register a block
/// (on AVX2, two).
/// Left to LLVM, the block's accumulators were vectorized as its heuristics
/// and the crate's partitioning happened to decide, once across the taps in
/// 128-bit and scalar code (31 → 42 ms on the DW benchmark shape after an
/// unrelated change elsewhere in the crate); here the lanes are the block's
/// 16 outputs, always. The same sums in the same order as the portable loop
/// (multiply, then add: no fused multiply-add), so the same bits.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{input_rows, COLS};
    use crate::ConvGeometry;
    use std::arch::x86_64::{
        __mmask16, _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_storeu_ps,
        _mm512_add_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_mul_ps, _mm512_set1_ps,
    };

    /// `y[p, q] = b + Σ_{i, j} k[i, j]·padded[r(p, i), q + j]` for every output,
    /// `padded` the plane's rows `width` apart (each at least
    /// `⌈wo / 16⌉·16 + kw − 1` wide, as `forward_plane_unit` makes them).
    #[target_feature(enable = "avx512f")]
    pub(super) fn unit_blocks(
        g: &ConvGeometry,
        padded: &[f32],
        width: usize,
        k: &[f32],
        bias: f32,
        y: &mut [f32],
    ) {
        let (wo, kw) = (g.wo, g.kw);
        assert!(width >= wo.div_ceil(COLS) * COLS + kw - 1, "padded rows too narrow");
        for (p, y_row) in y.chunks_mut(wo).enumerate() {
            let mut q0 = 0;
            while q0 < wo {
                let n = COLS.min(wo - q0);
                let mut acc = _mm512_set1_ps(bias);
                for (i, r) in input_rows(g, p) {
                    let row = &padded[r * width..(r + 1) * width];
                    for (j, &kk) in k[i * kw..(i + 1) * kw].iter().enumerate() {
                        // SAFETY: q0 + j + 16 ≤ ⌈wo / 16⌉·16 + kw − 1 ≤ width = row.len()
                        // (asserted above): the 16 values lie inside the row.
                        let src = unsafe { _mm512_loadu_ps(row.as_ptr().add(q0 + j)) };
                        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(kk), src));
                    }
                }
                let mask: __mmask16 = if n == COLS { !0 } else { (1 << n) - 1 };
                // SAFETY: only lanes l < n are stored, at y_row[q0 + l], q0 + n ≤ wo = y_row.len().
                unsafe { _mm512_mask_storeu_ps(y_row.as_mut_ptr().add(q0), mask, acc) };
                q0 += n;
            }
        }
    }

    /// [`unit_blocks`] in two 256-bit registers a block: the same products
    /// and sums, so the same bits.
    #[target_feature(enable = "avx2")]
    pub(super) fn unit_blocks_avx2(
        g: &ConvGeometry,
        padded: &[f32],
        width: usize,
        k: &[f32],
        bias: f32,
        y: &mut [f32],
    ) {
        let (wo, kw) = (g.wo, g.kw);
        assert!(width >= wo.div_ceil(COLS) * COLS + kw - 1, "padded rows too narrow");
        for (p, y_row) in y.chunks_mut(wo).enumerate() {
            let mut q0 = 0;
            while q0 < wo {
                let n = COLS.min(wo - q0);
                let mut acc = [_mm256_set1_ps(bias); 2];
                for (i, r) in input_rows(g, p) {
                    let row = &padded[r * width..(r + 1) * width];
                    for (j, &kk) in k[i * kw..(i + 1) * kw].iter().enumerate() {
                        let kv = _mm256_set1_ps(kk);
                        for (h, a) in acc.iter_mut().enumerate() {
                            // SAFETY: q0 + j + 16 ≤ ⌈wo / 16⌉·16 + kw − 1 ≤ width = row.len()
                            // (asserted above): the 8 values of half h lie inside the row.
                            let src = unsafe { _mm256_loadu_ps(row.as_ptr().add(q0 + j + 8 * h)) };
                            *a = _mm256_add_ps(*a, _mm256_mul_ps(kv, src));
                        }
                    }
                }
                let mut block = [0f32; COLS];
                let full = n == COLS;
                let dst = if full { &mut y_row[q0..q0 + COLS] } else { &mut block[..] };
                for (h, &a) in acc.iter().enumerate() {
                    // SAFETY: `dst` holds 16 floats; half h writes 8 from 8·h.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * h), a) };
                }
                if !full {
                    y_row[q0..q0 + n].copy_from_slice(&block[..n]);
                }
                q0 += n;
            }
        }
    }
}

/// [`forward_plane_body`] for a horizontal stride and dilation of 1: each
/// input row is first copied into a zero-padded row (`pw` zeros on the left,
/// zeros on the right up to a whole block), then each block of [`COLS`]
/// outputs of an output row sums all its taps in registers
/// (`acc[l] += k[i, j]·row[q + l + j]`) and is stored once, instead of one
/// pass over the output row per tap. A last block narrower than [`COLS`]
/// (every row of a map under 16 wide: ConvNeXt's 8×8, 4×4 and 2×2 stages)
/// is computed full width over the zeros and only its `n` outputs stored:
/// vector lanes to spare beat a scalar loop.
#[inline(always)]
fn forward_plane_unit<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    k: &[T],
    bias: T,
    y: &mut [T],
    padded: &mut Vec<T>,
) {
    let pw = g.opts.padding[1];
    // Every block reads columns q0 + j + l < wo.div_ceil(COLS)·COLS + kw − 1.
    let width = (g.w + 2 * pw).max(g.wo.div_ceil(COLS) * COLS + g.kw - 1);
    pad_rows(g, x, width, padded);
    #[cfg(target_arch = "x86_64")]
    {
        use cnn_tensor::simd::{level, SimdLevel};
        let b = T::as_f32(std::slice::from_ref(&bias)).map(|b| b[0]);
        if let (Some(p32), Some(k32), Some(b32), true) =
            (T::as_f32(padded), T::as_f32(k), b, level() >= SimdLevel::Avx2)
        {
            let y32 = T::as_f32_mut(y).expect("y has x's type");
            if level() >= SimdLevel::Avx512 {
                // SAFETY: `level` says Avx512 or above only when the CPU has AVX-512F.
                unsafe { x86::unit_blocks(g, p32, width, k32, b32, y32) };
            } else {
                // SAFETY: `level` says Avx2 only when the CPU has AVX2 (and FMA).
                unsafe { x86::unit_blocks_avx2(g, p32, width, k32, b32, y32) };
            }
            return;
        }
    }
    let (wo, kw) = (g.wo, g.kw);
    for (p, y_row) in y.chunks_mut(wo).enumerate() {
        let mut q0 = 0;
        while q0 < wo {
            let n = COLS.min(wo - q0);
            let mut acc = [bias; COLS];
            for (i, r) in input_rows(g, p) {
                let row = &padded[r * width..(r + 1) * width];
                for j in 0..kw {
                    let kk = k[i * kw + j];
                    // Output q reads padded column q + j (input column q + j − pw).
                    let src: &[T; COLS] =
                        row[q0 + j..q0 + j + COLS].try_into().expect("COLS columns");
                    axpy_block(&mut acc, kk, src);
                }
            }
            y_row[q0..q0 + n].copy_from_slice(&acc[..n]);
            q0 += n;
        }
    }
}

/// One input plane's gradient: every `dy[p, q]` sends `w[i, j]·dy[p, q]` back to its tap.
#[inline(always)]
fn dx_plane_body<T: Float>(g: &ConvGeometry, dy: &[T], k: &[T], dx: &mut [T]) {
    let ([_, sw], [_, pw], [_, dw]) = (g.opts.stride, g.opts.padding, g.opts.dilation);
    for (p, dy_row) in dy.chunks(g.wo).enumerate() {
        for (i, r) in input_rows(g, p) {
            let dx_row = &mut dx[r * g.w..][..g.w];
            for j in 0..g.kw {
                let off = (j * dw) as isize - pw as isize;
                let cols = valid_cols(g.wo, g.w, sw, off);
                let kk = k[i * g.kw + j];
                for q in cols {
                    dx_row[((q * sw) as isize + off) as usize] += kk * dy_row[q];
                }
            }
        }
    }
}

cnn_tensor::simd_fn! {
    /// One input plane's gradient, compiled per SIMD level.
    fn dx_plane<T: Float>(g: &ConvGeometry, dy: &[T], k: &[T], dx: &mut [T]) = dx_plane_body
}

/// One plane's share of `dW[i, j] = Σ_{p, q} dy[p, q]·x[tap]` and `db = Σ dy`.
/// The sum over `q` runs in [`COLS`] interleaved lanes (added pairwise at the
/// end): a single running sum is latency-bound and cannot be vectorized.
#[inline(always)]
fn dw_plane_body<T: Float>(g: &ConvGeometry, x: &[T], dy: &[T], dk: &mut [T], padded: &mut Vec<T>) {
    let ([_, sw], [_, pw], [_, dw]) = (g.opts.stride, g.opts.padding, g.opts.dilation);
    if sw == 1 && dw == 1 && g.kw <= TAPS {
        return dw_plane_unit(g, x, dy, dk, padded);
    }
    for (p, dy_row) in dy.chunks(g.wo).enumerate() {
        for (i, r) in input_rows(g, p) {
            let x_row = &x[r * g.w..][..g.w];
            for j in 0..g.kw {
                let off = (j * dw) as isize - pw as isize;
                let cols = valid_cols(g.wo, g.w, sw, off);
                if cols.is_empty() {
                    continue;
                }
                let mut lanes = [T::zero(); COLS];
                if sw == 1 {
                    let start = (cols.start as isize + off) as usize;
                    let (d, xs) = (&dy_row[cols.clone()], &x_row[start..start + cols.len()]);
                    let (dc, xc) = (d.chunks_exact(COLS), xs.chunks_exact(COLS));
                    let (dr, xr) = (dc.remainder(), xc.remainder());
                    for (a, b) in dc.zip(xc) {
                        for l in 0..COLS {
                            lanes[l] += a[l] * b[l];
                        }
                    }
                    for (l, (a, b)) in dr.iter().zip(xr).enumerate() {
                        lanes[l] += *a * *b;
                    }
                } else {
                    for (t, q) in cols.enumerate() {
                        lanes[t % COLS] += dy_row[q] * x_row[((q * sw) as isize + off) as usize];
                    }
                }
                let mut width = COLS;
                while width > 1 {
                    width /= 2;
                    for l in 0..width {
                        lanes[l] += lanes[l + width];
                    }
                }
                dk[i * g.kw + j] += lanes[0];
            }
        }
    }
}

/// Kernel columns [`dw_plane_unit`] keeps in one vector of accumulators.
const TAPS: usize = 8;

/// [`dw_plane_body`] for a horizontal stride and dilation of 1 and at most
/// [`TAPS`] kernel columns: the lanes run along the kernel's columns instead
/// of the output's, `acc[j] += dy[p, q]·row[q + j]` over a zero-padded input
/// row, one vector multiply-add per output column. The lanes-along-`q` form
/// left every row under 16 wide (ConvNeXt's 8×8, 4×4, 2×2 stages) to a
/// scalar remainder loop.
#[inline(always)]
fn dw_plane_unit<T: Float>(g: &ConvGeometry, x: &[T], dy: &[T], dk: &mut [T], padded: &mut Vec<T>) {
    let pw = g.opts.padding[1];
    // Row q reads padded columns q .. q + TAPS: zeros past the input on both sides.
    let width = (g.w + 2 * pw).max(g.wo + TAPS - 1);
    pad_rows(g, x, width, padded);
    for (p, dy_row) in dy.chunks(g.wo).enumerate() {
        for (i, r) in input_rows(g, p) {
            let row = &padded[r * width..(r + 1) * width];
            let mut acc = [T::zero(); TAPS];
            for (q, &d) in dy_row.iter().enumerate() {
                let src: &[T; TAPS] = row[q..q + TAPS].try_into().expect("TAPS columns");
                for j in 0..TAPS {
                    acc[j] += d * src[j];
                }
            }
            for (dk_j, a) in dk[i * g.kw..(i + 1) * g.kw].iter_mut().zip(acc) {
                *dk_j += a;
            }
        }
    }
}

cnn_tensor::simd_fn! {
    /// One plane's share of dW, compiled per SIMD level.
    fn dw_plane<T: Float>(
        g: &ConvGeometry,
        x: &[T],
        dy: &[T],
        dk: &mut [T],
        padded: &mut Vec<T>,
    ) = dw_plane_body
}

/// Forward over the batch: `x: [N·C·H·W]`, `w: [C·kh·kw]`, `b: [C]` → `y: [N·C·Ho·Wo]`.
/// The epilogue runs on each plane while it is in cache.
pub(crate) fn forward<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    epilogue: Epilogue,
) {
    let (area_in, area_out, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    y.par_chunks_mut(area_out).zip(x.par_chunks(area_in)).enumerate().for_each_init(
        Vec::new,
        |padded, (plane, (y_p, x_p))| {
            let c = plane % g.c_in;
            let bias = b.map_or(T::zero(), |b| b[c]);
            forward_plane(g, x_p, &w[c * taps..][..taps], bias, y_p, padded);
            if epilogue == Epilogue::Relu {
                relu_in_place(y_p);
            }
        },
    );
}

/// Backward over the batch: `(dx, dw, db)` for `dy: [N·C·Ho·Wo]`.
pub(crate) fn backward<T: Float>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (area_in, area_out, taps, c_n) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw, g.c_in);
    let mut dx = vec![T::zero(); x.len()];
    // Stride 1, dilation 1: dx is the forward conv of dy with the flipped kernel
    // and padding k − 1 − p, which runs in the register-blocked forward kernel.
    let flipped = g.dx_as_forward();
    let w_flipped = g.dx_weight(w);
    dx.par_chunks_mut(area_in).zip(dy.par_chunks(area_out)).enumerate().for_each_init(
        Vec::new,
        |padded, (plane, (dx_p, dy_p))| {
            let c = plane % c_n;
            match &flipped {
                Some(gt) => {
                    let k = &w_flipped[c * taps..][..taps];
                    forward_plane(gt, dy_p, k, T::zero(), dx_p, padded)
                }
                None => dx_plane(g, dy_p, &w[c * taps..][..taps], dx_p),
            }
        },
    );
    let per_channel: Vec<(Vec<T>, T)> = (0..c_n)
        .into_par_iter()
        .map_init(Vec::new, |padded, c| {
            let mut dk = vec![T::zero(); taps];
            let mut db = T::zero();
            for n in 0..g.n {
                let plane = n * c_n + c;
                let (x_p, dy_p) =
                    (&x[plane * area_in..][..area_in], &dy[plane * area_out..][..area_out]);
                dw_plane(g, x_p, dy_p, &mut dk, padded);
                db += cnn_tensor::sum(dy_p);
            }
            (dk, db)
        })
        .collect();
    let dw = per_channel.iter().flat_map(|(dk, _)| dk.iter().copied()).collect();
    let db = per_channel.iter().map(|&(_, d)| d).collect();
    (dx, dw, db)
}
