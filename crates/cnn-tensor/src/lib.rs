//! Core of the `cnn` workspace: the element type [`Float`], the [`Error`]
//! type, [`Param`], the [`Layer`] trait, a strided [`gemm`], the
//! [`linear`](linear_forward) op (the layer is `cnn_nn::Linear`), softmax
//! [`cross_entropy`](cross_entropy_forward), and the public [`gradcheck`].
//!
//! ```
//! use cnn_tensor::{cross_entropy, gradcheck, linear_backward, linear_forward, random};
//! use ndarray::{ArrayView2, Ix2};
//!
//! let mut rng = random::seeded_rng(0);
//! let x = random::normal(&[4, 8], 0.0, 1.0, &mut rng);
//! let w = random::normal(&[3, 8], 0.0, 0.3, &mut rng);
//! fn two(a: &cnn_tensor::ArrayD<f64>) -> ArrayView2<'_, f64> {
//!     a.view().into_dimensionality::<Ix2>().unwrap()
//! }
//! let logits = linear_forward(two(&x), two(&w), None)?.into_dyn();
//! let (loss, dlogits) = cross_entropy(&logits, &[0, 2, 1, 2], 0.0)?;
//! assert!(loss > 0.0 && dlogits.shape() == [4, 3]);
//!
//! // Hand-written backward against central differences.
//! let report = gradcheck::check_fn(
//!     |t| Ok(linear_forward(two(&t[0]), two(&t[1]), None)?.into_dyn()),
//!     |t, dy| {
//!         let g = linear_backward(two(&t[0]), two(&t[1]), two(dy))?;
//!         Ok(vec![g.dx.into_dyn(), g.dw.into_dyn()])
//!     },
//!     &[x, w],
//!     1,
//!     &Default::default(),
//! )?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

pub mod bf16;
pub mod collective;
mod error;
mod float;
mod gemm;
mod gemm_nt;
mod gemm_nt_bf16;
pub mod gradcheck;
mod io;
mod layer;
mod linear;
mod loss;
mod packed;
#[cfg(target_arch = "x86_64")]
mod packed_pairs;
mod param;
pub mod precision;
pub mod random;
mod rectify;
mod reduce;
pub mod scratch;
mod setters;
pub mod simd;
pub mod switches;
pub mod untrusted;

pub use error::{Error, Result};
pub use float::Float;
pub use gemm::{gemm, matmul};
pub use gemm_nt::{gemm_nt, gemm_nt_lanes, gemm_nt_uses_kernel, reduce_lanes, NT_LANES};
pub use gemm_nt_bf16::gemm_nt_lanes_bf16;
pub use io::write_atomic;
pub use layer::{join_key, Layer, Mode, Wiring};
pub use linear::{linear_backward, linear_forward, LinearGrads};
pub use loss::{
    cross_entropy, cross_entropy_backward, cross_entropy_forward, log_softmax, softmax,
};
pub use packed::{
    gemm_packed, gemm_packed_split, gemm_panels_by, gemm_panels_by_split, gemm_prepacked,
    GemmSplit, PackedLhs, RhsPanels, PANELS,
};
pub use param::{Param, Version};
pub use precision::{precision, with_precision, Precision};
pub use rectify::rectify_with_signs;
pub use reduce::{sum, SUM_LANES};

/// ndarray, re-exported so users name the same version we use.
pub use ndarray;
pub use ndarray::{ArrayD, IxDyn};
