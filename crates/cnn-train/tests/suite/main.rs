//! cnn-train's integration tests in one binary. Each module was a test file of
//! its own; linked as one, the workspace's generic code is compiled and
//! optimized once for all of them instead of once per file, which was most
//! of CI's build time.
//! Apart: `fuzz`, whose counting global allocator must see one test at a
//! time, and `distributed` and `mpirun` (the `distributed` feature, run by
//! CI under MPI).

mod bad_data;
mod bf16;
mod checkpoint;
mod eval;
mod resume;
mod tensorboard;
mod trainer_paths;
mod transfer;
mod tune;
