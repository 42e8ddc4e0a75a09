//! What the command-line tests share: running `cnn`, reading what it printed, checking PNGs.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a part

use std::path::Path;
use std::process::{Command, Output, Stdio};

pub fn cnn(args: &[&str], cwd: &Path) -> Output {
    cnn_on(args, cwd, 2)
}

pub fn cnn_on(args: &[&str], cwd: &Path, threads: usize) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnn"))
        .args(args)
        .args(["--threads", &threads.to_string()])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn last_line(o: &Output) -> String {
    stdout(o).lines().last().unwrap_or_default().to_string()
}

/// `test accuracy NN.NN% (loss L) …` → NN.NN as printed.
pub fn printed_accuracy(line: &str) -> &str {
    let rest = line
        .strip_prefix("test accuracy ")
        .unwrap_or_else(|| panic!("not a result line: {line:?}"));
    &rest[..rest.find('%').unwrap()]
}

pub fn assert_png_not_blank(path: &Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert!(img.width() > 100 && img.height() > 100);
    let first = img.get_pixel(0, 0);
    let differing = img.pixels().filter(|p| *p != first).count();
    assert!(differing > 1000, "{} is nearly one color ({differing} pixels differ)", path.display());
}

/// Runs `cnn` expecting a failure whose first stderr line is `error: …` containing `needle`, never a panic.
pub fn fails_with(args: &[&str], cwd: &Path, needle: &str) {
    let o = cnn(args, cwd);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?}: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error:"), "{args:?}: {err}");
    assert!(first.contains(needle), "{args:?}: {first:?} lacks {needle:?}");
}

/// A safetensors file's tensors, sorted by key, as raw bytes.
pub fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st.tensors().into_iter().map(|(k, t)| (k, t.data().to_vec())).collect();
    v.sort();
    v
}

/// metrics.csv without its two timing columns.
pub fn metrics_without_timings(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
        .collect()
}

/// Starts `cnn args` on two threads, sends it SIGINT (Ctrl-C) as soon as
/// `ready` exists (the first epoch's metrics, say), and returns what it printed.
#[cfg(unix)]
pub fn interrupt_when(args: &[String], ready: &Path) -> Output {
    use std::time::{Duration, Instant};
    let child = Command::new(env!("CARGO_BIN_EXE_cnn"))
        .args(args)
        .args(["--threads", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    child.wait_with_output().unwrap()
}
