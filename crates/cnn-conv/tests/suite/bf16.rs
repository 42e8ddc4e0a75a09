//! Convolutions under a bf16 scope (`cnn_tensor::with_precision`): forward,
//! dx and dW within their stated bounds of the f64 naive kernel on inputs
//! rounded to bf16, and of the f32 path; and the policy: depthwise and
//! Winograd stay f32, im2col rounds.
//!
//! The bounds (`u = 2⁻²⁴`; `S` the sum of `|a·b|` over the `n` products
//! that make an output, on the rounded inputs; `S'` the same on the
//! unrounded ones): each output is `n` products summed in f32 in one or more
//! runs, the runs then added in f32, so at most `2n` roundings of partial
//! sums bounded by `S`: within `2n·u·S` of the exact sum on rounded inputs.
//! Against the exact sum on unrounded inputs, each rounded input moves by
//! at most 2⁻⁸ of itself, each product by at most `2⁻⁷ + 2⁻¹⁶`: within
//! `(2⁻⁷ + 2⁻¹⁶)·S' + 2n·u·S`.

#![allow(clippy::unwrap_used)]

use cnn_conv::naive::{conv2d_backward_naive, conv2d_forward_naive};
use cnn_conv::{conv2d_backward, conv2d_forward, ConvAlgorithm};
use cnn_tensor::{bf16::round_f32, with_precision, Precision};
use ndarray::Array4;
use proptest::prelude::*;

use crate::common::{proptest_config, randn4, Case};
use crate::conv2d::case;

const U: f64 = 1.0 / (1u64 << 24) as f64;
const INPUT: f64 = 1.0 / 128.0 + 1.0 / 65536.0;

fn f32_of(a: &Array4<f64>) -> Array4<f32> {
    a.mapv(|v| v as f32)
}

fn rounded(a: &Array4<f32>) -> Array4<f64> {
    a.mapv(|v| f64::from(round_f32(v)))
}

/// Checks `got` against `exact` elementwise: `|got − exact| ≤ bound`, the
/// bound from `s` (the sums of magnitudes) by `bound_of`.
fn within(
    what: &str,
    got: &Array4<f32>,
    exact: &Array4<f64>,
    s: &Array4<f64>,
    bound_of: impl Fn(f64) -> f64,
) -> Result<(), TestCaseError> {
    for ((idx, &g), (&e, &s)) in got.indexed_iter().zip(exact.iter().zip(s)) {
        let err = (f64::from(g) - e).abs();
        prop_assert!(
            err <= bound_of(s) + 1e-30,
            "{what}{idx:?}: {g} vs {e}, error {err:e}, bound {:e}",
            bound_of(s)
        );
    }
    Ok(())
}

/// Forward, dx and dW of case `c` in bf16, checked against both bounds.
fn check_case(c: &Case, seed: u64) -> Result<(), TestCaseError> {
    let (x, w) = (f32_of(&randn4(c.x, seed)), f32_of(&randn4(c.w, seed + 1)));
    let opts = &c.opts;
    let y =
        with_precision(Precision::Bf16, || conv2d_forward(x.view(), w.view(), None, opts)).unwrap();
    let dy = f32_of(&randn4(y.dim().into(), seed + 2));
    let g =
        with_precision(Precision::Bf16, || conv2d_backward(x.view(), w.view(), dy.view(), opts))
            .unwrap();
    if opts.groups == c.x[1] && c.w[0] == c.x[1] && c.x[1] > 1 {
        // Depthwise stays f32: the bits of the f32 path.
        prop_assert_eq!(&y, &conv2d_forward(x.view(), w.view(), None, opts).unwrap());
        let g32 = conv2d_backward(x.view(), w.view(), dy.view(), opts).unwrap();
        prop_assert_eq!((&g.dx, &g.dw), (&g32.dx, &g32.dw));
        return Ok(());
    }

    let (xr, wr, dyr) = (rounded(&x), rounded(&w), rounded(&dy));
    let (x64, w64, dy64) = (x.mapv(f64::from), w.mapv(f64::from), dy.mapv(f64::from));
    let abs = |a: &Array4<f64>| a.mapv(f64::abs);
    let y_exact = conv2d_forward_naive(xr.view(), wr.view(), None, opts).unwrap();
    let y_s = conv2d_forward_naive(abs(&xr).view(), abs(&wr).view(), None, opts).unwrap();
    let y_raw = conv2d_forward_naive(x64.view(), w64.view(), None, opts).unwrap();
    let y_raw_s = conv2d_forward_naive(abs(&x64).view(), abs(&w64).view(), None, opts).unwrap();
    let g_exact = conv2d_backward_naive(xr.view(), wr.view(), dyr.view(), opts).unwrap();
    let g_s =
        conv2d_backward_naive(abs(&xr).view(), abs(&wr).view(), abs(&dyr).view(), opts).unwrap();
    let g_raw = conv2d_backward_naive(x64.view(), w64.view(), dy64.view(), opts).unwrap();
    let g_raw_s =
        conv2d_backward_naive(abs(&x64).view(), abs(&w64).view(), abs(&dy64).view(), opts).unwrap();

    let [_, cg, kh, kw] = c.w;
    let cog = c.w[0] / opts.groups;
    let (yd, xd) = (y.dim(), c.x);
    let n_y = (cg * kh * kw) as f64;
    let n_dx = (cog * kh * kw) as f64;
    let n_dw = (xd[0] * yd.2 * yd.3) as f64;
    let dw = g.dw.clone();
    within("y", &y, &y_exact, &y_s, |s| 2.0 * n_y * U * s)?;
    within("dx", &g.dx, &g_exact.dx, &g_s.dx, |s| 2.0 * n_dx * U * s)?;
    within("dW", &dw, &g_exact.dw, &g_s.dw, |s| 2.0 * n_dw * U * s)?;
    // Against the unrounded inputs (what the f32 path approximates).
    for (what, got, raw, s_raw, s, n) in [
        ("y", &y, &y_raw, &y_raw_s, &y_s, n_y),
        ("dx", &g.dx, &g_raw.dx, &g_raw_s.dx, &g_s.dx, n_dx),
        ("dW", &dw, &g_raw.dw, &g_raw_s.dw, &g_s.dw, n_dw),
    ] {
        for (((&gv, &e), &sr), &sv) in got.iter().zip(raw).zip(s_raw).zip(s) {
            let err = (f64::from(gv) - e).abs();
            let bound = INPUT * sr + 2.0 * n * U * sv;
            prop_assert!(
                err <= bound + 1e-30,
                "{what} against raw inputs: error {err:e}, bound {bound:e}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(64))]

    /// Shapes, strides, padding, dilation and groups as the f32 tests draw them.
    #[test]
    fn bf16_convs_keep_their_bounds(c in case(9), seed in 0u64..1000) {
        check_case(&c, seed)?;
    }
}

/// Wider convs (the packed kernel over several panels, dW cut along the
/// positions), one stride-2 and one grouped.
#[test]
fn wide_bf16_convs_keep_their_bounds() {
    use cnn_conv::Conv2dOptions;
    let cases = [
        ([4, 16, 12, 12], [32, 16, 3, 3], Conv2dOptions::default().with_padding(1)),
        ([2, 32, 9, 9], [24, 32, 3, 3], Conv2dOptions::default().with_padding(1).with_stride(2)),
        ([2, 32, 8, 8], [64, 32, 1, 1], Conv2dOptions::default()),
        (
            [3, 12, 7, 7],
            [12, 4, 3, 3],
            Conv2dOptions { groups: 3, ..Conv2dOptions::default().with_padding(1) },
        ),
    ];
    for (seed, (x, w, opts)) in cases.into_iter().enumerate() {
        let c = Case { x, w, opts, bias: false };
        check_case(&c, seed as u64 * 7).unwrap();
    }
}

/// The policy: a depthwise conv and a forced Winograd compute in f32 under
/// the scope (the same bits as outside it); `Auto` keeps f32's choice of
/// Winograd F(4×4) in f32 where the shape rule takes it (the bits of f32,
/// forward and both gradients), and computes by im2col in bf16 where the
/// rule takes im2col (the bits of forced im2col in bf16, not of f32).
#[test]
fn depthwise_and_winograd_stay_f32_and_im2col_rounds() {
    use cnn_conv::Conv2dOptions;
    let bf16 = |f: &dyn Fn() -> Array4<f32>| with_precision(Precision::Bf16, f);
    let x = f32_of(&randn4([2, 32, 12, 12], 1));
    let dw_w = f32_of(&randn4([32, 1, 3, 3], 2));
    let dw_opts = Conv2dOptions { groups: 32, ..Conv2dOptions::default().with_padding(1) };
    let run = |x: &Array4<f32>, w: &Array4<f32>, o: &Conv2dOptions| {
        conv2d_forward(x.view(), w.view(), None, o).unwrap()
    };
    assert_eq!(bf16(&|| run(&x, &dw_w, &dw_opts)), run(&x, &dw_w, &dw_opts), "depthwise");

    let w = f32_of(&randn4([32, 32, 3, 3], 3));
    let wino = Conv2dOptions::default().with_padding(1).with_algorithm(ConvAlgorithm::Winograd4);
    let wino2 = wino.with_algorithm(ConvAlgorithm::Winograd2);
    for o in [&wino, &wino2] {
        assert_eq!(bf16(&|| run(&x, &w, o)), run(&x, &w, o), "forced Winograd");
    }
    let dy = f32_of(&randn4([2, 32, 12, 12], 4));
    let back = |x: &Array4<f32>, dy: &Array4<f32>, o: &Conv2dOptions| {
        let g = conv2d_backward(x.view(), w.view(), dy.view(), o).unwrap();
        (g.dx, g.dw)
    };
    let back_bf16 = |x: &Array4<f32>, dy: &Array4<f32>, o: &Conv2dOptions| {
        with_precision(Precision::Bf16, || back(x, dy, o))
    };
    assert_eq!(back_bf16(&x, &dy, &wino), back(&x, &dy, &wino), "Winograd dx and dW");

    // Batch 4 at 16x16: 64 tiles of 4x4, which the rule gives to F(4x4).
    let auto = Conv2dOptions::default().with_padding(1);
    let (xw, dyw) = (f32_of(&randn4([4, 32, 16, 16], 5)), f32_of(&randn4([4, 32, 16, 16], 6)));
    assert_eq!(bf16(&|| run(&xw, &w, &auto)), run(&xw, &w, &wino), "Auto keeps F(4x4) in f32");
    assert_eq!(back_bf16(&xw, &dyw, &auto), back(&xw, &dyw, &wino), "and its gradients");

    // 18 tiles: the rule takes im2col, which rounds.
    let im2col = auto.with_algorithm(ConvAlgorithm::Im2col);
    let auto_bf16 = bf16(&|| run(&x, &w, &auto));
    assert_eq!(auto_bf16, bf16(&|| run(&x, &w, &im2col)), "Auto is im2col in bf16 here");
    assert_ne!(auto_bf16, run(&x, &w, &im2col), "and rounds");
    assert_eq!(back_bf16(&x, &dy, &auto), back_bf16(&x, &dy, &im2col), "gradients too");
    assert_ne!(back_bf16(&x, &dy, &auto), back(&x, &dy, &im2col));
}
