//! A disk that fills while `cnn train` runs: with the process's file-size
//! limit (RLIMIT_FSIZE) below the model file's size, every checkpoint write
//! fails with EFBIG, as a full disk fails with ENOSPC. The run trains on,
//! warns, ends with one error naming the last checkpoint written, leaves that
//! checkpoint loadable bitwise, and resumes from it to the unbroken run.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{cnn, last_line, stderr, tensors};

/// `cnn args` with files limited to `max_bytes` (writes past it fail with EFBIG).
fn cnn_with_file_limit(args: &[&str], cwd: &Path, max_bytes: u64) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cnn"));
    cmd.args(args).args(["--threads", "2"]).current_dir(cwd).stdin(Stdio::null());
    // SAFETY: runs in the forked child before exec, calling only setrlimit and
    // signal, which are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            // A write past the limit raises SIGXFSZ, which would kill the
            // process; ignored, the write fails with EFBIG instead.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: max_bytes, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = cnn(&["train", "--epochs", "4", "--out", "whole"], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let limit = std::fs::metadata(dir.join("whole/last/model.safetensors")).unwrap().len() / 2;

    // A run stopped after its first epoch (Ctrl-C), its checkpoint kept aside.
    let run = dir.join("run");
    let args: Vec<String> = ["train", "--epochs", "4", "--out", run.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let o = common::interrupt_when(&args, &run.join("metrics.csv"));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let before = tensors(&run.join("last/model.safetensors"));

    // Resumed on a full disk: it trains to the end, warns at every epoch,
    // and ends with one error naming the checkpoint that is still there.
    let o = cnn_with_file_limit(&["train", "--resume", run.to_str().unwrap()], dir, limit);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("could not be written") && err.contains("File too large"), "{err}");
    assert!(err.contains("training goes on and writes it again after the next epoch"), "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains("the checkpoint of epoch 4 could not be written"), "{last}");
    assert!(last.contains(&format!("({})", run.join("last").display())), "{last}");
    // That checkpoint is the one before, bitwise, and no half-written one is left.
    assert_eq!(tensors(&run.join("last/model.safetensors")), before);
    assert!(!run.join(".last.tmp").exists());
    // The metrics are small and were written: the history of the epochs is there.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");

    // With room again, the run resumes from that checkpoint to the unbroken run.
    let o = cnn(&["train", "--resume", run.to_str().unwrap()], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(last_line(&o).starts_with("test accuracy "), "{}", last_line(&o));
    assert_eq!(
        tensors(&run.join("last/model.safetensors")),
        tensors(&dir.join("whole/last/model.safetensors"))
    );
}

#[test]
fn a_run_that_never_could_write_says_there_is_no_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = cnn_with_file_limit(&["train", "--epochs", "2", "--out", "nowhere"], dir, 64 << 10);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("warning: the checkpoint of epoch 1 could not be written"), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("no checkpoint of this run is in"),
        "{err}"
    );
    assert!(!dir.join("nowhere/.last.tmp").exists() && !dir.join("nowhere/last").exists());
}
