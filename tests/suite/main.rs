//! cnn's integration tests in one binary. Each module was a test file of
//! its own; linked as one, the workspace's generic code is compiled and
//! optimized once for all of them instead of once per file, which was most
//! of CI's build time.
//! Apart: `parity`, run by itself on other reference files
//! (`CNN_PARITY_DIR=… cargo test --release --test parity`).

mod determinism;
mod torchvision_keys;
