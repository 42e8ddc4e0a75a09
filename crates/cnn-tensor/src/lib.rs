//! Core of the `cnn` workspace: the element type [`Float`], the [`Error`]
//! type, [`Param`], the [`Layer`] trait, a strided [`gemm`], the
//! [`linear`](linear_forward) op and [`Linear`] layer, softmax
//! [`cross_entropy`](cross_entropy_forward), and the public [`gradcheck`].
//!
//! ```
//! use cnn_tensor::{gradcheck, random, Layer, Linear, LinearConfig, Mode};
//!
//! let mut rng = random::seeded_rng(0);
//! let mut fc = Linear::<f64>::new(LinearConfig::new(8, 3), &mut rng)?;
//! let x = random::normal(&[4, 8], 0.0, 1.0, &mut rng);
//! let y = fc.forward(x.clone(), Mode::Eval)?;
//! assert_eq!(y.shape(), &[4, 3]);
//!
//! // Hand-written backward against central differences.
//! let report = gradcheck::check_layer(&mut fc, &x, 1, &Default::default())?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod error;
mod float;
mod gemm;
pub mod gradcheck;
mod io;
mod layer;
mod linear;
mod loss;
mod packed;
mod param;
pub mod random;
mod reduce;
pub mod scratch;
pub mod simd;

pub use error::{Error, Result};
pub use float::Float;
pub use gemm::{gemm, matmul};
pub use io::write_atomic;
pub use layer::{join_key, Layer, Mode};
pub use linear::{linear_backward, linear_forward, Linear, LinearConfig, LinearGrads};
pub use loss::{cross_entropy_backward, cross_entropy_forward, log_softmax, softmax};
pub use packed::{gemm_packed, gemm_packed_split, GemmSplit, PackedLhs, PANELS};
pub use param::Param;
pub use reduce::{sum, SUM_LANES};

/// ndarray, re-exported so users name the same version we use.
pub use ndarray;
pub use ndarray::{ArrayD, IxDyn};
