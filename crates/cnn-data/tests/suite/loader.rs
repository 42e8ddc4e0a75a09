//! The digits set and the loader's determinism.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cnn_augment::{Compose, PadMode, RandomCrop, RandomHorizontalFlip};
use cnn_data::{BadSamples, DataLoader, Dataset, Digits, SkipLog};

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

/// The digits, but reading some samples fails: `panics` panic inside `get`
/// (as a decoder would), `corrupt` return a format error naming a file.
struct Flaky {
    inner: Digits,
    panics: Vec<usize>,
    corrupt: Vec<usize>,
}

impl Dataset for Flaky {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> cnn_tensor::Result<(ndarray::Array3<f32>, usize)> {
        if self.panics.contains(&index) {
            let v: Vec<u8> = Vec::new();
            let _ = v[index]; // a dependency's out-of-bounds index
        }
        if self.corrupt.contains(&index) {
            return Err(cnn_tensor::Error::format(
                format!("photos/{index}.jpg"),
                "cannot decode: truncated",
            ));
        }
        self.inner.get(index)
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn source(&self, index: usize) -> Option<String> {
        Some(format!("photos/{index}.jpg"))
    }
}

fn flaky(panics: Vec<usize>, corrupt: Vec<usize>) -> Arc<dyn Dataset> {
    Arc::new(Flaky { inner: Digits::load().unwrap(), panics, corrupt })
}

#[test]
fn a_panic_inside_a_dataset_is_the_epochs_error_and_the_next_epoch_runs() {
    let loader = DataLoader::new(flaky(vec![7], vec![]), 64, 1).unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    let errors: Vec<String> =
        results.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("photos/7.jpg: the dataset's reader failed on this file (it panicked: index out of bounds"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("samples read before it"), "{}", errors[0]);
    // The pool is not poisoned: the next epoch reads every other batch as before.
    let ok = loader.epoch(1).filter(|r| r.is_ok()).count();
    assert_eq!(ok, loader.batches_per_epoch() - 1);
}

#[test]
fn unreadable_samples_fail_with_the_file_named_or_are_skipped_deterministically() {
    let bad = vec![3, 500, 1001, 1796];
    let fail = DataLoader::new(flaky(vec![], bad.clone()), 64, 2).unwrap();
    let e = fail.epoch(0).find_map(|r| r.err()).unwrap().to_string();
    assert!(e.starts_with("photos/") && e.contains("cannot decode: truncated ("), "{e}");

    let log = Arc::new(SkipLog::new());
    let skip = DataLoader::new(flaky(vec![1001], bad.clone()), 64, 2)
        .unwrap()
        .with_bad_samples(BadSamples::Skip(log.clone()));
    let plain = DataLoader::new(Arc::new(Digits::load().unwrap()), 64, 2).unwrap();
    let order = plain.order(0);
    let mut seen = 0;
    for (b, (got, all)) in skip.epoch(0).zip(plain.epoch(0)).enumerate() {
        let (got, all) = (got.unwrap(), all.unwrap());
        // The batch is the full one without its bad samples, in the same order.
        let positions = b * 64..((b + 1) * 64).min(order.len());
        let keep: Vec<usize> =
            positions.clone().filter(|&p| !bad.contains(&order[p])).map(|p| p - b * 64).collect();
        assert_eq!(got.labels, keep.iter().map(|&k| all.labels[k]).collect::<Vec<_>>());
        for (row, &k) in keep.iter().enumerate() {
            assert_eq!(
                got.images.index_axis(ndarray::Axis(0), row),
                all.images.index_axis(ndarray::Axis(0), k)
            );
        }
        seen += got.labels.len();
    }
    assert_eq!(seen, 1797 - bad.len());
    let entries = log.entries();
    let mut names: Vec<String> = bad.iter().map(|i| format!("photos/{i}.jpg")).collect();
    names.sort();
    assert_eq!(entries.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), names);
    assert!(entries.iter().any(|(_, e)| e.contains("it panicked")), "{entries:?}");
    // A second epoch skips the same files: each is listed once.
    assert_eq!(skip.epoch(1).map(|b| b.unwrap().labels.len()).sum::<usize>(), 1797 - bad.len());
    assert_eq!(log.len(), bad.len());
    // The log round-trips through its text (a resumed run reads skipped.txt).
    let again = SkipLog::new();
    again.extend_from_text(&log.to_text());
    assert_eq!(again.entries(), log.entries());
}

#[test]
fn a_batch_of_only_unreadable_samples_comes_out_empty() {
    let log = Arc::new(SkipLog::new());
    let loader = DataLoader::new(flaky(vec![], (0..1797).collect()), 100, 0)
        .unwrap()
        .with_bad_samples(BadSamples::Skip(log.clone()));
    let b = loader.batch(0, 0).unwrap();
    assert!(b.labels.is_empty() && b.images.is_empty());
    assert_eq!(log.len(), 100);
}
