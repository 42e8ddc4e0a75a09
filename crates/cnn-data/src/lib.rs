//! Datasets and a deterministic parallel loader.
//!
//! So far: the [`Dataset`] trait and [`Subset`], the embedded UCI
//! [`Digits`] (1797 images of 8×8; E. Alpaydin and C. Kaynak, CC BY 4.0)
//! with a stratified split, MNIST-format IDX files ([`IdxDataset`]), CIFAR-10
//! and CIFAR-100 binaries ([`Cifar`]), image folders ([`ImageFolder`]), the
//! [`DataLoader`] with its policy for unreadable samples ([`BadSamples`],
//! [`SkipLog`]), per-channel statistics and an augmentation [`preview_grid`].
//!
//! ```
//! use std::sync::Arc;
//! use cnn_data::{DataLoader, Dataset, Digits};
//!
//! let (train, test) = Digits::load()?.split(0.2, 0)?;
//! assert_eq!(train.len() + test.len(), 1797);
//! let loader = DataLoader::new(Arc::new(train), 64, 7)?;
//! let batch = loader.batch(0, 0)?;
//! assert_eq!(batch.images.shape(), &[64, 1, 8, 8]);
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod bad_samples;
mod cifar;
mod dataset;
mod digits;
mod files;
mod folder;
mod idx;
mod loader;
mod memory;
mod preview;
mod stats;

pub use bad_samples::{BadSamples, SampleName, SkipLog};
pub use cifar::Cifar;
pub use dataset::{stratified_split, Dataset, Subset};
pub use digits::Digits;
pub use folder::{read_image, read_image_limited, ImageFolder, MAX_DECODED_BYTES, MAX_SIDE};
pub use idx::IdxDataset;
pub use loader::{shard_range, Batch, DataLoader};
pub use memory::{Resized, TensorDataset};
pub use preview::{first_of_each_class, preview_grid, preview_grid_png};
pub use stats::{channel_stats, channel_stats_with};
