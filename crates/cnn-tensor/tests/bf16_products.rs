//! Every f32 product under a bf16 scope against `bf16::gemm_reference`, bit
//! for bit, through each public entry (gemm, gemm_nt, packed, split, by
//! panels, prepacked; gemm_nt against its lanes' own definition,
//! `gemm_nt_lanes_bf16`, where it takes them), at every SIMD level this
//! CPU has: the portable, AVX2 and AVX-512 kernels give the reference's
//! numbers, so a run's numbers do not depend on the machine.

#![allow(clippy::unwrap_used)]

use cnn_tensor::bf16::{gemm_reference, SLAB};
use cnn_tensor::{
    gemm, gemm_nt, gemm_nt_lanes_bf16, gemm_nt_uses_kernel, gemm_packed, gemm_packed_split,
    gemm_panels_by, gemm_prepacked, random, with_precision, GemmSplit, PackedLhs, Precision,
};
use cnn_test_support::proptest_config as config;
use ndarray::{Array2, ArrayView2};
use proptest::prelude::*;

/// A random `rows × cols` f32 matrix with some values bf16 cannot hold
/// (every normal draw has low mantissa bits), a few exact zeros and ties.
fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = random::seeded_rng(seed);
    let v = random::normal::<f32, _>(&[rows * cols], 0.0, 1.0, &mut rng);
    let mut m = Array2::from_shape_vec((rows, cols), v.into_raw_vec_and_offset().0).unwrap();
    for (i, x) in m.iter_mut().enumerate() {
        match i % 37 {
            5 => *x = 0.0,
            11 => *x = 1.0 + 2f32.powi(-8), // a tie: rounds to even (1.0)
            _ => {}
        }
    }
    m
}

/// Bits equal, or both NaN (a NaN's payload depends on operand order).
fn same_bits(got: &Array2<f32>, want: &Array2<f32>, what: &str) {
    for ((ij, g), w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: C{ij:?} = {g:e}, the reference says {w:e}"
        );
    }
}

fn reference(a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, c0: &Array2<f32>) -> Array2<f32> {
    let mut want = c0.clone();
    gemm_reference(a, b, beta, want.view_mut()).unwrap();
    want
}

/// The shapes: one value; ragged panels; an odd `k` past one slab; more
/// rows than one row block (384) of the packed product.
const SHAPES: [(usize, usize, usize); 5] =
    [(1, 1, 1), (7, 3, 5), (23, SLAB + 77, 53), (13, 64, 100), (400, 9, 33)];

#[test]
fn every_simd_level_gives_the_reference_bits() {
    for level in cnn_tensor::simd::levels() {
        for filter in ["products_in_bf16_are_the_reference", "packed_products_keep_their_precision"]
        {
            cnn_tensor::simd::rerun_tests(filter, &[("CNN_SIMD", level.name())]).unwrap();
        }
    }
}

#[test]
fn products_in_bf16_are_the_reference() {
    for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
        let s = s as u64 * 10;
        let (a, b, c0) = (matrix(m, k, s + 1), matrix(k, n, s + 2), matrix(m, n, s + 3));
        let bt = b.t().as_standard_layout().to_owned(); // [n, k]
        for beta in [0.0f32, 1.0, 0.5] {
            let want = reference(a.view(), b.view(), beta, &c0);
            let what = |entry: &str| format!("{entry} {m}x{k}x{n} beta {beta}");
            with_precision(Precision::Bf16, || {
                let mut c = c0.clone();
                gemm(1.0, a.view(), b.view(), beta, c.view_mut()).unwrap();
                same_bits(&c, &want, &what("gemm"));

                // B as a transposed view, C column-major.
                let mut c = c0.t().as_standard_layout().to_owned().reversed_axes();
                gemm(1.0, a.view(), bt.t(), beta, c.view_mut()).unwrap();
                same_bits(&c.as_standard_layout().to_owned(), &want, &what("gemm strided"));

                // gemm_nt: its lanes where its rule takes them (their own
                // definition, gemm_nt_lanes_bf16), else the reference.
                let mut c = c0.clone();
                gemm_nt(a.view(), bt.view(), beta, c.view_mut()).unwrap();
                if gemm_nt_uses_kernel(&a.view(), &bt.view()) {
                    let mut lanes = c0.clone();
                    gemm_nt_lanes_bf16(a.view(), bt.view(), beta, lanes.view_mut()).unwrap();
                    same_bits(&c, &lanes, &what("gemm_nt (lanes)"));
                } else {
                    same_bits(&c, &want, &what("gemm_nt"));
                }

                let packed = PackedLhs::new(a.view(), n);
                assert_eq!(packed.precision(), Precision::Bf16);
                let mut c = c0.clone();
                gemm_packed(&packed, b.view(), beta, c.view_mut(), &mut Vec::new()).unwrap();
                same_bits(&c, &want, &what("gemm_packed"));

                let mut c = c0.clone();
                let split = GemmSplit { rows: 2, cols: 3 };
                gemm_packed_split(&packed, b.view(), beta, c.view_mut(), split).unwrap();
                same_bits(&c, &want, &what("gemm_packed_split"));

                let layout = packed.rhs_panels(n).expect("bf16 products run in the kernel");
                let nr = layout.width();
                let mut c = c0.clone();
                gemm_panels_by(&packed, n, beta, c.view_mut(), |panel, k0, kc, buf| {
                    for r in 0..kc {
                        for l in 0..nr {
                            let col = panel * nr + l;
                            buf[r * nr + l] = if col < n { b[[k0 + r, col]] } else { 0.0 };
                        }
                    }
                })
                .unwrap();
                same_bits(&c, &want, &what("gemm_panels_by"));

                let mut flat = vec![0f32; layout.len()];
                for ((kk, col), &v) in b.indexed_iter() {
                    flat[layout.index(kk, col)] = v;
                }
                let mut c = c0.clone();
                gemm_prepacked(&packed, &flat, n, beta, c.view_mut()).unwrap();
                same_bits(&c, &want, &what("gemm_prepacked"));
            });
        }
    }
}

/// An operand packed under the scope keeps bf16 outside it, and one packed
/// outside keeps f32 inside it: the precision is the packing's.
#[test]
fn packed_products_keep_their_precision() {
    let (a, b) = (matrix(9, 40, 1), matrix(40, 20, 2));
    let bf16 = with_precision(Precision::Bf16, || PackedLhs::new(a.view(), 20));
    let f32 = PackedLhs::new(a.view(), 20);
    let zeros = Array2::<f32>::zeros((9, 20));
    let want_bf16 = reference(a.view(), b.view(), 0.0, &zeros);
    let mut c = zeros.clone();
    gemm_packed(&bf16, b.view(), 0.0, c.view_mut(), &mut Vec::new()).unwrap();
    same_bits(&c, &want_bf16, "packed in bf16, used outside the scope");
    let mut plain = zeros.clone();
    gemm(1.0, a.view(), b.view(), 0.0, plain.view_mut()).unwrap();
    let mut c = zeros;
    with_precision(Precision::Bf16, || {
        gemm_packed(&f32, b.view(), 0.0, c.view_mut(), &mut Vec::new()).unwrap();
    });
    approx::assert_relative_eq!(c, plain, max_relative = 1e-5);
    assert!(c != want_bf16, "an f32 operand is not rounded inside the scope");
}

/// The scope engages: bf16 rounds what f32 keeps, flushes a subnormal sum
/// that f32 keeps, and leaves f64 alone.
#[test]
fn the_scope_rounds_flushes_and_spares_f64() {
    let x = Array2::from_elem((1, 1), 1.0f32 + 2f32.powi(-10));
    let mut c = Array2::<f32>::zeros((1, 1));
    with_precision(Precision::Bf16, || gemm(1.0, x.view(), x.view(), 0.0, c.view_mut())).unwrap();
    assert_eq!(c[[0, 0]], 1.0, "1 + 2⁻¹⁰ is 1 in bf16");
    gemm(1.0, x.view(), x.view(), 0.0, c.view_mut()).unwrap();
    assert!(c[[0, 0]] > 1.0, "and more than 1 in f32");

    // 1e-20 · 1e-19 = 1e-39 is subnormal in f32: flushed in bf16's sum.
    let (a, b) = (Array2::from_elem((1, 1), 1e-20f32), Array2::from_elem((1, 1), 1e-19f32));
    with_precision(Precision::Bf16, || gemm(1.0, a.view(), b.view(), 0.0, c.view_mut())).unwrap();
    assert_eq!(c[[0, 0]].to_bits(), 0);

    let y = Array2::from_elem((1, 1), 1.0f64 + 2f64.powi(-10));
    let mut d = Array2::<f64>::zeros((1, 1));
    with_precision(Precision::Bf16, || gemm(1.0, y.view(), y.view(), 0.0, d.view_mut())).unwrap();
    assert_eq!(d[[0, 0]], (1.0 + 2f64.powi(-10)).powi(2));
}

/// Non-finite inputs go through as the reference says (Inf·0 is NaN, Inf
/// stays Inf), and α scales the bf16 sum.
#[test]
fn non_finite_inputs_and_alpha() {
    let mut a = matrix(5, 6, 4);
    let b = matrix(6, 7, 5);
    a[[0, 1]] = f32::INFINITY;
    a[[1, 2]] = f32::NAN;
    a[[2, 3]] = f32::MAX; // rounds past the largest bf16: Inf
    let zeros = Array2::<f32>::zeros((5, 7));
    let want = reference(a.view(), b.view(), 0.0, &zeros);
    let mut c = zeros.clone();
    with_precision(Precision::Bf16, || gemm(1.0, a.view(), b.view(), 0.0, c.view_mut())).unwrap();
    same_bits(&c, &want, "non-finite");
    assert!(c.row(1).iter().all(|v| v.is_nan()) && c[[2, 0]].is_infinite());

    let (a, b) = (matrix(4, 30, 6), matrix(30, 3, 7));
    let want = reference(a.view(), b.view(), 0.0, &Array2::zeros((4, 3))).mapv(|v| 2.5 * v);
    let mut c = Array2::from_elem((4, 3), 1.0f32);
    with_precision(Precision::Bf16, || gemm(2.5, a.view(), b.view(), 0.0, c.view_mut())).unwrap();
    same_bits(&c, &want, "alpha 2.5");
}

proptest! {
    #![proptest_config(config(48))]

    /// Random shapes and strides at this SIMD level: the entries of `gemm`
    /// (with `B` transposed or not) equal the reference, bit for bit.
    #[test]
    fn random_shapes_are_the_reference(m in 1usize..20, k in 1usize..300, n in 1usize..70,
                                       transposed: bool, seed in 0u64..1000) {
        let (a, c0) = (matrix(m, k, seed), matrix(m, n, seed + 1));
        let b = if transposed { matrix(n, k, seed + 2).reversed_axes() } else { matrix(k, n, seed + 2) };
        let want = reference(a.view(), b.view(), 1.0, &c0);
        let mut c = c0.clone();
        with_precision(Precision::Bf16, || gemm(1.0, a.view(), b.view(), 1.0, c.view_mut())).unwrap();
        same_bits(&c, &want, "random");
    }
}
