//! [`crate::gemm_nt`] under a bf16 scope: the weight gradients' product in
//! 16 lanes of bf16 pairs, with nothing packed.
//!
//! **The definition** ([`gemm_nt_lanes_bf16`]). Each output sums the shared
//! axis in 16 lanes, lane `l` over the positions `≡ l mod 16` in order, as
//! the f32 lanes of [`crate::gemm_nt_lanes`] do, but each step is
//! `VDPBF16PS`'s ([`crate::bf16::dot_step`]) on the pair of positions
//! `32g + l` (the high half, added first) and `32g + 16 + l` of each group
//! `g` of 32: the operands rounded to bf16, the positions past `k` (to the
//! group's end) zero, each multiply-add's subnormal result flushed. The
//! lanes are then reduced by [`crate::reduce_lanes`], and `C ← β·C + sum`.
//!
//! Why lanes, when every other bf16 product sums in one chain along `k`
//! ([`crate::bf16::gemm_reference`]): here both operands are rows along the
//! shared axis (`dW = dy · colᵀ`), and a kernel on packed panels needs
//! vectors across rows, so in bf16 the weight gradients packed the
//! transpose of all of `col` (20% of the emulated ResNet-20 step). In lanes
//! a row is read as it lies, as in f32, and the pairs `VDPBF16PS` wants are
//! two vectors of one row.
//!
//! **How it computes**, the same bits at every SIMD level:
//! - AVX512-BF16: both operands converted once to pairs (`[row][g][l]`: the
//!   bf16 of position `32g + l` in the high half, of `32g + 16 + l` in the
//!   low one), then one `VDPBF16PS` per output and group, in the blocks and
//!   chunks of the f32 lane kernel.
//! - AVX2 and AVX-512: both operands rounded once into copies padded with
//!   zeros to whole groups, then the f32 lane kernel, whose chain of fused
//!   multiply-adds on rounded values is `dot_step`'s chain when no flush
//!   can fire ([`crate::bf16::needs_flush`]); when one can (operands whose
//!   smallest values multiply below 2⁻¹¹²), the scalar twin.
//! - Portable: the scalar twin.
//!
//! Error: each output is 16 chains of `⌈k/32⌉` pairs and a 4-level tree,
//! so within `(2⌈k/16⌉ + 4)·u·S` of the exact sum on rounded inputs (`S`
//! the sum of the products' magnitudes), inside the `2k·u·S` that the other
//! bf16 products state.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::bf16::{dot_step, Bf16};
use crate::gemm_nt::{check_dims, reduce_lanes, NT_LANES};
use crate::{Float, Result};

/// Positions of the shared axis per step of the 16 lanes: a pair each.
const GROUP: usize = 2 * NT_LANES;

/// Fast-path runs (tests check that the kernels engage).
#[cfg(test)]
static FAST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `C ← A·Bᵀ + β·C` (`A: [m, k]`, `B: [n, k]`) as [`crate::gemm_nt`]
/// computes it under a bf16 scope where its lanes apply: the definition of
/// those bits (the module's doc) and the scalar twin of the kernels.
/// With `beta == 0`, `C` is written without being read.
///
/// # Errors
/// [`crate::Error::Shape`] when the shapes do not agree.
pub fn gemm_nt_lanes_bf16(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    check_dims(&a, &b, &c)?;
    twin(&a, &b, beta, c);
    Ok(())
}

/// `x` as f32 (`T` is f32 under a bf16 scope: f64 products never round).
fn f32_of<T: Float>(x: T) -> f32 {
    T::as_f32(std::slice::from_ref(&x)).expect("bf16 products are f32")[0]
}

/// The rows of `x` rounded to bf16, each padded with zeros to `k32` values.
fn padded_bf16<T: Float>(x: &ArrayView2<'_, T>, k32: usize) -> Vec<Bf16> {
    let mut out = vec![Bf16::ZERO; x.nrows() * k32];
    for (row, dst) in x.rows().into_iter().zip(out.chunks_exact_mut(k32.max(1))) {
        for (d, &v) in dst.iter_mut().zip(row.iter()) {
            *d = Bf16::from_f32(f32_of(v));
        }
    }
    out
}

/// The definition, step by step (see [`gemm_nt_lanes_bf16`]); shapes checked.
fn twin<T: Float>(
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    beta: T,
    mut c: ArrayViewMut2<'_, T>,
) {
    let k32 = a.ncols().div_ceil(GROUP) * GROUP;
    let (ra, rb) = (padded_bf16(a, k32), padded_bf16(b, k32));
    let beta = f32_of(beta);
    for i in 0..a.nrows() {
        let a_row = &ra[i * k32..(i + 1) * k32];
        for j in 0..b.nrows() {
            let b_row = &rb[j * k32..(j + 1) * k32];
            let mut lanes = [0.0f32; NT_LANES];
            for g in (0..k32).step_by(GROUP) {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    // The pair: index 1 (high, first) is position g + l.
                    let (hi, lo) = (g + l, g + NT_LANES + l);
                    *lane = dot_step(*lane, [a_row[lo], a_row[hi]], [b_row[lo], b_row[hi]]);
                }
            }
            let sum = reduce_lanes(lanes);
            let out = &mut c[[i, j]];
            let value = if beta == 0.0 { sum } else { beta * f32_of(*out) + sum };
            *out = T::of(f64::from(value));
        }
    }
}

/// [`gemm_nt_lanes_bf16`]'s bits by the fastest path this CPU has, for
/// [`crate::gemm_nt`] (which checked the shapes and the rule: rows contiguous).
pub(crate) fn product<T: Float>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    beta: T,
    c: ArrayViewMut2<'_, T>,
) {
    #[cfg(target_arch = "x86_64")]
    let c = match x86::product(&a, &b, beta, c) {
        None => return,
        Some(c) => c,
    };
    twin(&a, &b, beta, c);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::block_pairs_any;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use ndarray::{ArrayView2, ArrayViewMut2};

    use super::{f32_of, GROUP};
    use crate::bf16::{needs_flush, round_and_min_exponent};
    use crate::gemm_nt::x86::{blocks_4x4, finish_512, start_512};
    use crate::gemm_nt::{lanes_f32, Block, LaneKernel, Operand, Out, Span, NT_LANES};
    use crate::scratch::Scratch;
    use crate::simd::{level, SimdLevel};
    use crate::Float;

    /// The lanes in a kernel: pairs and `VDPBF16PS` at AVX512-BF16, the f32
    /// lanes on rounded copies at AVX2 and AVX-512 when no flush can fire.
    /// Gives `c` back when neither runs (the twin then computes).
    pub(super) fn product<'c, T: Float>(
        a: &ArrayView2<'_, T>,
        b: &ArrayView2<'_, T>,
        beta: T,
        mut c: ArrayViewMut2<'c, T>,
    ) -> Option<ArrayViewMut2<'c, T>> {
        let ((m, k), n) = (a.dim(), b.nrows());
        let level = level();
        if level < SimdLevel::Avx2 || m == 0 || n == 0 || k == 0 {
            return Some(c);
        }
        let k32 = k.div_ceil(GROUP) * GROUP;
        let (ra, ea) = rounded_rows(a, k32);
        let (rb, eb) = rounded_rows(b, k32);
        let native = level >= SimdLevel::Avx512Bf16;
        if !native && needs_flush(ea, eb) {
            return Some(c);
        }
        #[cfg(test)]
        super::FAST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (rsc, csc) = (c.strides()[0], c.strides()[1]);
        let out = Out { ptr: c.as_mut_ptr().cast(), rsc, csc };
        let beta = f32_of(beta);
        let operand =
            |ptr: *const f32, rows: usize, len: usize| Operand { ptr, rows, stride: len as isize };
        if native {
            let (pa, pb) = (pairs_of(&ra, k32), pairs_of(&rb, k32));
            let kp = k32 / 2;
            // SAFETY: the level has AVX512-BF16; `pa` (`pb`) holds m (n) rows of
            // kp pairs, kp a multiple of 16; `c` is f32 (T is, under a bf16
            // scope), a unique view of m × n values at (rsc, csc).
            unsafe {
                lanes_f32(
                    operand(pa.as_ptr().cast(), m, kp),
                    operand(pb.as_ptr().cast(), n, kp),
                    kp,
                    beta,
                    out,
                    LaneKernel::Bf16Pairs,
                );
            }
        } else {
            // SAFETY: the level has AVX2; `ra` (`rb`) holds m (n) rows of k32
            // values; `c` as above.
            unsafe {
                lanes_f32(
                    operand(ra.as_ptr(), m, k32),
                    operand(rb.as_ptr(), n, k32),
                    k32,
                    beta,
                    out,
                    LaneKernel::F32,
                );
            }
        }
        None
    }

    /// The rows of `x` (contiguous) copied, padded with zeros to `k32`
    /// values and rounded to bf16, with their smallest exponent
    /// ([`round_and_min_exponent`]).
    fn rounded_rows<T: Float>(x: &ArrayView2<'_, T>, k32: usize) -> (Scratch<f32>, u32) {
        let (rows, k) = x.dim();
        // Written whole below: each row's k values, then zeros.
        let mut buf = Scratch::<f32>::take(rows * k32);
        let mut min_exp = u32::MAX;
        for (row, dst) in x.rows().into_iter().zip(buf.chunks_exact_mut(k32)) {
            let row = row.to_slice().expect("rows are contiguous (gemm_nt's rule)");
            dst[..k].copy_from_slice(T::as_f32(row).expect("bf16 products are f32"));
            dst[k..].fill(0.0);
            // Rounded row by row, while the row is in L1 (rounding the whole
            // copy afterwards read it back from memory: a second pass).
            min_exp = min_exp.min(round_and_min_exponent(&mut dst[..k]));
        }
        (buf, min_exp.min(255))
    }

    /// Rounded rows of `k32` values as rows of `k32 / 2` pairs: pair `16g + l`
    /// holds position `32g + l` in its high half, `32g + 16 + l` in its low.
    pub(super) fn pairs_of(rounded: &[f32], k32: usize) -> Scratch<u32> {
        let rows = rounded.len() / k32.max(1);
        // Written whole below.
        let mut out = Scratch::<u32>::take(rows * k32 / 2);
        for (src, dst) in rounded.chunks_exact(GROUP).zip(out.chunks_exact_mut(NT_LANES)) {
            for (l, d) in dst.iter_mut().enumerate() {
                *d = (src[l].to_bits() & 0xFFFF_0000) | (src[NT_LANES + l].to_bits() >> 16);
            }
        }
        out
    }

    /// Dispatches a `bm × bn` block (at most 4 × 4) to its pair kernel.
    ///
    /// # Safety
    /// As [`block_pairs`].
    pub(crate) unsafe fn block_pairs_any(bm: usize, bn: usize, blk: &Block, span: &Span) {
        // SAFETY: the caller's contract, for the block shape it names.
        unsafe { blocks_4x4!(block_pairs, bm, bn, blk, span) }
    }

    /// One `MR × NR` block over one chunk of pairs: one `VDPBF16PS` per
    /// output and 16 pairs (32 positions), each output's 16 lanes in one
    /// register, reduced as the f32 kernel reduces.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `blk.a` (`blk.b`) addresses `MR` (`NR`) rows
    /// of pairs, `lda` (`ldb`) apart, readable over `span`, whose length is
    /// a multiple of 16; the partials and `C` as [`lanes_f32`] sets them.
    #[allow(clippy::needless_range_loop)] // as in the f32 kernels
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block_pairs<const MR: usize, const NR: usize>(blk: &Block, span: &Span) {
        let as_bh = |v: __m512| {
            // SAFETY: __m512 and __m512bh are both 512 plain bits.
            unsafe { std::mem::transmute::<__m512, __m512bh>(v) }
        };
        let a: [*const f32; MR] =
            std::array::from_fn(|i| blk.a.wrapping_offset(i as isize * blk.lda));
        let b: [*const f32; NR] =
            std::array::from_fn(|j| blk.b.wrapping_offset(j as isize * blk.ldb));
        // SAFETY: the caller's contract on the block's partials.
        let mut acc = unsafe { start_512::<MR, NR>(blk, span) };
        debug_assert_eq!((span.end - span.start) % NT_LANES, 0, "whole groups of pairs");
        let mut p = span.start;
        while p < span.end {
            // SAFETY: pairs p..p + 16 ≤ span.end lie inside every row.
            let av: [__m512bh; MR] =
                std::array::from_fn(|i| as_bh(unsafe { _mm512_loadu_ps(a[i].add(p)) }));
            for j in 0..NR {
                // SAFETY: as above.
                let bv = as_bh(unsafe { _mm512_loadu_ps(b[j].add(p)) });
                for i in 0..MR {
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av[i], bv);
                }
            }
            p += NT_LANES;
        }
        // SAFETY: the caller's contract on the block's partials and C.
        unsafe { finish_512(blk, span, &acc) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::{with_precision, Precision};
    use crate::simd::SimdLevel;
    use ndarray::{s, Array2};
    use std::sync::atomic::Ordering;

    /// N(0, 1) values scaled by 2⁻¹²…2¹²: sums of their bf16 products round
    /// in f32 (of N(0, 1) alone, a lane's few products often sum exactly,
    /// and then no order of the sums shows).
    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = crate::random::seeded_rng(seed);
        let v = crate::random::normal::<f32, _>(&[rows * cols], 0.0, 1.0, &mut rng);
        let v = v.into_raw_vec_and_offset().0.into_iter().enumerate().map(|(i, x)| {
            let scale = ((i as u64 * 2_654_435_761 + seed) >> 7) % 25;
            x * 2f32.powi(scale as i32 - 12)
        });
        Array2::from_shape_vec((rows, cols), v.collect()).unwrap()
    }

    fn same_bits(got: &Array2<f32>, want: &Array2<f32>, what: &str) {
        let diff = got.iter().zip(want).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(diff, 0, "{what}: {diff} outputs differ");
    }

    /// The kernels (pairs at AVX512-BF16, the f32 lanes on rounded copies at
    /// AVX2 and AVX-512) give the twin's bits: shared axes around the
    /// groups of 32 and 16 (1, 16, 31, 32, 33), long enough for several
    /// chunks, every block remainder, β = 0 (NaN in C unread), 1 and 0.5,
    /// rows inside wider matrices, and a transposed output view.
    #[test]
    fn kernels_equal_the_twin_bitwise() {
        let fast_level = crate::simd::level() >= SimdLevel::Avx2;
        let before = FAST.load(Ordering::Relaxed);
        for (s, (m, n, k)) in [
            (1, 1, 1),
            (2, 3, 16),
            (5, 7, 31),
            (3, 2, 32),
            (4, 5, 33),
            (9, 4, 200),
            (16, 144, 300),
            (3, 1, 20000),
            (7, 2, 9000),
        ]
        .into_iter()
        .enumerate()
        {
            let (wide_a, wide_b) = (matrix(m, k + 5, s as u64), matrix(n, k + 3, s as u64 + 50));
            let (a, b) = (wide_a.slice(s![.., 2..k + 2]), wide_b.slice(s![.., ..k]));
            for beta in [0.0f32, 1.0, 0.5] {
                let start = if beta == 0.0 { f32::NAN } else { 0.25 };
                let mut want = Array2::from_elem((m, n), start);
                gemm_nt_lanes_bf16(a, b, beta, want.view_mut()).unwrap();
                let mut got = Array2::from_elem((m, n), start);
                product(a, b, beta, got.view_mut());
                same_bits(&got, &want, &format!("{m}x{n}x{k} beta {beta}"));
            }
            let mut want = Array2::<f32>::zeros((m, n));
            gemm_nt_lanes_bf16(a, b, 0.0, want.view_mut()).unwrap();
            let mut got_t = Array2::<f32>::zeros((n, m));
            product(a, b, 0.0, got_t.view_mut().reversed_axes());
            same_bits(&got_t.t().to_owned(), &want, &format!("{m}x{n}x{k} transposed"));
        }
        let ran = FAST.load(Ordering::Relaxed) - before;
        // 9 shapes × 4 products: the kernels engaged on every one.
        assert_eq!(ran >= 36, fast_level, "fast path ran {ran} times");
    }

    /// Operands so small that partial sums turn subnormal: the flushes
    /// change the bits (against the f32 lanes on the same rounded values),
    /// so the f32 lanes must not run, and the result is the twin's.
    #[test]
    fn sums_through_subnormals_keep_the_flushes() {
        let (m, n, k) = (3, 4, 64);
        let a = matrix(m, k, 1).mapv(|v| v * 1e-20);
        let b = matrix(n, k, 2).mapv(|v| v * 1e-19);
        let mut want = Array2::<f32>::zeros((m, n));
        gemm_nt_lanes_bf16(a.view(), b.view(), 0.0, want.view_mut()).unwrap();
        let (ar, br) = (a.mapv(crate::bf16::round_f32), b.mapv(crate::bf16::round_f32));
        let mut unflushed = Array2::<f32>::zeros((m, n));
        crate::gemm_nt_lanes(ar.view(), br.view(), 0.0, unflushed.view_mut()).unwrap();
        assert_ne!(want, unflushed, "the flushes matter for these operands");
        let before = FAST.load(Ordering::Relaxed);
        let mut got = Array2::<f32>::zeros((m, n));
        product(a.view(), b.view(), 0.0, got.view_mut());
        same_bits(&got, &want, "subnormal sums");
        let native = crate::simd::level() >= SimdLevel::Avx512Bf16;
        assert_eq!(FAST.load(Ordering::Relaxed) > before, native, "only VDPBF16PS flushes");
    }

    /// The pair layout is the definition's, on any CPU: a scalar reading of
    /// the pairs, one `dot_step` per pair as `VDPBF16PS` takes it (high half
    /// first), reduced by the tree, gives the twin's bits.
    #[test]
    fn pairs_hold_the_definitions_order() {
        for (m, n, k) in [(2, 3, 1), (3, 2, 33), (4, 4, 100), (1, 5, 32)] {
            let (a, b) = (matrix(m, k, 7), matrix(n, k, 8));
            let mut want = Array2::<f32>::zeros((m, n));
            gemm_nt_lanes_bf16(a.view(), b.view(), 0.0, want.view_mut()).unwrap();
            let k32 = k.div_ceil(GROUP) * GROUP;
            let rounded = |x: &Array2<f32>| {
                let mut r = vec![0.0f32; x.nrows() * k32];
                for (row, dst) in x.rows().into_iter().zip(r.chunks_exact_mut(k32)) {
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = crate::bf16::round_f32(v);
                    }
                }
                r
            };
            let (pa, pb) = (x86::pairs_of(&rounded(&a), k32), x86::pairs_of(&rounded(&b), k32));
            let half = |w: u32, high: bool| Bf16::from_bits(if high { w >> 16 } else { w } as u16);
            let kp = k32 / 2;
            let mut got = Array2::<f32>::zeros((m, n));
            for i in 0..m {
                for j in 0..n {
                    let mut lanes = [0.0f32; NT_LANES];
                    for q in 0..kp {
                        let (wa, wb) = (pa[i * kp + q], pb[j * kp + q]);
                        let lane = &mut lanes[q % NT_LANES];
                        let pair = |w| [half(w, false), half(w, true)];
                        *lane = dot_step(*lane, pair(wa), pair(wb));
                    }
                    got[[i, j]] = reduce_lanes(lanes);
                }
            }
            same_bits(&got, &want, &format!("pairs {m}x{n}x{k}"));
        }
    }

    /// The twin is the product on rounded inputs, within its stated bound
    /// `(2⌈k/16⌉ + 4)·u·S`; and the lanes are not the one chain of `k`
    /// ([`crate::bf16::gemm_reference`]), which sums otherwise.
    #[test]
    fn twin_is_the_product_within_its_bound() {
        let (m, n, k) = (5, 6, 1000);
        let (a, b) = (matrix(m, k, 3), matrix(n, k, 4));
        let mut c = Array2::<f32>::zeros((m, n));
        gemm_nt_lanes_bf16(a.view(), b.view(), 0.0, c.view_mut()).unwrap();
        let r = |x: &Array2<f32>| x.mapv(|v| f64::from(crate::bf16::round_f32(v)));
        let (a64, b64) = (r(&a), r(&b));
        let exact = a64.dot(&b64.t());
        let s = a64.mapv(f64::abs).dot(&b64.mapv(f64::abs).t());
        let u = f64::from(f32::EPSILON) / 2.0;
        let factor = (2 * k.div_ceil(16) + 4) as f64 * u;
        for ((&got, &want), &s) in c.iter().zip(&exact).zip(&s) {
            assert!((f64::from(got) - want).abs() <= factor * s, "{got} vs {want}");
        }
        let mut chain = Array2::<f32>::zeros((m, n));
        crate::bf16::gemm_reference(a.view(), b.t(), 0.0, chain.view_mut()).unwrap();
        assert_ne!(c, chain);
    }

    /// `gemm_nt` in a bf16 scope: the lanes where the rule takes them (at
    /// every level, portable included), else the one chain of `k`.
    #[test]
    fn gemm_nt_in_bf16_takes_the_lanes_by_shape_alone() {
        for (m, n, k, lanes) in [(16, 144, 300, true), (4, 3, 50, false), (300, 400, 300, false)] {
            let (a, b) = (matrix(m, k, 5), matrix(n, k, 6));
            let takes = with_precision(Precision::Bf16, || {
                crate::gemm_nt_uses_kernel(&a.view(), &b.view())
            });
            assert_eq!(takes, lanes, "{m}x{n}x{k}");
            let mut got = Array2::<f32>::zeros((m, n));
            with_precision(Precision::Bf16, || {
                crate::gemm_nt(a.view(), b.view(), 0.0, got.view_mut()).unwrap()
            });
            let mut want = Array2::<f32>::zeros((m, n));
            if lanes {
                gemm_nt_lanes_bf16(a.view(), b.view(), 0.0, want.view_mut()).unwrap();
            } else {
                crate::bf16::gemm_reference(a.view(), b.t(), 0.0, want.view_mut()).unwrap();
            }
            same_bits(&got, &want, &format!("gemm_nt {m}x{n}x{k}"));
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let (a, b) = (Array2::<f32>::zeros((2, 5)), Array2::<f32>::zeros((3, 4)));
        let mut c = Array2::<f32>::zeros((2, 3));
        let err = gemm_nt_lanes_bf16(a.view(), b.view(), 0.0, c.view_mut()).unwrap_err();
        assert!(err.to_string().contains("A is 2x5, B is 3x4"), "{err}");
    }

    /// The tests above again in a child process per SIMD level.
    #[test]
    fn every_simd_level_gives_the_twins_bits() {
        for level in crate::simd::levels() {
            for filter in
                ["kernels_equal_the_twin", "keep_the_flushes", "takes_the_lanes_by_shape_alone"]
            {
                crate::simd::rerun_tests(filter, &[("CNN_SIMD", level.name())]).unwrap();
            }
        }
    }
}
