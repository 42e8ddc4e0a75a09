//! bfloat16, the 16-bit float of mixed-precision training (f32's sign and
//! 8-bit exponent, 7 stored mantissa bits), with the arithmetic of the
//! AVX512-BF16 instructions that consume it, written out so that a CPU
//! without them gives the same numbers.
//!
//! **Conversion** from f32 is `VCVTNEPS2BF16`'s: round to nearest, ties to
//! even; a subnormal input becomes zero of its sign (bf16 keeps f32's
//! exponent range, so nothing else underflows); ±Inf stays; a finite value
//! that rounds past the largest bf16 becomes ±Inf; NaN stays NaN (quiet,
//! with its sign and top payload bits). Back to f32 is exact.
//!
//! **The product step** is `VDPBF16PS`'s, per f32 lane, for pairs
//! `(a₀, a₁)` and `(b₀, b₁)`: `acc ← ftz(fma(a₁, b₁, acc))`, then
//! `acc ← ftz(fma(a₀, b₀, acc))`: the high pair first, each a fused
//! multiply-add rounded once to nearest even (the product of two bf16 is
//! exact in f32), a subnormal result flushed to zero of its sign ([`dot_step`]).
//! The kernels put the earlier of two neighbours along the shared axis in
//! the high half, so a product over `k` values is one chain of such
//! multiply-adds in order of `k` ([`dot`]): the same order as the f32
//! kernels, on rounded inputs, with the flush.
//!
//! Two caveats are stated rather than hidden, both about sums that pass
//! through the subnormal range: the instruction decides that a result is
//! subnormal before rounding to the subnormal grid, [`dot_step`] after it,
//! so a result within half a subnormal step below `f32::MIN_POSITIVE` can
//! come out as `MIN_POSITIVE` here and zero there; and for an odd `k` the
//! instruction's last pair adds a `0·0`, which turns a sum that is exactly
//! `-0` (only a flushed negative subnormal gives one) into `+0`. Sums of
//! products of the magnitudes a network holds never come near 1e-38.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::{Error, Result};

/// A bfloat16 value, stored as its 16 bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(u16);

impl Bf16 {
    /// +0.
    pub const ZERO: Bf16 = Bf16(0);

    /// The value with these bits.
    pub const fn from_bits(bits: u16) -> Bf16 {
        Bf16(bits)
    }

    /// Its bits.
    pub const fn to_bits(self) -> u16 {
        self.0
    }

    /// `x` rounded as `VCVTNEPS2BF16` rounds it (see the module's doc).
    #[inline(always)]
    pub fn from_f32(x: f32) -> Bf16 {
        let bits = x.to_bits();
        let magnitude = bits & 0x7FFF_FFFF;
        let sign = (bits >> 16) as u16 & 0x8000;
        if magnitude < 0x0080_0000 {
            // Zero or subnormal: zero of the same sign.
            Bf16(sign)
        } else if magnitude > 0x7F80_0000 {
            // NaN: truncated, made quiet (a truncated signalling NaN could read as Inf).
            Bf16((bits >> 16) as u16 | 0x0040)
        } else {
            // Normal or Inf: round to nearest even by adding 0x7FFF plus the
            // kept lowest bit; a carry into the exponent is the right result
            // (the next binade, or Inf past the largest finite value), and
            // Inf's low half is zero, so it stays Inf.
            let lsb = (bits >> 16) & 1;
            Bf16((bits.wrapping_add(0x7FFF + lsb) >> 16) as u16)
        }
    }

    /// The exact f32 of this value.
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

impl std::fmt::Debug for Bf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}bf16", self.to_f32())
    }
}

impl std::fmt::Display for Bf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.to_f32(), f)
    }
}

/// `x` rounded to the nearest bf16 and back: the value a bf16 path computes
/// with in place of `x` (what error bounds are stated against).
#[inline(always)]
pub fn round_f32(x: f32) -> f32 {
    Bf16::from_f32(x).to_f32()
}

/// Every value of `src` rounded to bf16 into `dst`.
///
/// # Errors
/// [`Error::Shape`] when the lengths differ.
pub fn convert_slice(src: &[f32], dst: &mut [Bf16]) -> Result<()> {
    if src.len() != dst.len() {
        return Err(Error::shape(
            "bf16_convert",
            format!("src has {} values, dst {}: expected the same length", src.len(), dst.len()),
        ));
    }
    convert_into(src, dst);
    Ok(())
}

#[inline(always)]
fn convert_body(src: &[f32], dst: &mut [Bf16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Bf16::from_f32(s);
    }
}

crate::simd_fn! {
    /// [`convert_slice`]'s loop, compiled for each level (integer lanes).
    fn convert_into(src: &[f32], dst: &mut [Bf16]) = convert_body
}

#[inline(always)]
fn round_min_exponent_body(values: &mut [f32]) -> u32 {
    // The key of a value is its biased exponent (`bits >> 23`) taken from
    // `magnitude − 1`: zero becomes 0xFFFF_FFFF, so one unsigned min skips
    // it; a nonzero value whose mantissa bits are all zero gets one less
    // than its exponent, never more, so never a missed flush. 16 lanes of
    // minima, for the vectorizer.
    let key = |v: f32| (v.to_bits() & 0x7FFF_FFFF).wrapping_sub(1) >> 23;
    let mut lanes = [u32::MAX; 16];
    let mut chunks = values.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *v = round_f32(*v);
            *l = (*l).min(key(*v));
        }
    }
    let mut tail = u32::MAX;
    for v in chunks.into_remainder() {
        *v = round_f32(*v);
        tail = tail.min(key(*v));
    }
    lanes.iter().copied().fold(tail, u32::min).min(255)
}

crate::simd_fn! {
    /// Every value rounded to the nearest bf16 in place ([`round_f32`]: the
    /// operands of a bf16 product as the kernels read them), returning the
    /// smallest biased exponent (`bits >> 23`, 1 for the smallest normal) of
    /// the nonzero rounded values, or one less (for a value whose mantissa
    /// bits are all zero), 255 when all are zero: a lower bound that, with
    /// [`needs_flush`], says whether a product can meet a subnormal sum.
    pub fn round_and_min_exponent(values: &mut [f32]) -> u32 = round_min_exponent_body
}

/// Whether a bf16 product of operands whose nonzero values have biased
/// exponents of at least `a` and `b` ([`round_and_min_exponent`])
/// can pass through a subnormal partial sum, so that [`dot`]'s flushes matter.
///
/// Why not otherwise: a nonzero bf16 of exponent `E` is a multiple of
/// `2^(E − 7)`, so every product is a multiple of `q = 2^(Ea + Eb − 14)`
/// (unbiased); a sum of multiples of `q` is one, and rounding it to f32
/// keeps it one (either it is representable, or its ulp exceeds `q`). So
/// every partial sum is zero or at least `q` in magnitude, and when
/// `q ≥ 2⁻¹²⁶` (`Ea + Eb ≥ −112`, biased `a + b ≥ 142`) none is subnormal:
/// the flushes never fire, and plain multiply-adds give the same bits.
pub fn needs_flush(a: u32, b: u32) -> bool {
    a + b < 142
}

/// Every value of `src` rounded to bf16, in a new vector.
pub fn from_f32_slice(src: &[f32]) -> Vec<Bf16> {
    let mut dst = vec![Bf16::ZERO; src.len()];
    convert_into(src, &mut dst);
    dst
}

/// `x`, or zero of its sign when `x` is subnormal: the flush of the product step.
#[inline(always)]
pub fn flush_subnormal(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// One step of `VDPBF16PS` on one lane: the high pair (index 1) first, then
/// the low one, each a fused multiply-add with the result flushed when
/// subnormal (see the module's doc). `acc` itself is read as zero when
/// subnormal.
#[inline(always)]
pub fn dot_step(acc: f32, a: [Bf16; 2], b: [Bf16; 2]) -> f32 {
    let high = flush_subnormal(a[1].to_f32().mul_add(b[1].to_f32(), flush_subnormal(acc)));
    flush_subnormal(a[0].to_f32().mul_add(b[0].to_f32(), high))
}

/// `acc + Σ a[i]·b[i]` as a bf16 product computes it: one fused
/// multiply-add per `i` in order, each result flushed when subnormal (the
/// pairs `(a[2j], a[2j+1])` go to [`dot_step`] with `a[2j]` in the high half,
/// as the kernels pack them; an odd last value is one more step). The sum of
/// each output of a bf16 GEMM, within one slab of the shared axis.
///
/// # Panics
/// When the lengths differ (a caller's bug, not a user's input).
pub fn dot(acc: f32, a: &[Bf16], b: &[Bf16]) -> f32 {
    assert_eq!(a.len(), b.len(), "bf16::dot: lengths differ");
    let mut acc = acc;
    let (ap, bp) = (a.chunks_exact(2), b.chunks_exact(2));
    let (ar, br) = (ap.remainder(), bp.remainder());
    for (x, y) in ap.zip(bp) {
        acc = dot_step(acc, [x[1], x[0]], [y[1], y[0]]);
    }
    if let (Some(&x), Some(&y)) = (ar.first(), br.first()) {
        acc = flush_subnormal(x.to_f32().mul_add(y.to_f32(), flush_subnormal(acc)));
    }
    acc
}

/// Values of the shared axis summed per slab: the kernels sum each run of
/// `SLAB` values (from the first) from zero and add it to `C` in f32, as
/// the f32 kernels do (`C` stays in memory between the slabs).
pub const SLAB: usize = crate::packed::KC;

/// `C ← A·B + β·C` as every bf16 product of the workspace computes it: `A`
/// and `B` rounded to bf16 ([`Bf16::from_f32`]); each output starts as
/// `β·C` (`C` not read when `β == 0`) and gets, one [`SLAB`] of the shared
/// axis after another, that slab's [`dot`] from zero added in f32. The naive
/// twin of the bf16 kernels, and the definition of their bits.
///
/// Error bounds, away from the subnormal range (`u = 2⁻²⁴`, `k` the shared
/// length, `γ = k·u/(1 − k·u)`, `S = Σ|aᵢ·bᵢ|` over the rounded values):
/// within `γ·S` of the exact sum of the rounded inputs (one rounding per
/// step); within `(2⁻⁷ + 2⁻¹⁶ + 2γ)·S'` of the exact product of the
/// unrounded inputs, `S'` their `Σ|aᵢ·bᵢ|` (each input moves by at most 2⁻⁸
/// of itself, so each product by at most `2⁻⁷ + 2⁻¹⁶` of itself).
///
/// # Errors
/// [`Error::Shape`] when `A` is not `m × k`, `B` not `k × n` or `C` not `m × n`.
pub fn gemm_reference(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
) -> Result<()> {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    if k != k2 || c.dim() != (m, n) {
        let (cm, cn) = c.dim();
        return Err(Error::shape(
            "gemm_bf16",
            format!(
                "A is {m}x{k}, B is {k2}x{n}, C is {cm}x{cn}: expected B {k}x{n} and C {m}x{n}"
            ),
        ));
    }
    let rows: Vec<Vec<Bf16>> =
        a.rows().into_iter().map(|r| r.iter().map(|&v| Bf16::from_f32(v)).collect()).collect();
    let cols: Vec<Vec<Bf16>> = b
        .columns()
        .into_iter()
        .map(|col| col.iter().map(|&v| Bf16::from_f32(v)).collect())
        .collect();
    for (i, row) in rows.iter().enumerate() {
        for (j, col) in cols.iter().enumerate() {
            let out = &mut c[[i, j]];
            let mut total = (beta != 0.0).then_some(beta * *out);
            for (r, c) in row.chunks(SLAB).zip(col.chunks(SLAB)) {
                let sum = dot(0.0, r, c);
                total = Some(total.map_or(sum, |t| t + sum));
            }
            *out = total.unwrap_or(0.0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The nearest bf16 to a normal or infinite `x` by value, ties to the
    /// even mantissa, worked out in f64 from the two bf16 neighbours of `x`
    /// (not by the carry trick of [`Bf16::from_f32`]); past the largest
    /// finite bf16 the upper neighbour is 2¹²⁸, which rounds to Inf.
    fn nearest_by_value(x: f32) -> u16 {
        if x.is_infinite() {
            return (x.to_bits() >> 16) as u16;
        }
        let down = (x.to_bits() >> 16) as u16; // toward zero
        let up = down + 1; // away from zero (into the exponent, or Inf's bits)
        let value = |b: u16| -> f64 {
            let mag = b & 0x7FFF;
            if mag == 0x7F80 {
                2f64.powi(128)
            } else {
                f64::from(Bf16(mag).to_f32())
            }
        };
        let xm = f64::from(x).abs();
        let (dd, du) = (xm - value(down & 0x7FFF), value(up & 0x7FFF) - xm);
        if dd < du || (dd == du && down & 1 == 0) {
            down
        } else {
            up
        }
    }

    #[test]
    fn rounding_ties_to_even_and_specials() {
        let cases: [(u32, u16); 16] = [
            (0x3F80_0000, 0x3F80), // 1.0 exact
            (0x3F80_8000, 0x3F80), // tie, even below
            (0x3F81_8000, 0x3F82), // tie, even above
            (0x3F80_8001, 0x3F81), // just past the tie
            (0x3F80_7FFF, 0x3F80), // just below it
            (0xBF80_8000, 0xBF80), // negative tie
            (0x7F7F_FFFF, 0x7F80), // f32::MAX rounds past the largest bf16: +Inf
            (0x7F7F_7FFF, 0x7F7F), // the largest bf16 region, rounded down
            (0x7F80_0000, 0x7F80), // +Inf
            (0xFF80_0000, 0xFF80), // -Inf
            (0x7F80_0001, 0x7FC0), // signalling NaN, low payload: NaN, not Inf
            (0xFFC1_2345, 0xFFC1), // quiet NaN keeps its sign and top bits
            (0x0000_0001, 0x0000), // smallest subnormal: +0
            (0x807F_FFFF, 0x8000), // largest negative subnormal: -0
            (0x0080_0000, 0x0080), // smallest normal stays
            (0x8000_0000, 0x8000), // -0
        ];
        for (bits, want) in cases {
            let got = Bf16::from_f32(f32::from_bits(bits)).to_bits();
            assert_eq!(got, want, "{bits:#010x}: got {got:#06x}, expected {want:#06x}");
        }
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(round_f32(1.0 + 1.0 / 256.0), 1.0, "a tie at 1 + 2⁻⁸ goes to even");
    }

    /// The slice conversion runs again at every SIMD level this CPU has (in
    /// a child process each, as `CNN_SIMD` is read once).
    #[test]
    fn every_simd_level_converts_slices_as_values() {
        for level in crate::simd::levels() {
            crate::simd::rerun_tests("slices_convert_as_values", &[("CNN_SIMD", level.name())])
                .unwrap();
        }
    }

    #[test]
    fn slices_convert_as_values() {
        let src: Vec<f32> = (0..1000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9)))
            .chain([f32::NAN, f32::INFINITY, -0.0, 1e-40])
            .collect();
        let want: Vec<u16> = src.iter().map(|&x| Bf16::from_f32(x).to_bits()).collect();
        let got: Vec<u16> = from_f32_slice(&src).iter().map(|b| b.to_bits()).collect();
        assert_eq!(got, want);
        let mut dst = vec![Bf16::ZERO; src.len()];
        convert_slice(&src, &mut dst).unwrap();
        assert_eq!(dst.iter().map(|b| b.to_bits()).collect::<Vec<_>>(), want);
        let err = convert_slice(&src, &mut dst[1..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bf16_convert: src has 1004 values, dst 1003: expected the same length"
        );
    }

    #[test]
    fn the_high_pair_goes_first() {
        let b = |x: f32| Bf16::from_f32(x);
        // acc = −2³⁰: high first cancels exactly, then adds 1 → 1. Low first
        // would lose the 1 (2³⁰ − 1 needs 30 bits) and end at 0.
        let got = dot_step(-(2f32.powi(30)), [b(1.0), b(2f32.powi(30))], [b(1.0), b(1.0)]);
        assert_eq!(got, 1.0);
        let swapped = dot_step(-(2f32.powi(30)), [b(2f32.powi(30)), b(1.0)], [b(1.0), b(1.0)]);
        assert_eq!(swapped, 0.0);
    }

    #[test]
    fn subnormal_results_and_accumulators_flush_to_zero() {
        let b = |x: f32| Bf16::from_f32(x);
        // 2⁻⁶⁴ · 2⁻⁶⁴ = 2⁻¹²⁸ is subnormal in f32: flushed, sign kept.
        let tiny = b(2f32.powi(-64));
        assert_eq!(dot_step(0.0, [Bf16::ZERO, tiny], [Bf16::ZERO, tiny]).to_bits(), 0);
        let neg = b(-(2f32.powi(-64)));
        assert_eq!(
            dot_step(0.0, [neg, Bf16::ZERO], [tiny, Bf16::ZERO]).to_bits(),
            0x8000_0000,
            "−2⁻¹²⁸ flushes to −0"
        );
        // A flushed −0 then meets the low pair's +0 product: +0, as IEEE adds zeros.
        assert_eq!(dot_step(0.0, [Bf16::ZERO, neg], [Bf16::ZERO, tiny]).to_bits(), 0);
        // A subnormal accumulator reads as zero.
        assert_eq!(dot_step(1e-40, [b(1.0), Bf16::ZERO], [b(3.0), Bf16::ZERO]), 3.0);
        // The smallest normal result stays.
        let s = b(2f32.powi(-63));
        assert_eq!(dot_step(0.0, [s, Bf16::ZERO], [s, Bf16::ZERO]), f32::MIN_POSITIVE);
    }

    #[test]
    fn dot_sums_in_order_with_the_earlier_value_high() {
        let a = from_f32_slice(&[1.5, -2.0, 0.25, 3.0, 7.0]);
        let b = from_f32_slice(&[2.0, 0.5, 4.0, -1.0, 0.5]);
        let mut acc = 10.0f32;
        acc = dot_step(acc, [a[1], a[0]], [b[1], b[0]]);
        acc = dot_step(acc, [a[3], a[2]], [b[3], b[2]]);
        acc = a[4].to_f32().mul_add(b[4].to_f32(), acc);
        assert_eq!(dot(10.0, &a, &b), acc);
        assert_eq!(acc, 10.0 + 3.0 - 1.0 + 1.0 - 3.0 + 3.5);
        assert_eq!(dot(2.5, &[], &[]), 2.5);
        // The order is k's: −2³⁰ + 2³⁰ first, then 1, gives 1; the other
        // order within the pair would lose the 1 and give 0.
        let x = from_f32_slice(&[2f32.powi(30), 1.0]);
        let ones = from_f32_slice(&[1.0, 1.0]);
        assert_eq!(dot(-(2f32.powi(30)), &x, &ones), 1.0);
    }

    #[test]
    fn the_reference_sums_each_slab_from_zero() {
        // k = SLAB + 2: the first slab sums 2²⁴ and SLAB − 1 ones from zero
        // (each 1 lost against 2²⁴), the second slab 1 + 1 = 2 from zero,
        // added to the first: 2²⁴ + 2. One chain over all k would give 2²⁴.
        let k = SLAB + 2;
        let mut a = vec![1.0f32; k];
        a[0] = 2f32.powi(24);
        let b = vec![1.0f32; k];
        let (av, bv) = (
            ArrayView2::from_shape((1, k), &a).unwrap(),
            ArrayView2::from_shape((k, 1), &b).unwrap(),
        );
        let mut c = ndarray::Array2::<f32>::zeros((1, 1));
        gemm_reference(av, bv, 0.0, c.view_mut()).unwrap();
        assert_eq!(c[[0, 0]], 2f32.powi(24) + 2.0);
    }

    #[test]
    fn the_reference_gemm_is_dot_on_rounded_values() {
        let mut rng = crate::random::seeded_rng(3);
        let a: Vec<f32> =
            crate::random::normal(&[5 * 7], 0.0, 1.0, &mut rng).into_raw_vec_and_offset().0;
        let b: Vec<f32> =
            crate::random::normal(&[7 * 4], 0.0, 1.0, &mut rng).into_raw_vec_and_offset().0;
        let (av, bv) = (
            ArrayView2::from_shape((5, 7), &a).unwrap(),
            ArrayView2::from_shape((7, 4), &b).unwrap(),
        );
        let mut c = ndarray::Array2::<f32>::from_elem((5, 4), 2.0);
        gemm_reference(av, bv, 0.5, c.view_mut()).unwrap();
        for i in 0..5 {
            let row = from_f32_slice(&a[i * 7..(i + 1) * 7]);
            for j in 0..4 {
                let col: Vec<f32> = (0..7).map(|p| b[p * 4 + j]).collect();
                let want = 0.5 * 2.0 + dot(0.0, &row, &from_f32_slice(&col));
                assert_eq!(c[[i, j]].to_bits(), want.to_bits(), "C[{i}, {j}]");
            }
        }
        // Inputs that bf16 cannot hold are rounded: 1 + 2⁻¹⁰ is 1 here.
        let x = [1.0 + 2f32.powi(-10)];
        let mut one = ndarray::Array2::<f32>::zeros((1, 1));
        let xv = ArrayView2::from_shape((1, 1), &x).unwrap();
        gemm_reference(xv, xv, 0.0, one.view_mut()).unwrap();
        assert_eq!(one[[0, 0]], 1.0);
    }

    #[test]
    fn the_reference_gemm_refuses_shapes_that_disagree() {
        let a = ndarray::Array2::<f32>::zeros((2, 3));
        let b = ndarray::Array2::<f32>::zeros((4, 2));
        let mut c = ndarray::Array2::<f32>::zeros((2, 2));
        let err = gemm_reference(a.view(), b.view(), 0.0, c.view_mut()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gemm_bf16: A is 2x3, B is 4x2, C is 2x2: expected B 3x2 and C 2x2"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any bit pattern: NaN in gives NaN out, subnormals and zeros give
        /// a zero of their sign, everything else the nearest bf16 by value.
        #[test]
        fn rounding_matches_the_reference(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let got = Bf16::from_f32(x);
            if x.is_nan() {
                prop_assert!(got.to_f32().is_nan());
                prop_assert_eq!(got.to_bits() & 0x8000, (bits >> 16) as u16 & 0x8000);
            } else if x == 0.0 || x.is_subnormal() {
                prop_assert_eq!(got.to_bits(), (bits >> 16) as u16 & 0x8000);
            } else {
                prop_assert_eq!(got.to_bits(), nearest_by_value(x), "x = {:e}", x);
            }
        }

        /// Values near ties: the low 16 bits within 2 of 0x8000.
        #[test]
        fn rounding_near_ties(high in 0x0080u32..0x7F80, low in 0x7FFEu32..=0x8002, neg: bool) {
            let bits = (high << 16) | low | if neg { 0x8000_0000 } else { 0 };
            let x = f32::from_bits(bits);
            prop_assert_eq!(Bf16::from_f32(x).to_bits(), nearest_by_value(x));
        }

        /// Once rounded, a value converts to itself and back exactly.
        #[test]
        fn rounded_values_are_fixed_points(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            prop_assume!(!x.is_nan());
            let r = round_f32(x);
            prop_assert_eq!(round_f32(r).to_bits(), r.to_bits());
        }

        /// The stated bounds, over shapes and magnitudes: against the exact
        /// (f64) sums of the rounded inputs and of the raw ones.
        #[test]
        fn the_reference_gemm_keeps_its_bounds(m in 1usize..5, k in 1usize..300, n in 1usize..5,
                                              scale in -20i32..20, seed in any::<u64>()) {
            let mut rng = crate::random::seeded_rng(seed);
            let s = 2f64.powi(scale);
            let a: Vec<f32> = crate::random::normal(&[m * k], 0.0, s, &mut rng).into_raw_vec_and_offset().0;
            let b: Vec<f32> = crate::random::normal(&[k * n], 0.0, 1.0, &mut rng).into_raw_vec_and_offset().0;
            let (av, bv) = (ArrayView2::from_shape((m, k), &a).unwrap(), ArrayView2::from_shape((k, n), &b).unwrap());
            let mut c = ndarray::Array2::<f32>::zeros((m, n));
            gemm_reference(av, bv, 0.0, c.view_mut()).unwrap();
            let u = 2f64.powi(-24);
            let gamma = k as f64 * u / (1.0 - k as f64 * u);
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut sum_abs, mut raw, mut raw_abs) = (0f64, 0f64, 0f64, 0f64);
                    for p in 0..k {
                        let (x, y) = (a[i * k + p], b[p * n + j]);
                        let r = f64::from(round_f32(x)) * f64::from(round_f32(y));
                        exact += r;
                        sum_abs += r.abs();
                        raw += f64::from(x) * f64::from(y);
                        raw_abs += (f64::from(x) * f64::from(y)).abs();
                    }
                    let got = f64::from(c[[i, j]]);
                    prop_assert!((got - exact).abs() <= gamma * sum_abs,
                                 "C[{}, {}] = {} against {} (Σ|ab| {})", i, j, got, exact, sum_abs);
                    let bound = (2f64.powi(-7) + 2f64.powi(-16) + 2.0 * gamma) * raw_abs;
                    prop_assert!((got - raw).abs() <= bound,
                                 "C[{}, {}] = {} against the exact {} (bound {})", i, j, got, raw, bound);
                }
            }
        }

        /// Where [`needs_flush`] says no, the flushes of [`dot`] never fire:
        /// it equals a plain chain of multiply-adds, bit for bit. Exponents
        /// are drawn at and around the boundary (`a + b` near 142), with
        /// random signs and mantissas, so partial sums cancel.
        #[test]
        fn no_flush_needed_means_none_fires(ea in 60u32..90, eb in 50u32..85, seed in 0u64..1000) {
            let mut rng = crate::random::seeded_rng(seed);
            use rand::Rng;
            let mut draw = |e: u32| -> Vec<Bf16> {
                (0..40).map(|_| {
                    let e = e + rng.random_range(0..4u32);
                    let bits = (rng.random_range(0..2u32) << 31) | (e << 23) | (rng.random_range(0..128u32) << 16);
                    Bf16::from_f32(f32::from_bits(bits))
                }).collect()
            };
            let (a, b) = (draw(ea), draw(eb));
            let (fa, fb) = (round_and_min_exponent(&mut a.iter().map(|v| v.to_f32()).collect::<Vec<_>>()),
                            round_and_min_exponent(&mut b.iter().map(|v| v.to_f32()).collect::<Vec<_>>()));
            let plain = a.iter().zip(&b).fold(0f32, |acc, (x, y)| x.to_f32().mul_add(y.to_f32(), acc));
            let flushed = dot(0.0, &a, &b);
            if !needs_flush(fa, fb) {
                prop_assert_eq!(plain.to_bits(), flushed.to_bits());
            }
        }

        /// The step against f64: with products exact and one rounding per
        /// step, each step is the exact `acc + a·b` rounded to f32. Values
        /// on a grid of 2⁻⁸ within 2²⁵ keep every f64 sum here exact.
        #[test]
        fn steps_round_once(acc in -(1i32 << 24)..(1 << 24), a in prop::array::uniform2(-4096i32..4096),
                            b in prop::array::uniform2(-4096i32..4096)) {
            let acc = acc as f32 / 256.0;
            let (a, b) = (a.map(|v| Bf16::from_f32(v as f32 / 16.0)), b.map(|v| Bf16::from_f32(v as f32 / 16.0)));
            let p = |i: usize| f64::from(a[i].to_f32()) * f64::from(b[i].to_f32());
            let high = (f64::from(acc) + p(1)) as f32;
            let want = (f64::from(high) + p(0)) as f32;
            prop_assert_eq!(dot_step(acc, a, b), want);
        }
    }
}
