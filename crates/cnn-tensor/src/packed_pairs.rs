//! The bf16 products on AVX512-BF16: operands as pairs of bf16 along the
//! shared axis, multiplied and summed into f32 lanes by `VDPBF16PS` (two
//! multiply-adds per lane per instruction, half the bytes of f32 panels).
//!
//! The layouts, from the f32 panels of [`crate::packed`] (whose values are
//! already rounded to bf16, so a value's bf16 is its high 16 bits):
//! - `A`: `pairs[(p·kp + j)·MR + r]` holds `A[p·MR + r, 2j]` in its high half
//!   and `A[p·MR + r, 2j + 1]` (zero past `k`) in its low half, `kp = ⌈k/2⌉`;
//! - `B`, one slab of `kc` rows at a time: `pairs[(jn·kcp + j)·NR + l]` holds
//!   rows `2j` (high) and `2j + 1` (low, zero past `kc`) of column `l` of panel
//!   `jn`, `kcp = ⌈kc/2⌉`.
//!
//! The instruction takes each lane's high pair first, so with the earlier
//! `k` in the high half the sum runs in order of `k`: the numbers of
//! [`crate::bf16::gemm_reference`] (its doc states the two subnormal-range
//! caveats). [`micro_pairs_scalar`] is the kernel's data path in plain code
//! ([`crate::bf16::dot_step`] per lane), which the tests run on any CPU.

use std::arch::x86_64::*;

use crate::bf16::{dot_step, Bf16};
use crate::packed::x86::Tile;

/// `A`'s panels (`data`, `⌈m/MR⌉` panels of `k × MR` rounded values) as pairs.
pub(crate) fn lhs_pairs(data: &[f32], k: usize, mr: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let panels = data.len() / (k * mr).max(1);
    let mut pairs = vec![0u32; panels * kp * mr];
    for p in 0..panels {
        let panel = &data[p * k * mr..(p + 1) * k * mr];
        for j in 0..kp {
            for r in 0..mr {
                let high = panel[2 * j * mr + r].to_bits() >> 16;
                let low =
                    if 2 * j + 1 < k { panel[(2 * j + 1) * mr + r].to_bits() >> 16 } else { 0 };
                pairs[(p * kp + j) * mr + r] = high << 16 | low;
            }
        }
    }
    pairs
}

/// `panels` consecutive `B` panels of `kc × nr` rounded values (`src`) as
/// pairs into `dst` (resized to `panels·⌈kc/2⌉·nr`).
pub(crate) fn rhs_pairs(src: &[f32], panels: usize, kc: usize, nr: usize, dst: &mut Vec<u32>) {
    let kcp = kc.div_ceil(2);
    dst.resize(panels * kcp * nr, 0);
    for jn in 0..panels {
        let panel = &src[jn * kc * nr..(jn + 1) * kc * nr];
        let out = &mut dst[jn * kcp * nr..(jn + 1) * kcp * nr];
        for (j, row) in out.chunks_exact_mut(nr).enumerate() {
            let high = &panel[2 * j * nr..(2 * j + 1) * nr];
            if 2 * j + 1 < kc {
                let low = &panel[(2 * j + 1) * nr..(2 * j + 2) * nr];
                for ((d, h), l) in row.iter_mut().zip(high).zip(low) {
                    *d = (h.to_bits() & 0xFFFF_0000) | (l.to_bits() >> 16);
                }
            } else {
                for (d, h) in row.iter_mut().zip(high) {
                    *d = h.to_bits() & 0xFFFF_0000;
                }
            }
        }
    }
}

/// A pair's two bf16 as [`dot_step`] takes them: `[low, high]`.
fn split(pair: u32) -> [Bf16; 2] {
    [Bf16::from_bits(pair as u16), Bf16::from_bits((pair >> 16) as u16)]
}

/// The pair kernel in plain code: `C[mr × nr] (+)= A·B` over `kp` pairs,
/// each lane by [`dot_step`], as `VDPBF16PS` computes it.
///
/// # Safety
/// `a` points to `kp·mr` readable pairs, `b` to `kp·nr`; `t` addresses a
/// writable `t.rows × t.cols` tile (`t.rows ≤ mr`, `t.cols ≤ nr`,
/// `mr·nr ≤ MAX_TILE`) that nothing else accesses meanwhile.
pub(crate) unsafe fn micro_pairs_scalar(
    mr: usize,
    nr: usize,
    kp: usize,
    a: *const u32,
    b: *const u32,
    t: &Tile,
) {
    let mut acc = [0f32; crate::packed::MAX_TILE];
    let acc = &mut acc[..mr * nr];
    // SAFETY: the panels hold kp·mr and kp·nr pairs (the caller's contract).
    let (a, b) =
        unsafe { (std::slice::from_raw_parts(a, kp * mr), std::slice::from_raw_parts(b, kp * nr)) };
    for (a_j, b_j) in a.chunks_exact(mr).zip(b.chunks_exact(nr)) {
        for (row, &ai) in acc.chunks_exact_mut(nr).zip(a_j) {
            for (s, &bl) in row.iter_mut().zip(b_j) {
                *s = dot_step(*s, split(ai), split(bl));
            }
        }
    }
    // SAFETY: the caller's contract on `t`.
    unsafe { t.store_scalar(acc, nr) };
}

/// The AVX512-BF16 kernel of panel shape `(mr, nv)`.
///
/// # Safety
/// The CPU has AVX512-BF16 (with AVX-512F, BW, VL); otherwise as [`micro_pairs_scalar`]
/// with `nr = 16·nv` and `(mr, nv)` one of `PANELS`.
pub(crate) unsafe fn micro_pairs(
    (mr, nv): (usize, usize),
    kp: usize,
    a: *const u32,
    b: *const u32,
    t: &Tile,
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match (mr, nv) {
            (4, 6) => micro_bf16::<4, 6>(kp, a, b, t),
            (8, 3) => micro_bf16::<8, 3>(kp, a, b, t),
            (14, 2) => micro_bf16::<14, 2>(kp, a, b, t),
            (6, 4) => micro_bf16::<6, 4>(kp, a, b, t),
            (16, 1) => micro_bf16::<16, 1>(kp, a, b, t),
            (12, 2) => micro_bf16::<12, 2>(kp, a, b, t),
            (6, 1) => micro_bf16::<6, 1>(kp, a, b, t),
            _ => unreachable!("panel {mr}x{} is not one of PANELS", 16 * nv),
        }
    }
}

/// `C[MR × 16·NV] (+)= A·B` over `kp` pairs: one `VDPBF16PS` per
/// accumulator and pair, `A`'s pair broadcast to every lane.
///
/// # Safety
/// As [`micro_pairs`].
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn micro_bf16<const MR: usize, const NV: usize>(
    kp: usize,
    a: *const u32,
    b: *const u32,
    t: &Tile,
) {
    let as_bh = |v: __m512i| {
        // SAFETY: __m512i and __m512bh are both 512 plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    };
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for j in 0..kp {
        let mut bv = [as_bh(_mm512_setzero_si512()); NV];
        for (v, slot) in bv.iter_mut().enumerate() {
            // SAFETY: the B panel has kp rows of 16·NV pairs.
            *slot = as_bh(unsafe { _mm512_loadu_si512(b.add(j * 16 * NV + 16 * v).cast()) });
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: the A panel has kp columns of MR pairs.
            let ai = as_bh(_mm512_set1_epi32(unsafe { *a.add(j * MR + i) } as i32));
            for v in 0..NV {
                row[v] = _mm512_dpbf16_ps(row[v], ai, bv[v]);
            }
        }
    }
    // SAFETY: the caller's contract on `t`; the CPU has AVX-512F.
    unsafe { t.store_512(&acc) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::{with_precision, Precision};
    use ndarray::Array2;

    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = crate::random::seeded_rng(seed);
        let v = crate::random::normal::<f32, _>(&[rows * cols], 0.0, 1.0, &mut rng);
        Array2::from_shape_vec((rows, cols), v.into_raw_vec_and_offset().0).unwrap()
    }

    /// The pair kernel's data path (pairs of `A` and `B`, slabs, the odd
    /// last pair, the panel offsets) through its scalar twin, on any CPU:
    /// products packed as pairs equal the bf16 reference, bit for bit, by
    /// `gemm_packed` and by `gemm_panels_by`, at every panel shape.
    #[test]
    fn pair_products_are_the_reference() {
        crate::packed::PAIRS_EVERYWHERE.with(|p| p.set(true));
        for (s, &(m, k, n)) in
            [(1, 1, 1), (7, 3, 5), (23, crate::packed::KC + 77, 53), (13, 64, 100), (30, 9, 70)]
                .iter()
                .enumerate()
        {
            let (a, b) = (matrix(m, k, s as u64), matrix(k, n, s as u64 + 50));
            let c0 = matrix(m, n, s as u64 + 99);
            for beta in [0.0f32, 1.0] {
                let mut want = c0.clone();
                crate::bf16::gemm_reference(a.view(), b.view(), beta, want.view_mut()).unwrap();
                for panel in crate::PANELS {
                    let packed = with_precision(Precision::Bf16, || {
                        crate::PackedLhs::with_panel(a.view(), panel).unwrap()
                    });
                    assert!(!packed.pairs.is_empty(), "packed as pairs");
                    let mut c = c0.clone();
                    crate::gemm_packed(&packed, b.view(), beta, c.view_mut(), &mut Vec::new())
                        .unwrap();
                    let what = format!("{m}x{k}x{n} beta {beta} panel {panel:?}");
                    assert_eq!(c.mapv(f32::to_bits), want.mapv(f32::to_bits), "{what}");
                    let nr = 16 * panel.1;
                    let mut c = c0.clone();
                    crate::gemm_panels_by(&packed, n, beta, c.view_mut(), |p, k0, kc, buf| {
                        for r in 0..kc {
                            for l in 0..nr {
                                let col = p * nr + l;
                                buf[r * nr + l] = if col < n { b[[k0 + r, col]] } else { 0.0 };
                            }
                        }
                    })
                    .unwrap();
                    assert_eq!(c.mapv(f32::to_bits), want.mapv(f32::to_bits), "by panels, {what}");
                }
            }
        }
        crate::packed::PAIRS_EVERYWHERE.with(|p| p.set(false));
    }

    #[test]
    fn pairs_put_the_earlier_value_high_and_pad_with_zero() {
        let r = |x: f32| crate::bf16::round_f32(x);
        // One A panel of 2 rows, k = 3.
        let data = [r(1.0), r(2.0), r(3.0), r(4.0), r(5.0), r(6.0)];
        let p = lhs_pairs(&data, 3, 2);
        let bits = |x: f32| x.to_bits() >> 16;
        assert_eq!(
            p,
            [
                bits(1.0) << 16 | bits(3.0),
                bits(2.0) << 16 | bits(4.0),
                bits(5.0) << 16,
                bits(6.0) << 16
            ]
        );
        // One B panel of 3 rows of 2 columns.
        let mut out = Vec::new();
        rhs_pairs(&data, 1, 3, 2, &mut out);
        assert_eq!(
            out,
            [
                bits(1.0) << 16 | bits(3.0),
                bits(2.0) << 16 | bits(4.0),
                bits(5.0) << 16,
                bits(6.0) << 16
            ]
        );
    }
}
