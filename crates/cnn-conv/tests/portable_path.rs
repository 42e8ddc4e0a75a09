//! The f32 convolution on the portable path (matrixmultiply, no AVX-512
//! kernel), as on CPUs without AVX-512. Its own test binary, because the
//! switch is read once per process.

mod common;

use cnn_conv::naive::{conv2d_backward_naive, conv2d_forward_naive};
use cnn_conv::{conv2d_backward, conv2d_forward, Conv2dOptions};
use cnn_tensor::PackedLhs;
use common::{randn4, rel_err};

#[test]
fn f32_without_the_avx512_kernel_matches_naive() {
    std::env::set_var("CNN_DISABLE_AVX512", "1");
    assert!(!PackedLhs::<f32>::uses_kernel());
    let cases = [
        ([3, 4, 11, 9], [6, 2, 3, 3], Conv2dOptions::default().with_padding(1).with_groups(2)),
        ([2, 8, 20, 20], [4, 8, 5, 5], Conv2dOptions::default().with_stride(2).with_padding(2)),
        ([20, 16, 4, 4], [8, 16, 1, 1], Conv2dOptions::default()),
        ([1, 64, 40, 40], [8, 64, 3, 3], Conv2dOptions::default().with_padding(1)),
    ];
    for (xs, ws, opts) in cases {
        let (x, w) = (randn4(xs, 1).mapv(|v| v as f32), randn4(ws, 2).mapv(|v| v as f32));
        let (x64, w64) = (x.mapv(f64::from), w.mapv(f64::from));
        let y = conv2d_forward(x.view(), w.view(), None, &opts).unwrap();
        let want = conv2d_forward_naive(x64.view(), w64.view(), None, &opts).unwrap();
        assert!(rel_err(&y.mapv(f64::from), &want) < 1e-5, "forward {xs:?}");
        let dy = randn4(want.dim().into(), 3).mapv(|v| v as f32);
        let g = conv2d_backward(x.view(), w.view(), dy.view(), &opts).unwrap();
        let gw = conv2d_backward_naive(x64.view(), w64.view(), dy.mapv(f64::from).view(), &opts)
            .unwrap();
        assert!(rel_err(&g.dx.mapv(f64::from), &gw.dx) < 1e-5, "dx {xs:?}");
        assert!(rel_err(&g.dw.mapv(f64::from), &gw.dw) < 1e-5, "dw {xs:?}");
    }
}
