//! Activations and dropout with PyTorch's semantics, forward and
//! hand-written backward.
//!
//! | ours | PyTorch | derivative |
//! | --- | --- | --- |
//! | `Activation::Relu` | `F.relu` | 1 for x > 0, else 0 (0 at 0, as PyTorch) |
//! | `Activation::LeakyRelu(a)` | `F.leaky_relu(x, a)` | 1 for x > 0, else a |
//! | `Activation::Sigmoid` | `torch.sigmoid` | y(1 − y) |
//! | `Activation::Tanh` | `torch.tanh` | 1 − y² |
//! | `Activation::Gelu` | `F.gelu(x)` | Φ(x) + x·φ(x) |
//! | `Activation::GeluTanh` | `F.gelu(x, approximate="tanh")` | from the tanh form |
//! | [`Dropout`] | `nn.Dropout(p)` | the same mask, scaled by 1/(1 − p) |
//!
//! ```
//! use cnn_act::{Act, Dropout};
//! use cnn_tensor::{random, Layer, Mode};
//!
//! let mut gelu = Act::<f64>::gelu();
//! let x = random::normal(&[2, 3], 0.0, 1.0, &mut random::seeded_rng(0));
//! let report = cnn_tensor::gradcheck::check_layer(&mut gelu, &x, 1, &Default::default())?;
//! assert!(report.passed(), "{report}");
//!
//! let mut drop = Dropout::new(0.5, 42)?;
//! let y = Layer::<f64>::forward(&mut drop, x.clone(), Mode::Eval)?;
//! assert_eq!(y, x); // identity in evaluation
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod drop_path;
mod dropout;
mod fast_f32;
mod kernels;
mod layers;

pub use drop_path::DropPath;
pub use dropout::Dropout;
pub use kernels::{
    activation_backward, activation_forward, activation_forward_copy, activation_in_place,
    rectifier_backward_masked, rectifier_forward_masked, Activation,
};
pub use layers::Act;
