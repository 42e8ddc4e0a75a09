//! Memory behaviour of a steady-state train step of the CIFAR ResNet-20 at
//! batch 128: minor page faults per step (the kernel handing out and zeroing
//! fresh pages), time per step, and the peak resident set (max RSS).
//!
//! `cargo run --release --example train_step_memory [-- STEPS [ALLOCATOR]]`
//! where ALLOCATOR is `mimalloc` (default: mimalloc as the `cnn` binary sets
//! it, freed pages kept), `mimalloc-purge` (mimalloc's defaults) or `system`.
//! Linux only (reads getrusage through /proc/self); docs/benchmarks.md has the figures.

use std::time::Instant;

use cnn::models::{cifar_resnet, CifarResNetConfig};
use cnn::optim::{Optimizer, Rule};
use cnn::tensor::random::{normal, seeded_rng};
use cnn::tensor::{cross_entropy, ArrayD, Layer, Mode};

/// Switchable at start-up: mimalloc, or the system allocator.
struct Switch;

static USE_SYSTEM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

// SAFETY: forwards every call to one of two allocators; each pointer is freed
// by the allocator that made it (the switch may flip after start-up, so
// `dealloc` asks mimalloc whether the pointer is in its heap).
unsafe impl std::alloc::GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe {
            if USE_SYSTEM.load(std::sync::atomic::Ordering::Relaxed) {
                std::alloc::System.alloc(l)
            } else {
                mimalloc::MiMalloc.alloc(l)
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: `p` was allocated by one of the two (see `alloc`); mimalloc says which.
        unsafe {
            if libmimalloc_sys::mi_is_in_heap_region(p.cast()) {
                mimalloc::MiMalloc.dealloc(p, l)
            } else {
                std::alloc::System.dealloc(p, l)
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; fields restart after its ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set in MiB (VmHWM of /proc/self/status).
fn max_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), cnn::tensor::Error> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let allocator = args.get(2).map_or("mimalloc", String::as_str);
    match allocator {
        "system" => USE_SYSTEM.store(true, std::sync::atomic::Ordering::Relaxed),
        "mimalloc" => {
            // As the `cnn` binary: freed pages stay with the process (no purge).
            // SAFETY: sets a global option before the measured allocations; no other thread runs.
            unsafe { libmimalloc_sys::mi_option_set(15, -1) };
        }
        "mimalloc-purge" => {}
        other => {
            return Err(cnn::tensor::Error::config(
                "train_step_memory",
                format!("allocator {other:?}: use mimalloc, mimalloc-purge or system"),
            ))
        }
    }
    let mut rng = seeded_rng(0);
    let mut net = cifar_resnet::<f32, _>(&CifarResNetConfig::new(20), &mut rng)?;
    let mut opt = Optimizer::new(Rule::sgd(0.9), 0.1, 0.0)?;
    let x: ArrayD<f32> = normal(&[128, 3, 32, 32], 0.0, 1.0, &mut rng);
    let targets: Vec<usize> = (0..128).map(|i| i % 10).collect();
    let mut step = || -> Result<f32, cnn::tensor::Error> {
        opt.zero_grad(&mut net);
        let logits = net.forward(x.clone(), Mode::Train)?;
        let (loss, dlogits) = cross_entropy(&logits, &targets, 0.0)?;
        net.backward(dlogits)?;
        opt.step(&mut net)?;
        Ok(loss)
    };
    // Two warm-up steps: the first allocates every buffer, the second settles the allocator.
    for _ in 0..2 {
        step()?;
    }
    let (faults0, t0) = (minor_faults(), Instant::now());
    for _ in 0..steps {
        step()?;
    }
    let secs = t0.elapsed().as_secs_f64() / steps as f64;
    let faults = (minor_faults() - faults0) as f64 / steps as f64;
    println!(
        "resnet20 b128 train step ({allocator}, {} threads): {:.1} ms/step, {faults:.0} minor faults/step ({:.1} MiB of fresh pages), max RSS {:.0} MiB",
        rayon::current_num_threads(),
        secs * 1e3,
        faults * 4096.0 / (1 << 20) as f64,
        max_rss_mib()
    );
    Ok(())
}
