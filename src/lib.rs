//! `cnn`: convolutional networks on the CPU, with hand-written backward
//! checked against PyTorch. This facade re-exports the workspace's crates.
pub use cnn_conv as conv;
pub use cnn_init as init;
pub use cnn_tensor as tensor;
