//! 2-D convolution and pooling for NCHW tensors, forward and hand-written
//! backward, with PyTorch's layouts and semantics.
//!
//! Two levels in one crate: kernels ([`conv2d_forward`], [`conv2d_backward`],
//! the pools), stateless functions over ndarray views, each beside a naive
//! twin the tests hold it to; and layers ([`Conv2d`], [`MaxPool2d`],
//! [`AvgPool2d`], [`GlobalAvgPool2d`]) that own their parameters and
//! implement [`cnn_tensor::Layer`].
//!
//! ```
//! use cnn_conv::{Conv2d, Conv2dConfig, MaxPool2d, Pool2dOptions};
//! use cnn_tensor::{random, Layer, Mode};
//!
//! let mut rng = random::seeded_rng(0);
//! let mut conv = Conv2d::<f32>::new(Conv2dConfig::new(3, 16, 3).with_padding(1), &mut rng)?;
//! let mut pool = MaxPool2d::new(Pool2dOptions::new(2));
//! let x = random::normal(&[8, 3, 32, 32], 0.0, 1.0, &mut rng);
//! let y = pool.forward(conv.forward(x, Mode::Train)?, Mode::Train)?;
//! assert_eq!(y.shape(), &[8, 16, 16, 16]);
//! let dx = conv.backward(pool.backward(y)?)?;
//! assert_eq!(dx.shape(), &[8, 3, 32, 32]);
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

// The modules form a DAG, from the bottom: shapes (`geometry`), matrix views
// and products (`matrix`), what follows a product (`epilogue`), the work cut
// (`plan`), the lowering (`im2col`); the kernels on them (`im2col_gemm`,
// `winograd`, `depthwise`), none importing another; the prepared-weight
// stores (`weight_cache`, `fold`); then `conv2d`, which chooses the kernel;
// then the layers.
mod adaptive;
mod conv2d;
mod depthwise;
mod epilogue;
mod fold;
mod geometry;
mod im2col;
mod im2col_gemm;
mod im2col_panels;
mod layers;
mod matrix;
pub mod naive;
mod plan;
mod pool;
#[cfg(test)]
mod task_balance;
mod weight_cache;
mod winograd;

pub use adaptive::{adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward, AdaptiveAvgPool2d};
pub use conv2d::{
    conv2d_backward, conv2d_forward, conv2d_forward_with, with_conv_algorithm, Conv2dGrads,
};
pub use epilogue::Epilogue;
pub use fold::ChannelAffine;
pub use geometry::{conv_out_len, Conv2dOptions, ConvAlgorithm, ConvGeometry};
pub use layers::{AvgPool2d, Conv2d, Conv2dConfig, GlobalAvgPool2d, MaxPool2d};
pub use pool::naive as pool_naive;
pub use pool::{
    avg_pool2d_backward, avg_pool2d_forward, global_avg_pool2d_backward, global_avg_pool2d_forward,
    max_pool2d_backward, max_pool2d_forward, pool_out_len, MaxPoolOutput, Pool2dOptions,
};
