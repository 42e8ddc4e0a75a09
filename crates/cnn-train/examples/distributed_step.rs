//! Times the data-parallel train step: each rank's share of a global batch
//! (forward, loss, backward), the gradient sum across ranks, and the SGD
//! step; rank 0 prints images/s and the milliseconds of each part. What
//! docs/distributed.md's table was measured with:
//!
//! ```text
//! cargo build --release -p cnn-train --features distributed --example distributed_step
//! mpirun -np 1 target/release/examples/distributed_step resnet20 128 --threads 2
//! mpirun -np 2 target/release/examples/distributed_step resnet20 128 --threads 1
//! ```
//!
//! Arguments: `resnet20 | resnet18 | resnet50`, the global batch, then
//! optionally `--threads T` (per rank), `--steps S` (default 10, after 2
//! warm-up steps), `--sync-bn` (BatchNorm statistics over all ranks).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use cnn_optim::Schedule;
use cnn_tensor::collective::Collective;
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{Error, Layer, Result};
use cnn_train::distributed::{allreduce_gradients, broadcast_parameters};
use cnn_train::{apply_gradients, compute_shard_gradients, Mpi, OptimizerKind, TrainConfig};

// As the `cnn` binary and the benches: glibc's malloc would return every
// activation to the kernel and fault it in again on the next step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    arch: String,
    batch: usize,
    threads: Option<usize>,
    steps: usize,
    sync_bn: bool,
}

fn args() -> Result<Args> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let bad = |m: &str| Error::config("distributed_step", m.to_string());
    let (arch, batch) = match (a.first(), a.get(1).and_then(|b| b.parse().ok())) {
        (Some(arch), Some(batch)) => (arch.clone(), batch),
        _ => {
            return Err(bad("usage: distributed_step ARCH GLOBAL_BATCH [--threads T] [--steps S]"))
        }
    };
    let flag = |name: &str| {
        a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).and_then(|v| v.parse().ok())
    };
    Ok(Args {
        arch,
        batch,
        threads: flag("--threads"),
        steps: flag("--steps").unwrap_or(10),
        sync_bn: a.iter().any(|x| x == "--sync-bn"),
    })
}

/// A network, its input `[C, H, W]` and its classes.
type Network = (Box<dyn Layer<f32>>, [usize; 3], usize);

fn model(arch: &str) -> Result<Network> {
    let rng = &mut seeded_rng(0);
    Ok(match arch {
        "resnet20" => (
            Box::new(cnn_models::cifar_resnet(&cnn_models::CifarResNetConfig::new(20), rng)?),
            [3, 32, 32],
            10,
        ),
        "resnet18" => (Box::new(cnn_models::resnet18(1000, rng)?), [3, 224, 224], 1000),
        "resnet50" => (Box::new(cnn_models::resnet50(1000, rng)?), [3, 224, 224], 1000),
        other => return Err(Error::config("distributed_step", format!("unknown arch {other:?}"))),
    })
}

fn run(group: &Arc<dyn Collective>, a: &Args) -> Result<String> {
    let (rank, ranks) = (group.rank(), group.size());
    let (mut model, [c, h, w], classes) = model(&a.arch)?;
    broadcast_parameters(&mut *model, &**group)?;
    if a.sync_bn {
        model.sync_batch_norm(Some(group.clone()));
    }
    let share = cnn_data::shard_range(a.batch, rank, ranks);
    let images = normal(&[share.len(), c, h, w], 0.0, 1.0, &mut seeded_rng(rank as u64));
    let labels: Vec<usize> = share.clone().map(|i| i % classes).collect();
    let config = TrainConfig::default().with_optimizer(OptimizerKind::Sgd).with_lr(0.01);
    let mut optimizer = config.build_optimizer()?;
    let schedule = Schedule::Constant;
    let (mut compute, mut wait, mut reduce, mut update) = (0.0, 0.0, 0.0, 0.0);
    let mut values = 0;
    for step in 0..a.steps + 2 {
        if step == 2 {
            (compute, wait, reduce, update) = (0.0, 0.0, 0.0, 0.0);
        }
        let t = Instant::now();
        compute_shard_gradients(
            &mut *model,
            images.clone(),
            &labels,
            a.batch,
            &cnn_train::CrossEntropy::default(),
            0,
            step as u64,
        )?;
        let t0 = Instant::now();
        // A one-value sum first, so the gradient sum is timed without the
        // wait for the slowest rank (which the step pays all the same).
        group.sum_f64(&mut [0.0])?;
        let t1 = Instant::now();
        values = allreduce_gradients(&mut *model, &**group)?;
        let t2 = Instant::now();
        apply_gradients(&mut optimizer, &schedule, &mut *model, step as u64)?;
        let t3 = Instant::now();
        compute += (t0 - t).as_secs_f64();
        wait += (t1 - t0).as_secs_f64();
        reduce += (t2 - t1).as_secs_f64();
        update += (t3 - t2).as_secs_f64();
    }
    // The slowest rank sets the pace: report the maxima (ranks wait for it inside the sum).
    let mut times = vec![0.0; 4 * ranks];
    times[4 * rank..4 * rank + 4].copy_from_slice(&[compute, wait, reduce, update]);
    group.sum_f64(&mut times)?;
    let n = a.steps as f64;
    let per_rank = |k: usize| (0..ranks).map(|r| times[4 * r + k] / n * 1e3).collect::<Vec<_>>();
    let (c_ms, w_ms, r_ms, u_ms) = (per_rank(0), per_rank(1), per_rank(2), per_rank(3));
    let step_ms: f64 =
        (0..ranks).map(|r| c_ms[r] + w_ms[r] + r_ms[r] + u_ms[r]).fold(0.0, f64::max);
    Ok(format!(
        "{}{} global batch {} on {ranks} rank(s) x {} thread(s): {:.1} ms/step, {:.0} images/s; per rank: forward+backward {:?} ms, waiting for the slowest {:?} ms, gradient sum {:?} ms ({:.2} MB), SGD {:?} ms",
        a.arch,
        if a.sync_bn { " (synced BatchNorm)" } else { "" },
        a.batch,
        rayon::current_num_threads(),
        step_ms,
        a.batch as f64 / step_ms * 1e3,
        c_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
        w_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
        r_ms.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
        values as f64 * 4.0 / 1e6,
        u_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
    ))
}

fn main() -> ExitCode {
    let mpi = match Mpi::init() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(t) = a.threads {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    let group: Arc<dyn Collective> = mpi.clone();
    match run(&group, &a) {
        Ok(line) => {
            if mpi.rank() == 0 {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: rank {} of {}: {e}", mpi.rank(), mpi.size());
            mpi.abort(1)
        }
    }
}
