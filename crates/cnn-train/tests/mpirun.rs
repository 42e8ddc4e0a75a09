//! The checks of `distributed.rs`, and failing ranks, on real MPI ranks:
//! the `distributed_check` binary under `mpirun`. Feature `distributed`
//! (CI installs OpenMPI and runs these; docs/distributed.md).

#![cfg(feature = "distributed")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use cnn_test_support::mpi::{exclusive, mpirun, Job};

/// The `distributed_check` binary, which cargo builds for this test.
fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_distributed_check"))
}

fn check(ranks: usize, what: &str) -> Job {
    let _one_job_at_a_time = exclusive();
    let tmp = cnn_test_support::temp_dir("mpirun");
    mpirun(ranks, &example(), &[what], tmp.path(), Duration::from_secs(120))
}

#[test]
fn two_and_three_ranks_with_synced_batch_norm_train_an_f64_resnet_as_one_process() {
    for ranks in [2, 3] {
        let job = check(ranks, "f64-resnet");
        assert!(job.ok(), "{}", job.output());
        let want = format!("ok: f64 ResNet-8, 4 steps on {ranks} ranks");
        assert!(job.stdout.contains(&want), "{}", job.output());
    }
}

#[test]
fn three_ranks_train_an_f64_resnet_through_the_trainer_as_one_process() {
    let job = check(3, "f64-trainer");
    assert!(job.ok(), "{}", job.output());
    assert!(
        job.stdout.contains("ok: f64 Trainer, ResNet-8, 4 steps of batches of 11 on 3 ranks"),
        "{}",
        job.output()
    );
}

#[test]
fn three_ranks_train_through_the_trainer_as_one_process() {
    let job = check(3, "trainer");
    assert!(job.ok(), "{}", job.output());
    assert!(
        job.stdout.contains("ok: Trainer, 20 steps of batches of 11 on 3 ranks"),
        "{}",
        job.output()
    );
}

#[test]
fn three_ranks_on_batches_not_divisible_by_three_read_every_sample_once() {
    let job = check(3, "every-sample-once");
    assert!(job.ok(), "{}", job.output());
    assert!(job.stdout.contains("every sample read once per epoch"), "{}", job.output());
}

#[test]
fn a_rank_with_an_error_aborts_the_job_with_its_message() {
    let job = check(2, "rank-fails");
    assert!(job.code.is_some(), "hung until the timeout:\n{}", job.output());
    assert_ne!(job.code, Some(0), "{}", job.output());
    assert!(job.stderr.contains("of 2: sample 37: corrupt (on purpose)"), "{}", job.output());
    assert!(job.seconds < 60.0, "{}", job.output());
}

#[test]
fn a_rank_that_exits_ends_the_job_instead_of_hanging() {
    let job = check(2, "rank-exits");
    assert!(job.code.is_some(), "hung until the timeout:\n{}", job.output());
    assert_ne!(job.code, Some(0), "{}", job.output());
    assert!(job.stderr.contains("exited with non-zero status"), "{}", job.output());
}
