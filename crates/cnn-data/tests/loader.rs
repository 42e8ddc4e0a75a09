//! The digits set and the loader's determinism.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cnn_augment::{Compose, PadMode, RandomCrop, RandomHorizontalFlip};
use cnn_data::{DataLoader, Dataset, Digits};

#[test]
fn digits_are_all_there_and_split_stratified() {
    let d = Digits::load().unwrap();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.classes().len(), 10);
    let (img, label) = d.get(0).unwrap();
    assert_eq!(img.dim(), (1, 8, 8));
    assert_eq!(label, 0);
    assert!(img.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let counts = |ds: &dyn Dataset| {
        let mut c = [0usize; 10];
        for i in 0..ds.len() {
            c[ds.get(i).unwrap().1] += 1;
        }
        c
    };
    let all = counts(&d);
    let (train, test) = d.split(0.2, 3).unwrap();
    let (tr, te) = (counts(&train), counts(&test));
    for k in 0..10 {
        assert_eq!(tr[k] + te[k], all[k]);
        assert_eq!(te[k], (all[k] as f64 * 0.2).round() as usize, "class {k}");
    }
    assert!(same_seed_same_split());
    assert!(Digits::parse_gz(b"not gzip", "x").is_err());
}

fn same_seed_same_split() -> bool {
    let a = Digits::load().unwrap().split(0.2, 3).unwrap().1;
    let b = Digits::load().unwrap().split(0.2, 3).unwrap().1;
    a.indices() == b.indices()
}

fn loader() -> DataLoader {
    let pipeline = Compose::new()
        .then(RandomCrop::new([8, 8], 1, PadMode::Constant(0.0)).unwrap())
        .then(RandomHorizontalFlip::new(0.5).unwrap());
    DataLoader::new(Arc::new(Digits::load().unwrap()), 100, 11)
        .unwrap()
        .with_transform(Arc::new(pipeline))
}

#[test]
fn every_index_once_per_epoch_and_epochs_reshuffle() {
    let l = loader();
    let mut seen = l.order(0);
    seen.sort_unstable();
    assert_eq!(seen, (0..1797).collect::<Vec<_>>());
    assert_ne!(l.order(0), l.order(1));
    assert_eq!(l.batches_per_epoch(), 18);
    let sizes: Vec<usize> = l.epoch(0).map(|b| b.unwrap().labels.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 1797);
    assert_eq!(*sizes.last().unwrap(), 97);
    assert_eq!(loader().with_drop_last(true).batches_per_epoch(), 17);
}

#[test]
fn batches_are_bitwise_equal_on_any_thread_count_and_on_resume() {
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| loader().batch(3, 5).unwrap())
    };
    assert_eq!(run(1), run(2));
    // A fresh loader (a resumed run) sees the same batch of epoch 3.
    assert_eq!(loader().batch(3, 5).unwrap(), run(2));
    assert!(loader().batch(0, 18).is_err());
}

#[test]
fn channel_stats_match_a_two_pass_computation() {
    let d = Digits::load().unwrap();
    let (mean, std) = cnn_data::channel_stats(&d).unwrap();
    let mut all = Vec::new();
    for i in 0..d.len() {
        all.extend(d.get(i).unwrap().0.iter().map(|&v| v as f64));
    }
    let m = all.iter().sum::<f64>() / all.len() as f64;
    let s = (all.iter().map(|v| (v - m).powi(2)).sum::<f64>() / all.len() as f64).sqrt();
    assert!(
        (mean[0] - m).abs() < 1e-12 && (std[0] - s).abs() < 1e-12,
        "{mean:?} {std:?} vs {m} {s}"
    );
}

#[test]
fn the_shares_of_all_ranks_in_rank_order_are_the_batch_bitwise() {
    let l = loader(); // 1797 samples in batches of 100: the last has 97
    for ranks in 1..=4 {
        for (epoch, b) in [(0u64, 0usize), (1, 5), (2, 17)] {
            let whole = l.batch(epoch, b).unwrap();
            let shares: Vec<_> = (0..ranks).map(|r| l.shard(epoch, b, r, ranks).unwrap()).collect();
            let sizes: Vec<usize> = shares.iter().map(|s| s.labels.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            let views: Vec<_> = shares.iter().map(|s| s.images.view()).collect();
            assert_eq!(ndarray::concatenate(ndarray::Axis(0), &views).unwrap(), whole.images);
            let labels: Vec<usize> = shares.iter().flat_map(|s| s.labels.clone()).collect();
            assert_eq!(labels, whole.labels);
        }
        // The iterator gives the same shares, each with its whole batch's size.
        let from_iter: Vec<(usize, usize)> = l
            .epoch_shards_from(3, 16, ranks - 1, ranks)
            .map(|r| r.map(|(s, n)| (s.labels.len(), n)).unwrap())
            .collect();
        let last = cnn_data::shard_range(97, ranks - 1, ranks).len();
        assert_eq!(
            from_iter,
            vec![(cnn_data::shard_range(100, ranks - 1, ranks).len(), 100), (last, 97)]
        );
    }
}

#[test]
fn a_share_that_would_be_empty_or_a_rank_past_the_group_is_an_error() {
    let tiny = DataLoader::new(Arc::new(Digits::load().unwrap()), 2, 0).unwrap();
    assert_eq!(tiny.batch_len(0), 2);
    assert_eq!(
        tiny.shard(0, 0, 0, 3).unwrap_err().to_string(),
        "data_loader: invalid setting: batch 0 has 2 samples, fewer than the 3 ranks that share it"
    );
    assert_eq!(
        tiny.shard(0, 0, 3, 3).unwrap_err().to_string(),
        "data_loader: invalid setting: rank 3 of 3"
    );
}
