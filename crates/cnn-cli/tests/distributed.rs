//! `mpirun -np N cnn train --distributed` end to end (feature `distributed`;
//! CI installs OpenMPI and runs these, docs/distributed.md): two ranks with
//! synced BatchNorm against one process on the digits, resume of a
//! distributed run from its checkpoint, a rank killed mid-run.

#![cfg(all(unix, feature = "distributed"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cnn_test_support::mpi::{exclusive, mpirun, Job, MPIRUN_FLAGS};
use common::{cnn, metrics_without_timings, printed_accuracy, stderr, tensors};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cnn"))
}

/// `mpirun -np ranks cnn --threads 1 train --distributed args…`.
fn train(ranks: usize, args: &[&str], cwd: &Path) -> Job {
    let all = [&["--threads", "1", "train", "--distributed"][..], args].concat();
    mpirun(ranks, &bin(), &all, cwd, Duration::from_secs(300))
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or_default()
}

/// f32 tensors of a safetensors file.
fn floats(path: &Path) -> Vec<(String, Vec<f32>)> {
    tensors(path)
        .into_iter()
        .map(|(k, bytes)| {
            let v = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            (k, v.collect())
        })
        .collect()
}

#[test]
fn two_ranks_with_synced_batch_norm_train_the_digits_as_one_process() {
    let _one_job_at_a_time = exclusive();
    let tmp = cnn_test_support::temp_dir("dist-digits");
    let one = cnn(&["train", "--epochs", "4", "--out", "one"], tmp.path());
    assert!(one.status.success(), "{}", stderr(&one));
    let two = train(2, &["--sync-bn", "--epochs", "4", "--out", "two"], tmp.path());
    assert!(two.ok(), "{}", two.output());
    // One line per epoch and one result, from rank 0 alone.
    assert_eq!(two.stdout.matches("test accuracy").count(), 1, "{}", two.output());
    assert!(
        two.stdout.contains("on digits over 2 ranks × 1 thread (synced BatchNorm):"),
        "{}",
        two.stdout
    );
    assert_eq!(two.stdout.matches("epoch 4/4").count(), 1, "{}", two.stdout);
    let (a1, a2) = (
        printed_accuracy(last_line(&common::stdout(&one))).parse::<f64>().unwrap(),
        printed_accuracy(last_line(&two.stdout)).parse::<f64>().unwrap(),
    );
    assert!((a1 - a2).abs() <= 0.5, "one process {a1}%, two ranks {a2}%");
    // The same training in f32, its sums in another order: the runs agree to
    // rounding at first, and SGD's sensitivity at lr 0.1 grows that into
    // different (equally good) weights within an epoch or two. The bound is
    // on all weights together, ‖θ₂ − θ₁‖ / ‖θ₁‖; measured 0.075 (the runs
    // are deterministic, so it moves only when the code does).
    let p = |run: &str| floats(&tmp.path().join(run).join("last/model.safetensors"));
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for ((key, a), (_, b)) in p("one").iter().zip(p("two")) {
        if key.contains("running") || key.contains("num_batches") {
            continue;
        }
        for (u, v) in a.iter().zip(&b) {
            diff += f64::from(u - v).powi(2);
            norm += f64::from(*u).powi(2);
        }
    }
    let rel = (diff / norm).sqrt();
    println!("‖θ₂ − θ₁‖ / ‖θ₁‖ after 4 epochs: {rel:.3}");
    assert!(
        rel < F32_BOUND,
        "the weights of 2 ranks and 1 process differ by {rel:.3} (bound {F32_BOUND})"
    );
}

/// Bound on `‖θ₂ − θ₁‖ / ‖θ₁‖` over all weights after 4 epochs of digits.
const F32_BOUND: f64 = 0.15;

/// The recipe of the resume tests: 20 epochs, synced BatchNorm, on 2 ranks.
const RUN: [&str; 3] = ["--sync-bn", "--epochs", "20"];

/// Starts `mpirun -np 2 cnn train --distributed RUN --out name` in `cwd` and
/// returns it once the first epoch's checkpoint is written.
fn start_run(cwd: &Path, name: &str) -> std::process::Child {
    let child = Command::new("mpirun")
        .args(MPIRUN_FLAGS)
        .args(["-np", "2", env!("CARGO_BIN_EXE_cnn")])
        .args(["--threads", "1", "train", "--distributed"])
        .args(RUN)
        .args(["--out", name])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cwd.join(name).join("metrics.csv").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// Resumes `name` on 2 ranks (`--sync-bn` comes from the checkpoint) and
/// checks that it ends as `whole`, the run that never stopped.
fn resume_equals(cwd: &Path, name: &str, whole: &Job) {
    let state = cnn_train::TrainerState::read(&cwd.join(name).join("last")).unwrap();
    assert!(state.epoch < 20, "the job finished before it was stopped");
    let resumed = train(2, &["--resume", name], cwd);
    assert!(resumed.ok(), "{}", resumed.output());
    assert!(
        resumed.stdout.contains("over 2 ranks × 1 thread (synced BatchNorm)"),
        "{}",
        resumed.stdout
    );
    let result = |s: &str| last_line(s).split(" in ").next().unwrap().to_string();
    assert_eq!(result(&resumed.stdout), result(&whole.stdout));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let f = |run: &str| tensors(&cwd.join(run).join("last").join(file));
        assert_eq!(f(name), f("whole"), "{file}");
    }
    assert_eq!(
        metrics_without_timings(&cwd.join(name)),
        metrics_without_timings(&cwd.join("whole"))
    );
}

#[test]
fn ctrl_c_stops_every_rank_at_one_step_and_the_run_resumes_as_if_never_stopped() {
    let _one_job_at_a_time = exclusive();
    let tmp = cnn_test_support::temp_dir("dist-ctrl-c");
    let whole = train(2, &[&RUN[..], &["--out", "whole"]].concat(), tmp.path());
    assert!(whole.ok(), "{}", whole.output());
    // Ctrl-C reaches mpirun, which passes SIGTERM to the ranks: they finish
    // the step together and rank 0 writes last/ before mpirun's SIGKILL.
    let child = start_run(tmp.path(), "broken");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = last_line(&stdout);
    assert!(line.starts_with("interrupted at step "), "{stdout}");
    assert!(
        line.ends_with(
            "Resume with: mpirun -np 2 cnn train --distributed --sync-bn --resume broken"
        ),
        "{line}"
    );
    assert_eq!(stdout.matches("interrupted").count(), 1, "rank 0 alone reports: {stdout}");
    resume_equals(tmp.path(), "broken", &whole);
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_from_its_last_epoch() {
    let _one_job_at_a_time = exclusive();
    let tmp = cnn_test_support::temp_dir("dist-kill");
    let whole = train(2, &[&RUN[..], &["--out", "whole"]].concat(), tmp.path());
    assert!(whole.ok(), "{}", whole.output());
    let started = Instant::now();
    let child = start_run(tmp.path(), "killed");
    // One rank (a child of mpirun) dies as a crashed or OOM-killed process would.
    let ranks = Command::new("pgrep").args(["-P", &child.id().to_string()]).output().unwrap();
    let pids = String::from_utf8_lossy(&ranks.stdout).to_string();
    let victim = pids.split_whitespace().last().expect("no rank processes found");
    Command::new("kill").args(["-KILL", victim]).status().unwrap();
    // The other waits in a sum for it: mpirun must end it, in bounded time.
    let id = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").args(["-TERM", &id.to_string()]).status();
    });
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(started.elapsed() < Duration::from_secs(60), "the job hung: {err}");
    assert!(!out.status.success());
    assert!(err.contains("exited on signal 9"), "{err}");
    resume_equals(tmp.path(), "killed", &whole);
}

#[test]
fn the_feature_build_has_mpi_in_its_tree() {
    let tree = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "cnn-cli",
            "--features",
            "distributed",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(tree.status.success(), "{}", String::from_utf8_lossy(&tree.stderr));
    assert!(String::from_utf8_lossy(&tree.stdout).lines().any(|l| l.starts_with("mpi v")));
}

#[test]
fn without_threads_the_ranks_of_a_node_share_its_cores() {
    let _one_job_at_a_time = exclusive();
    let tmp = cnn_test_support::temp_dir("dist-threads");
    let job = mpirun(
        2,
        &bin(),
        &["train", "--distributed", "--epochs", "1", "--out", "run"],
        tmp.path(),
        Duration::from_secs(120),
    );
    assert!(job.ok(), "{}", job.output());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let t = (cores / 2).max(1);
    let want =
        format!("over 2 ranks × {t} thread{} (per-rank BatchNorm)", if t == 1 { "" } else { "s" });
    assert!(job.stdout.contains(&want), "{want:?} not in {}", job.stdout);
}
