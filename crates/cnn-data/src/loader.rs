//! A deterministic parallel `DataLoader`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cnn_augment::Transform;
use cnn_tensor::random::{seeded_rng, splitmix as mix};
use cnn_tensor::untrusted::contain_panic;
use cnn_tensor::{Error, Result};
use ndarray::{Array4, Axis};
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::{BadSamples, Dataset, SampleName};

/// Positions `[rank·n/ranks, (rank+1)·n/ranks)`: rank `rank`'s share of a
/// batch of `n` when `ranks` processes split it (shares differ by at most one
/// sample, and in rank order they are the batch).
pub fn shard_range(n: usize, rank: usize, ranks: usize) -> std::ops::Range<usize> {
    let ranks = ranks.max(1);
    rank * n / ranks..(rank + 1) * n / ranks
}

/// One batch: images `[B, C, H, W]` and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The images.
    pub images: Array4<f32>,
    /// The class of each image.
    pub labels: Vec<usize>,
}

/// Batches of a dataset, shuffled per epoch and transformed in parallel.
///
/// Everything random comes from the seed: the order of epoch `e` from
/// `(seed, e)`, and sample `i`'s transform from `(seed, e, i)`. So the batches
/// are bitwise the same on any number of threads, and a run resumed at epoch
/// `k` sees exactly the batches of one that never stopped.
pub struct DataLoader {
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    drop_last: bool,
    transform: Option<Arc<dyn Transform<f32>>>,
    bad_samples: BadSamples,
    /// Samples read by this loader so far, for the message of a bad one.
    read: Arc<AtomicU64>,
}

impl DataLoader {
    /// Batches of `batch_size`, shuffled, last partial batch kept.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero batch size.
    pub fn new(dataset: Arc<dyn Dataset>, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::config("data_loader", "batch_size must be positive"));
        }
        Ok(DataLoader {
            dataset,
            batch_size,
            seed,
            shuffle: true,
            drop_last: false,
            transform: None,
            bad_samples: BadSamples::Fail,
            read: Arc::new(AtomicU64::new(0)),
        })
    }
    cnn_tensor::setters! {
        /// Shuffle each epoch (default) or keep the dataset's order.
        with_shuffle: shuffle: bool;
        /// Drop a last batch smaller than `batch_size`.
        with_drop_last: drop_last: bool;
    }
    /// A transform applied to every sample (augmentation, normalization).
    pub fn with_transform(mut self, transform: Arc<dyn Transform<f32>>) -> Self {
        self.transform = Some(transform);
        self
    }

    cnn_tensor::setters! {
        /// What to do with a sample that cannot be read (default [`BadSamples::Fail`]).
        with_bad_samples: bad_samples: BadSamples;
    }

    /// The policy for unreadable samples.
    pub fn bad_samples(&self) -> &BadSamples {
        &self.bad_samples
    }

    /// A loader with these settings (batch size, seed, shuffling, transform,
    /// policy for unreadable samples) over another dataset: a sample of the
    /// training set, say.
    pub fn over(&self, dataset: Arc<dyn Dataset>) -> DataLoader {
        DataLoader {
            dataset,
            transform: self.transform.clone(),
            bad_samples: self.bad_samples.clone(),
            read: Arc::new(AtomicU64::new(0)),
            ..*self
        }
    }

    /// This loader with another batch size.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero batch size.
    pub fn with_batch_size(&self, batch_size: usize) -> Result<DataLoader> {
        let mut l = self.over(self.dataset.clone());
        if batch_size == 0 {
            return Err(Error::config("data_loader", "batch_size must be positive"));
        }
        l.batch_size = batch_size;
        Ok(l)
    }

    /// The dataset the batches are drawn from.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The seed that fixes the order and the transforms.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            order.shuffle(&mut seeded_rng(mix(self.seed ^ mix(epoch.wrapping_add(0x9e37_79b9)))));
        }
        order
    }

    /// Batch `b` of `epoch`.
    ///
    /// # Errors
    /// [`Error::Config`] for a batch index past the epoch; whatever a sample or
    /// transform fails with; [`Error::Shape`] when samples differ in shape.
    pub fn batch(&self, epoch: u64, b: usize) -> Result<Batch> {
        let order = self.order(epoch);
        self.batch_from(&order, epoch, b)
    }

    fn batch_from(&self, order: &[usize], epoch: u64, b: usize) -> Result<Batch> {
        if b >= self.batches_per_epoch() {
            return Err(Error::config(
                "data_loader",
                format!("batch {b} past the {} of an epoch", self.batches_per_epoch()),
            ));
        }
        self.load(&order[self.batch_range(b)], epoch)
    }

    /// Positions in the epoch's order of batch `b`'s samples.
    fn batch_range(&self, b: usize) -> std::ops::Range<usize> {
        b * self.batch_size..((b + 1) * self.batch_size).min(self.dataset.len())
    }

    /// Samples in batch `b` (the last may be short).
    pub fn batch_len(&self, b: usize) -> usize {
        self.batch_range(b).len()
    }

    /// Rank `rank`'s share of batch `b` of `epoch` when `ranks` processes split
    /// every batch (data-parallel training): the batch's samples at positions
    /// [`shard_range`]`(len, rank, ranks)`, loaded and transformed exactly as
    /// in [`DataLoader::batch`], so the shares of all ranks, in rank order,
    /// are that batch.
    ///
    /// # Errors
    /// As [`DataLoader::batch`]; [`Error::Config`] for a rank past `ranks`
    /// or an empty share (a batch of fewer samples than ranks).
    pub fn shard(&self, epoch: u64, b: usize, rank: usize, ranks: usize) -> Result<Batch> {
        let order = self.order(epoch);
        self.shard_from(&order, epoch, b, rank, ranks)
    }

    fn shard_from(
        &self,
        order: &[usize],
        epoch: u64,
        b: usize,
        rank: usize,
        ranks: usize,
    ) -> Result<Batch> {
        if rank >= ranks {
            return Err(Error::config("data_loader", format!("rank {rank} of {ranks}")));
        }
        if b >= self.batches_per_epoch() {
            return Err(Error::config(
                "data_loader",
                format!("batch {b} past the {} of an epoch", self.batches_per_epoch()),
            ));
        }
        let range = self.batch_range(b);
        let share = shard_range(range.len(), rank, ranks);
        if share.is_empty() {
            return Err(Error::config(
                "data_loader",
                format!(
                    "batch {b} has {} samples, fewer than the {ranks} ranks that share it",
                    range.len()
                ),
            ));
        }
        self.load(&order[range][share], epoch)
    }

    /// Rank `rank`'s shares of the batches of `epoch` from batch `start` on,
    /// each with the whole batch's size (see [`DataLoader::shard`]).
    pub fn epoch_shards_from(
        &self,
        epoch: u64,
        start: usize,
        rank: usize,
        ranks: usize,
    ) -> impl Iterator<Item = Result<(Batch, usize)>> + '_ {
        let order = self.order(epoch);
        (start..self.batches_per_epoch())
            .map(move |b| Ok((self.shard_from(&order, epoch, b, rank, ranks)?, self.batch_len(b))))
    }

    /// Sample `i` read and transformed with its `(seed, epoch, i)` draws;
    /// `None` when it cannot be read and the policy skips it. A panic in the
    /// dataset's reader or the transform is contained here, so a worker
    /// thread never takes the run (or the pool) down with it.
    fn sample(&self, i: usize, epoch: u64) -> Result<Option<(ndarray::Array3<f32>, usize)>> {
        let before = self.read.load(Ordering::Relaxed);
        let Some((img, label)) = self.bad_samples.read(&*self.dataset, i, before)? else {
            return Ok(None);
        };
        self.read.fetch_add(1, Ordering::Relaxed);
        let img = match &self.transform {
            Some(t) => {
                let mut rng =
                    seeded_rng(mix(self.seed ^ mix(epoch) ^ mix(i as u64).rotate_left(17)));
                let name = SampleName { dataset: &*self.dataset, index: i };
                contain_panic(name, "the transform", || t.apply(img, &mut rng))?
            }
            None => img,
        };
        Ok(Some((img, label)))
    }

    /// The samples at `idx`, transformed with their `(seed, epoch, index)`
    /// draws; under [`BadSamples::Skip`] the unreadable ones are left out
    /// (the batch may come out empty: `[0, 0, 0, 0]` and no labels).
    fn load(&self, idx: &[usize], epoch: u64) -> Result<Batch> {
        if idx.is_empty() {
            return Err(Error::config("data_loader", "a batch needs at least one sample"));
        }
        let samples: Vec<Option<_>> =
            idx.par_iter().map(|&i| self.sample(i, epoch)).collect::<Result<_>>()?;
        let samples: Vec<_> = samples.into_iter().flatten().collect();
        let Some(first) = samples.first() else {
            return Ok(Batch { images: Array4::zeros((0, 0, 0, 0)), labels: Vec::new() });
        };
        let shape = first.0.dim();
        if let Some((img, _)) = samples.iter().find(|(img, _)| img.dim() != shape) {
            return Err(Error::shape(
                "data_loader",
                format!("samples of shapes {shape:?} and {:?} in one batch", img.dim()),
            ));
        }
        let views: Vec<_> =
            samples.iter().map(|(img, _)| img.view().insert_axis(Axis(0))).collect();
        let images = ndarray::concatenate(Axis(0), &views)
            .map_err(|e| Error::shape("data_loader", e.to_string()))?;
        Ok(Batch { images, labels: samples.iter().map(|s| s.1).collect() })
    }

    /// All batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start` on: where a run that stopped
    /// mid-epoch resumes (the same batches an unbroken epoch would give).
    pub fn epoch_from(&self, epoch: u64, start: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        let order = self.order(epoch);
        (start..self.batches_per_epoch()).map(move |b| self.batch_from(&order, epoch, b))
    }
}
