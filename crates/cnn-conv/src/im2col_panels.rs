//! im2col fused into the product: each panel of the micro-kernel's right
//! operand (`NR` columns of the column matrix, a slab of its rows) written
//! straight from the input just before the kernel reads it
//! (`cnn_tensor::gemm_panels_by`), for convolutions whose output is as wide
//! as their input (the "same"-padded 3×3 of every ResNet stage), or, with a
//! stride, as wide as the input's phase planes (ResNet's downsampling 3×3
//! and 7×7 stem).
//!
//! The plain path writes the column matrix `col [Cg·kh·kw, rows·Wo]`, and
//! the product then copies it into panels of `NR` columns: two passes over
//! a tile of up to 512 KiB, plus a `memmove` call per 48-value panel row
//! (half of shape B's forward time went there); writing all the panels
//! first still sent 576 KiB through L2 per tile. Here a panel (`kc × NR`,
//! 27 KiB for shape B) goes from the input to the kernel in L1.
//!
//! With stride 1 and `Wo = W`, the taps of row `(c, i, j)` at the tile's
//! columns `p` are `x[c][start·W + p + shift]` for one shift, so 16
//! consecutive columns are 16 consecutive inputs: one masked load from the
//! input and one store into their panel row. The mask keeps the lanes whose
//! input lies inside the image. Masked-off lanes read nothing (AVX-512
//! masked loads do not touch them, nor do AVX2's `vmaskmovps`, two per
//! chunk) and are written as 0, as the padding is.
//! With a stride `(sh, sw)` the group's input is first split into phase
//! planes (`x[sh·a + r, sw·b + s]` at `(r, s)[a, b]`, one pass over it), in
//! which a tap's inputs for consecutive outputs are consecutive again: the
//! same as stride 1 on the tap's plane, when `Wo` is the planes' width. The
//! values are those of `im2col` then packing, so the product gives the same
//! bits.
//!
//! ```text
//! row kk = (c·kh + i)·kw + j,  shift = off_i·W + off_j
//! chunk q: lanes p = 16q .. 16q + 16 of the tile's columns
//!   mask  = rows valid for tap i (a range of p)  &  columns valid for tap j (p mod W)
//!   panel[index(kk, 16q) ..][..16] = maskz_load(mask, plane + start·W + shift + 16q)
//! ```

use cnn_tensor::scratch::Scratch as Pooled;
use cnn_tensor::Float;

use crate::im2col::TapRanges;
use crate::ConvGeometry;

/// Whether [`Im2colPanels`] computes `g`'s column matrix: the output as wide
/// as the input's phase planes (`Wo = ⌈W / sw⌉`: the input itself at stride
/// 1), not pointwise (a 1×1 conv's input is its own column matrix).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.wo == g.w.div_ceil(g.opts.stride[1]) && !g.is_pointwise()
}

/// One row `kk` of the column matrix: where lane 0 of the tile reads (lane
/// `p` reads `plane[start·W + p + shift]`; masked-off lanes may point outside
/// the plane, so the address is formed wrapping), the lanes in valid output
/// rows `lo..hi`, and the kernel column (which column masks apply).
#[derive(Clone, Copy)]
struct TapRow {
    src: *const f32,
    valid: (usize, usize),
    kx: usize,
}

/// The im2col matrix of channels `c0 .. c0 + C_in/groups` of one sample,
/// output rows `out_rows`, as a producer of the product's right-operand
/// panels: [`Im2colPanels::fill`] is `gemm_panels_by`'s `fill`.
pub(crate) struct Im2colPanels<'a> {
    rows: Vec<TapRow>,
    /// Per kernel column, one period of the lanes' column masks.
    col_masks: Vec<u16>,
    /// Chunks of 16 lanes after which the column masks repeat: lcm(Wo, 16) / 16.
    period: usize,
    /// Whether the SIMD level is AVX-512 (one masked 512-bit load a chunk),
    /// not AVX2 (two masked 256-bit loads).
    wide: bool,
    /// With a stride: the group's input split into phase planes, which the
    /// rows point into.
    _phases: Option<Pooled<f32>>,
    /// The input the rows point into, borrowed while they are read.
    _x: std::marker::PhantomData<&'a [f32]>,
}

// SAFETY: the row pointers are only read through (by `fill`), into the
// borrowed input or the owned phase planes, which nothing writes while the
// producer lives; tasks that fill panels of one tile side by side share it.
unsafe impl Sync for Im2colPanels<'_> {}

impl<'a> Im2colPanels<'a> {
    /// The producer for channels `c0 ..` of sample `x` (`[c_in, h, w]`), output
    /// rows `out_rows`; `None` when `T` is not f32, the SIMD level is below
    /// AVX2 or `g` is not one [`applies`] to (then the plain path runs).
    pub(crate) fn new<T: Float>(
        g: &ConvGeometry,
        taps: &TapRanges,
        x: &'a [T],
        c0: usize,
        out_rows: std::ops::Range<usize>,
    ) -> Option<Self> {
        let level = cnn_tensor::simd::level();
        if !cfg!(target_arch = "x86_64") || level < cnn_tensor::simd::SimdLevel::Avx2 || !applies(g)
        {
            return None;
        }
        let x = T::as_f32(x)?;
        let [sh, sw] = g.opts.stride;
        let plane_len = g.h * g.w;
        assert!(x.len() >= (c0 + g.c_in_g()) * plane_len, "x holds the group's channels");
        // With a stride, input (ih, iw) = (sh·a + r, sw·b + s) goes to phase
        // plane (r, s) at (a, b): planes of ⌈H/sh⌉ × ⌈W/sw⌉ = · × Wo, in which a
        // tap's inputs for consecutive outputs are consecutive again.
        let (ph, pw) = (g.h.div_ceil(sh), g.w.div_ceil(sw));
        let wo = g.wo;
        // Only the phase rows this tile's taps reach: a = oh + ⌊off_i / sh⌋.
        let da = |off: isize| off.div_euclid(sh as isize);
        let (da_lo, da_hi) = taps
            .rows
            .iter()
            .fold((isize::MAX, isize::MIN), |(lo, hi), r| (lo.min(da(r.0)), hi.max(da(r.0))));
        let a0 = (out_rows.start as isize + da_lo).clamp(0, ph as isize) as usize;
        let a1 = (out_rows.end as isize + da_hi).clamp(a0 as isize, ph as isize) as usize;
        let (phases, plane_len, a0) = if sh * sw > 1 {
            (Some(split_phases(x, g, c0, a0..a1, pw)), (a1 - a0) * pw, a0)
        } else {
            (None, plane_len, 0)
        };
        let base = phases.as_ref().map_or(x.as_ptr().wrapping_add(c0 * g.h * g.w), |p| p.as_ptr());
        // Lanes of chunk q whose output column ow = p mod Wo reads inside the
        // image, per kernel column. The tile starts on a row, so the pattern
        // repeats every lcm(Wo, 16) columns; lanes past the tile's last column
        // are off by the rows' mask.
        let period = wo / gcd(wo, 16);
        let mut col_masks = vec![0u16; taps.cols.len() * period];
        for (masks, &(_, lo, hi)) in col_masks.chunks_mut(period).zip(&taps.cols) {
            let mut ow = 0;
            for m in masks.iter_mut() {
                for l in 0..16 {
                    *m |= u16::from(ow >= lo && ow < hi) << l;
                    ow = if ow + 1 == wo { 0 } else { ow + 1 };
                }
            }
        }
        let mut rows = Vec::with_capacity(g.col_rows());
        for cc in 0..g.c_in_g() {
            for &(oh_off, oh_lo, oh_hi) in &taps.rows {
                let (first, last) = (out_rows.start.max(oh_lo), out_rows.end.min(oh_hi));
                let valid = if first < last {
                    ((first - out_rows.start) * wo, (last - out_rows.start) * wo)
                } else {
                    (0, 0)
                };
                let (r, da) = (oh_off.rem_euclid(sh as isize), oh_off.div_euclid(sh as isize));
                for (kx, &(ow_off, _, _)) in taps.cols.iter().enumerate() {
                    let (s, db) = (ow_off.rem_euclid(sw as isize), ow_off.div_euclid(sw as isize));
                    let plane = ((cc * sh + r as usize) * sw + s as usize) * plane_len;
                    let shift = (out_rows.start as isize + da - a0 as isize) * pw as isize + db;
                    let src = base.wrapping_add(plane).wrapping_offset(shift);
                    rows.push(TapRow { src, valid, kx });
                }
            }
        }
        Some(Im2colPanels {
            rows,
            col_masks,
            period,
            wide: level >= cnn_tensor::simd::SimdLevel::Avx512,
            _phases: phases,
            _x: std::marker::PhantomData,
        })
    }

    /// Rows `k0 .. k0 + kc` of columns `panel·NR ..` of the column matrix
    /// into `buf` (`kc·NR` values, `NR = buf.len() / kc`, a multiple of 16),
    /// row by row; 0 past the tile's last column.
    pub(crate) fn fill<T: Float>(&self, panel: usize, k0: usize, kc: usize, buf: &mut [T]) {
        let out = T::as_f32_mut(buf).expect("a producer exists only for f32");
        let nv = out.len() / kc / 16;
        assert_eq!(out.len(), kc * nv * 16, "whole rows of 16-lane chunks");
        let rows = &self.rows[k0..k0 + kc];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F when `wide`, else AVX2 (the level checked in
        // `new`); every row's enabled lanes read inside its plane of the borrowed
        // input (see `x86::fill`); `out` holds kc·16·nv.
        unsafe {
            if self.wide {
                x86::fill(rows, &self.col_masks, self.period, panel * nv, nv, out)
            } else {
                x86::fill_avx2(rows, &self.col_masks, self.period, panel * nv, nv, out)
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (rows, panel);
    }
}

/// Rows `rows` of the phase planes of channels `c0 ..` of the group of `x`:
/// `[C_in/G, sh, sw, rows, ⌈W/sw⌉]`, `(r, s)[a, b] = x[sh·a + r, sw·b + s]`,
/// 0 past the input's edge (never read: such taps are masked off).
fn split_phases(
    x: &[f32],
    g: &ConvGeometry,
    c0: usize,
    rows: std::ops::Range<usize>,
    pw: usize,
) -> Pooled<f32> {
    let [sh, sw] = g.opts.stride;
    let (h, w) = (g.h, g.w);
    let mut out = Pooled::<f32>::take(g.c_in_g() * sh * sw * rows.len() * pw);
    let buf = out.vec_mut();
    let mut at = 0;
    for cc in 0..g.c_in_g() {
        let plane = &x[(c0 + cc) * h * w..][..h * w];
        for r in 0..sh {
            for s in 0..sw {
                for a in rows.clone() {
                    let dst = &mut buf[at..at + pw];
                    at += pw;
                    let ih = sh * a + r;
                    if ih >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih * w..(ih + 1) * w];
                    for (b, d) in dst.iter_mut().enumerate() {
                        *d = src.get(sw * b + s).copied().unwrap_or(0.0);
                    }
                }
            }
        }
    }
    out
}

/// Greatest common divisor.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::TapRow;

    /// The lanes `l < 16` with `lo ≤ p0 + l < hi`.
    fn range_mask(p0: usize, lo: usize, hi: usize) -> u16 {
        let a = lo.saturating_sub(p0).min(16);
        let b = hi.saturating_sub(p0).min(16);
        let upto = |n: usize| ((1u32 << n) - 1) as u16;
        upto(b) & !upto(a)
    }

    /// The lane mask and the address of lane 0 of each 16-lane chunk
    /// `q0 .. q0 + nv` of each row in `rows`, row after row, handed to
    /// `chunk` in that order (the walk both register widths share).
    #[inline(always)]
    fn for_each_chunk(
        rows: &[TapRow],
        col_masks: &[u16],
        period: usize,
        (q0, nv): (usize, usize),
        mut chunk: impl FnMut(u16, *const f32),
    ) {
        let phase0 = q0 % period;
        for row in rows {
            let masks = &col_masks[row.kx * period..(row.kx + 1) * period];
            let (p_lo, p_hi) = row.valid;
            let mut phase = phase0;
            for q in q0..q0 + nv {
                let mut mask = masks[phase];
                phase = if phase + 1 == period { 0 } else { phase + 1 };
                if 16 * q < p_lo || 16 * q + 16 > p_hi {
                    mask &= range_mask(16 * q, p_lo, p_hi);
                }
                chunk(mask, row.src.wrapping_add(16 * q));
            }
        }
    }

    /// Chunks `q0 .. q0 + nv` of each row in `rows` into `out`, row after row.
    ///
    /// # Safety
    /// The CPU has AVX-512F; each row's lanes `p` in its valid range whose
    /// column mask is set read inside the plane its `src` was made from;
    /// `out` holds `rows.len()·16·nv` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fill(
        rows: &[TapRow],
        col_masks: &[u16],
        period: usize,
        q0: usize,
        nv: usize,
        out: &mut [f32],
    ) {
        assert!(out.len() >= rows.len() * 16 * nv, "room for every chunk");
        let mut dst = out.as_mut_ptr();
        for_each_chunk(rows, col_masks, period, (q0, nv), |mask, src| {
            // SAFETY: the enabled lanes p (valid output row and column for this tap)
            // read plane[(oh + off_i)·W + ow + off_j] inside the plane; disabled
            // lanes are not accessed. `dst` moves 16 values at a time through
            // `out`, which holds 16 per chunk of every row (asserted above).
            unsafe {
                _mm512_storeu_ps(dst, _mm512_maskz_loadu_ps(mask, src));
                dst = dst.add(16);
            }
        });
    }

    /// [`fill`] in 256-bit registers: each 16-lane chunk as two masked
    /// loads of 8 (`vmaskmovps`, which does not touch masked-off lanes
    /// and writes 0 in them); the same values.
    ///
    /// # Safety
    /// The CPU has AVX2; otherwise as [`fill`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill_avx2(
        rows: &[TapRow],
        col_masks: &[u16],
        period: usize,
        q0: usize,
        nv: usize,
        out: &mut [f32],
    ) {
        assert!(out.len() >= rows.len() * 16 * nv, "room for every chunk");
        // Lane l of a half tests bit l of its 8 mask bits.
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let lanes = |m: u16| {
            let m = _mm256_and_si256(_mm256_set1_epi32(i32::from(m)), bits);
            _mm256_cmpeq_epi32(m, bits)
        };
        let mut dst = out.as_mut_ptr();
        for_each_chunk(rows, col_masks, period, (q0, nv), |mask, src| {
            // SAFETY: as in `fill`: the enabled lanes read inside the plane and
            // `vmaskmovps` does not access the disabled ones; `dst` moves 16
            // values at a time through `out`, which holds 16 per chunk of every row.
            unsafe {
                let lo = _mm256_maskload_ps(src, lanes(mask & 0xff));
                let hi = _mm256_maskload_ps(src.wrapping_add(8), lanes(mask >> 8));
                _mm256_storeu_ps(dst, lo);
                _mm256_storeu_ps(dst.add(8), hi);
                dst = dst.add(16);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im2col::im2col;
    use crate::Conv2dOptions;
    use cnn_tensor::PackedLhs;
    use ndarray::Array2;

    /// The panels, produced slab by slab and panel by panel into the whole
    /// packed operand, hold the plain im2col's values (placed by
    /// `RhsPanels::index`), and the padding columns are 0: for kernels 1×3 to 5×5, paddings that
    /// keep the width (also asymmetric in the kernel's own sense: 1×3 with
    /// padding [1, 1] keeps it, 3×3 with [0, 1] too), a dilation of 2, maps
    /// narrower than a lane row and wider than a panel, tiles of rows that
    /// start at 0 and inside the map, groups, k over one slab (> 1024), and
    /// strides 2 and 3 (square, and along the rows only). For f64 there is
    /// no producer; a stride whose output is narrower than the phase planes
    /// is not taken.
    /// The AVX2 fill (two masked 8-lane loads a chunk) and the AVX-512 one
    /// (one 16-lane load) both pass the test below: it runs again at each
    /// SIMD level this CPU has.
    #[test]
    fn every_simd_level_fills_the_plain_im2col() {
        for level in cnn_tensor::simd::levels() {
            cnn_tensor::simd::rerun_tests(
                "panels_hold_the_plain_im2col",
                &[("CNN_SIMD", level.name())],
            )
            .unwrap();
        }
    }

    #[test]
    fn panels_hold_the_plain_im2col() {
        /// (c_in, width, kernel, padding, dilation, groups, c_out, stride)
        type Case = (usize, usize, [usize; 2], [usize; 2], usize, usize, usize, [usize; 2]);
        let cases: [Case; 12] = [
            (3, 32, [3, 3], [1, 1], 1, 1, 16, [1, 1]),
            (16, 7, [3, 3], [1, 1], 1, 1, 16, [1, 1]),
            (4, 9, [5, 5], [2, 2], 1, 2, 8, [1, 1]),
            (2, 20, [1, 3], [0, 1], 1, 1, 8, [1, 1]),
            (3, 12, [3, 3], [0, 1], 1, 1, 4, [1, 1]),
            (2, 11, [3, 3], [2, 2], 2, 1, 4, [1, 1]),
            (120, 6, [3, 3], [1, 1], 1, 1, 8, [1, 1]),
            // Strided, through phase planes: ResNet's downsampling 3×3, the
            // 7×7 stem, odd maps, stride 3, a stride along one axis only.
            (4, 32, [3, 3], [1, 1], 1, 1, 8, [2, 2]),
            (3, 20, [7, 7], [3, 3], 1, 1, 8, [2, 2]),
            (2, 9, [3, 3], [1, 1], 1, 1, 4, [2, 2]),
            (2, 9, [3, 3], [0, 0], 1, 1, 4, [3, 3]),
            (2, 10, [3, 3], [1, 1], 1, 1, 4, [2, 1]),
        ];
        for (c_in, side, [kh, kw], padding, dilation, groups, c_out, stride) in cases {
            let h = if kh == 1 { side / 2 } else { side };
            let mut opts = Conv2dOptions::default().with_dilation(dilation);
            opts.padding = padding;
            opts.groups = groups;
            opts.stride = stride;
            let g = ConvGeometry::new(&[1, c_in, h, side], &[c_out, c_in / groups, kh, kw], &opts)
                .unwrap();
            assert!(applies(&g), "case {c_in} {side} {kh}x{kw}: {:?}", (g.ho, g.wo));
            let x: Vec<f32> = (0..c_in * h * side).map(|i| (i as f32 * 0.37).sin() + 2.0).collect();
            let taps = TapRanges::new(&g);
            let rows = g.col_rows();
            let w_g = PackedLhs::new(Array2::<f32>::zeros((c_out / groups, rows)).view(), 64);
            for tile in [0..g.ho, 1..g.ho.min(4), g.ho / 2..g.ho] {
                let cols = tile.len() * g.wo;
                let mut col = vec![0f32; rows * cols];
                let mut phases = Vec::new();
                for grp in 0..groups {
                    let c0 = grp * g.c_in_g();
                    im2col(&g, &taps, &x, c0, tile.clone(), &mut col, cols, &mut phases);
                    let Some(panels) = w_g.rhs_panels(cols) else {
                        return; // no micro-kernel at this SIMD level: no panel layout
                    };
                    let source = Im2colPanels::new(&g, &taps, &x, c0, tile.clone()).unwrap();
                    let mut got = vec![f32::NAN; panels.len()];
                    let nr = panels.width();
                    let mut k0 = 0;
                    while k0 < rows {
                        let (_, kc, start) = panels.slab(k0);
                        for panel in 0..panels.padded_cols() / nr {
                            let at = start + panel * kc * nr;
                            source.fill(panel, k0, kc, &mut got[at..at + kc * nr]);
                        }
                        k0 += kc;
                    }
                    for kk in 0..rows {
                        for p in 0..panels.padded_cols() {
                            let want = if p < cols { col[kk * cols + p] } else { 0.0 };
                            let v = got[panels.index(kk, p)];
                            assert_eq!(
                                v.to_bits(),
                                want.to_bits(),
                                "{c_in} {kh}x{kw} row {kk} col {p}"
                            );
                        }
                    }
                    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
                    assert!(Im2colPanels::new(&g, &taps, &x64, c0, tile.clone()).is_none());
                    let mut narrow = opts;
                    narrow.padding = [0, 0];
                    narrow.stride = [2, 2];
                    let gn = ConvGeometry::new(
                        &[1, c_in, 12, 12],
                        &[c_out, c_in / groups, 5, 5],
                        &narrow,
                    )
                    .unwrap();
                    assert!(!applies(&gn), "4 outputs on phase planes 6 wide");
                }
            }
        }
    }
}
