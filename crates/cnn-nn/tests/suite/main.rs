//! cnn-nn's integration tests in one binary. Each module was a test file of
//! its own; linked as one, the workspace's generic code is compiled and
//! optimized once for all of them instead of once per file, which was most
//! of CI's build time.

mod bf16;
mod blocks;
mod containers;
mod onnx;
