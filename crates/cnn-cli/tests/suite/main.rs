//! cnn-cli's integration tests in one binary. Each module was a test file of
//! its own; linked as one, the workspace's generic code is compiled and
//! optimized once for all of them instead of once per file, which was most
//! of CI's build time.
//! Apart: `distributed` (built with the `distributed` feature, run by CI
//! under MPI).

#[path = "../common/mod.rs"]
mod common;

mod bad_images;
mod cli;
mod disk_faults;
mod export;
mod precision;
mod workflow;
