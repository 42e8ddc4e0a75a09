//! The data-parallel checks of `checks.rs` on the ranks of an MPI job, and
//! two ways for a rank to fail. Built with the `distributed` feature; run by
//! crates/cnn-train/tests/mpirun.rs, or by hand:
//!
//! ```text
//! cargo build --release -p cnn-train --features distributed --bin distributed_check
//! mpirun -np 3 target/release/distributed_check f64-resnet
//! mpirun -np 3 target/release/distributed_check trainer
//! mpirun -np 3 target/release/distributed_check f64-trainer
//! mpirun -np 3 target/release/distributed_check every-sample-once
//! mpirun -np 2 target/release/distributed_check rank-fails   # aborts the job
//! mpirun -np 2 target/release/distributed_check rank-exits   # mpirun ends the job
//! ```
//!
//! Rank 0 prints `ok: …` and every rank exits 0 when a check holds; a rank
//! whose check fails prints `error: rank R of N: …` and aborts the job.

mod checks;

use std::process::ExitCode;
use std::sync::Arc;

use cnn_data::{DataLoader, Dataset, Digits, Subset};
use cnn_tensor::collective::Collective;
use cnn_tensor::{Error, Result};
use cnn_train::{Mpi, ProgressMode, TrainConfig, Trainer};
use ndarray::Array3;

/// Digits whose sample 37 cannot be read, as a corrupt file would.
struct Corrupt(Subset);

impl Dataset for Corrupt {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        if index == 37 {
            return Err(Error::format("sample 37", "corrupt (on purpose)"));
        }
        self.0.get(index)
    }
    fn classes(&self) -> &[String] {
        self.0.classes()
    }
}

/// Training where the rank that reads sample 37 fails and the others wait in the next sum.
fn rank_fails(group: Arc<dyn Collective>) -> Result<String> {
    let data = Corrupt(Subset::new(Arc::new(Digits::load()?), (0..200).collect())?);
    let mut model = checks::small_net()?;
    Trainer::new(TrainConfig::default().with_epochs(1))
        .with_progress(ProgressMode::Quiet)
        .with_group(group)
        .fit(&mut model, &DataLoader::new(Arc::new(data), 32, 0)?, None)?;
    Err(Error::distributed("sample 37 was read without an error"))
}

fn main() -> ExitCode {
    let mpi = match Mpi::init() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (rank, size) = (mpi.rank(), mpi.size());
    let group: Arc<dyn Collective> = mpi.clone();
    let what = std::env::args().nth(1).unwrap_or_default();
    let result = match what.as_str() {
        "f64-resnet" => checks::f64_resnet_equals_one_process(group, 4),
        "every-sample-once" => checks::every_sample_once_per_epoch(group),
        "trainer" => checks::trainer_equals_one_process(group),
        "f64-trainer" => checks::f64_trainer_equals_one_process(group),
        "rank-fails" => rank_fails(group),
        "rank-exits" => {
            if rank == 1 {
                eprintln!("rank 1 exits with status 3 without a word to the others");
                std::process::exit(3);
            }
            // The others wait for rank 1 in a sum that never completes.
            let mut buf = [1.0f64];
            group.sum_f64(&mut buf).map(|_| "rank 1 answered".to_string())
        }
        other => Err(Error::config(
            "distributed_check",
            format!(
                "unknown check {other:?}: f64-resnet, every-sample-once, rank-fails, rank-exits"
            ),
        )),
    };
    match result {
        Ok(line) => {
            if rank == 0 {
                println!("ok: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: rank {rank} of {size}: {e}");
            mpi.abort(1)
        }
    }
}
