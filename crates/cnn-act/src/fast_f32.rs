//! Branch-free f32 `exp`, `erf` and GELU that the compiler vectorizes.
//!
//! libm's `erff` and `expf` are scalar calls (GELU at ~4 ns an element); these
//! are straight-line polynomials in fused multiply-adds, compiled for AVX-512
//! and for AVX2 + FMA and for the baseline (picked by `cnn_tensor::simd`), where
//! `mul_add` is libm's correctly rounded `fmaf`: the same operations in the
//! same order on every path, so every path gives the same bits. Accuracy: `exp` within 2 ulp
//! (Cephes' polynomial), `erf` within 3e-7 absolute (a rational minimax
//! approximation, see [`erf`]) — far inside the f32 parity tolerance of
//! 1e-4. f64 keeps libm.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `e^x`: `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6 polynomial for `e^r`,
/// and `2^n` put straight into the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Keeps 2^n a normal number: n stays within [-126, 127].
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // 2^n without a float-to-int conversion (which would not vectorize):
    // n + 2²³ + 127 holds n + 127 in its low mantissa bits; shift them into the exponent.
    e * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
}

/// `erf(x) ≈ x·P(x²) / Q(x²)` on `x` clamped to `[−4, 4]` (beyond it erf is
/// ±1 in f32): the rational minimax approximation of Eigen's and XLA's
/// `erf` for f32, degree 13 over 8. One division and ten fused
/// multiply-adds, no `exp`: about half the instructions of Abramowitz &
/// Stegun 7.1.26 with its `e^(−x²)`, which this replaced.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_1e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

#[inline(always)]
fn gelu_forward_body(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn gelu_forward_out_body(xs: &[f32], ys: &mut [std::mem::MaybeUninit<f32>]) {
    for (y, &x) in ys.iter_mut().zip(xs) {
        y.write(0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2)));
    }
}

#[inline(always)]
fn gelu_backward_body(dy: &mut [f32], xs: &[f32]) {
    for (g, &x) in dy.iter_mut().zip(xs) {
        let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
        let pdf = exp(-0.5 * x * x) * INV_SQRT_2PI;
        *g *= cdf + x * pdf;
    }
}

cnn_tensor::simd_fn! {
    /// `x ← GELU(x)` (erf form), elementwise.
    pub(crate) fn gelu_forward(xs: &mut [f32]) = gelu_forward_body
}

cnn_tensor::simd_fn! {
    /// `y ← GELU(x)` (erf form) into a new buffer, elementwise.
    pub(crate) fn gelu_forward_out(xs: &[f32], ys: &mut [std::mem::MaybeUninit<f32>]) = gelu_forward_out_body
}

cnn_tensor::simd_fn! {
    /// `dy ← dy · GELU'(x)` (erf form), elementwise.
    pub(crate) fn gelu_backward(dy: &mut [f32], xs: &[f32]) = gelu_backward_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_close_to_libm() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.001;
            let e = (exp(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
            worst_exp = worst_exp.max(e);
            worst_erf = worst_erf.max((erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 4e-7, "erf absolute error {worst_erf}");
        assert!((0.0..1e-37).contains(&exp(-200.0)));
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn both_paths_give_the_same_bits() {
        let xs: Vec<f32> = (-5000..5000).map(|i| i as f32 * 0.0017).collect();
        let (mut a, mut b) = (xs.clone(), xs.clone());
        gelu_forward(&mut a);
        gelu_forward_body(&mut b);
        assert_eq!(a, b);
    }
}
