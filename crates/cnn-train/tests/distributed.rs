//! Data-parallel training on threads ([`LocalGroup`]), the same ring and the
//! same checks as on MPI ranks (the `distributed_check` example runs them
//! under `mpirun`): synced ResNet training in f64 equals one process, every
//! sample is read once per epoch, all ranks end with the same bits, and a
//! distributed run resumed from its checkpoint equals the uninterrupted one.

#![allow(clippy::unwrap_used)]

#[path = "../examples/distributed_check/checks.rs"]
mod checks;

use std::sync::Arc;

use cnn_tensor::collective::{Collective, LocalGroup};

/// `f` on every rank of a group of `size` threads.
fn on_threads<R: Send>(size: usize, f: impl Fn(Arc<dyn Collective>) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(size)
            .into_iter()
            .map(|g| {
                let f = &f;
                s.spawn(move || f(Arc::new(g)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn synced_f64_resnet_on_two_and_three_ranks_equals_one_process() {
    for ranks in [2, 3] {
        for line in on_threads(ranks, |g| checks::f64_resnet_equals_one_process(g, 3)) {
            println!("{}", line.unwrap());
        }
    }
}

#[test]
fn three_ranks_read_every_sample_once_per_epoch() {
    for r in on_threads(3, checks::every_sample_once_per_epoch) {
        r.unwrap();
    }
}
