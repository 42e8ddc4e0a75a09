//! The files a user hands back to us, run through the mutation fuzzer of
//! `cnn-test-support`: a checkpoint's `trainer.json`, its model state dict
//! (safetensors, the same reader `cnn finetune` uses for torchvision and timm
//! weights) and its optimizer state (safetensors). Each input must load or be
//! refused with an error naming its file, without a panic and within the
//! stated allocation bound. A fixed count runs in the regular suite; the long
//! runs are `--ignored` (`CNN_FUZZ_MINUTES`, `CNN_FUZZ_EXECUTIONS`).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use cnn_conv::{Conv2d, Conv2dConfig};
use cnn_nn::{save_state_dict, Flatten, Linear, LinearConfig, SaveDtype, Sequential, StateDict};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_optim::{Optimizer, Rule};
use cnn_tensor::random::seeded_rng;
use cnn_tensor::Layer;
use cnn_test_support::fuzz::{self, Budget, CountingAlloc, Mutators, Report, Target};
use cnn_train::{load_checkpoint, save_checkpoint, TrainConfig, TrainerState};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Executions of each target in the regular suite.
const CI_COUNT: u64 = 5000;

const MIB: usize = 1 << 20;

fn model() -> Sequential<f32> {
    let mut rng = seeded_rng(0);
    Sequential::new()
        .push_named("conv", Conv2d::new(Conv2dConfig::new(1, 2, 3), &mut rng).unwrap())
        .push_named("bn", BatchNorm::new_2d(BatchNormConfig::new(2)).unwrap())
        .push_named("flatten", Flatten::new())
        .push_named("fc", Linear::new(LinearConfig::new(2 * 2 * 2, 3), &mut rng).unwrap())
}

fn optimizer() -> Optimizer<f32> {
    Optimizer::new(Rule::adam(), 0.01, 0.0).unwrap()
}

/// A checkpoint of one Adam step (so the optimizer file holds moments) in
/// `run/last`; returns its directory.
fn checkpoint(run: &Path) -> std::path::PathBuf {
    let mut m = model();
    let mut opt = optimizer();
    m.visit_mut("", &mut |_, p| {
        if p.trainable {
            p.grad.fill(0.25);
        }
    });
    opt.step(&mut m).unwrap();
    let state = TrainerState::new(TrainConfig::default(), 10, 3, serde_json::json!({"fuzz": 1}));
    save_checkpoint(run, "last", &m, &opt, &state).unwrap();
    run.join("last")
}

/// Runs `target` and checks that the run could have found something: some
/// mutated inputs still load, some are refused, and (safetensors) some were
/// well-formed files that reached the tensor checks.
fn go(
    target: &Target<'_>,
    budget: Budget,
    parse: impl FnMut(&[u8]) -> Result<(), String>,
) -> Report {
    // As the `cnn` binary does: a contained parser panic is not printed.
    cnn_tensor::untrusted::quiet_contained_panics();
    let report = fuzz::run_one(target, 0xc4ec, budget, parse);
    assert!(report.loaded > 0, "{}: no mutated input loaded: {report}", target.name);
    assert!(report.rejected > 0, "{}: no mutated input refused: {report}", target.name);
    if target.name.ends_with("safetensors") {
        assert!(report.past_container > 0, "{}: nothing reached the parser: {report}", target.name);
    }
    report
}

/// One file of the checkpoint mutated, the others valid, loaded whole.
fn checkpoint_target(
    file: &'static str,
    fields: Vec<usize>,
    budget: Budget,
    mutators: Mutators,
) -> Report {
    let tmp = cnn_test_support::temp_dir("fuzz-checkpoint");
    let dir = checkpoint(tmp.path());
    let path = dir.join(file);
    let mut corpus = vec![std::fs::read(&path).unwrap()];
    if file == "model.safetensors" {
        // The f64 writer too (and so the dtype conversions of the reader).
        let f64_path = tmp.path().join("model64.safetensors");
        save_state_dict(&model(), &f64_path, SaveDtype::F64).unwrap();
        corpus.push(std::fs::read(&f64_path).unwrap());
    }
    let target = Target {
        name: file,
        corpus,
        // safetensors: the 8-byte header length, then JSON (its numbers rewritten as text).
        fields,
        max_alloc: 4 * MIB,
        must_name: file.into(),
        mutators,
    };
    go(&target, budget, |b| {
        std::fs::write(&path, b).unwrap();
        load_checkpoint(&dir, &mut model(), &mut optimizer()).map(drop).map_err(|e| e.to_string())
    })
}

/// A state dict read on its own (`cnn finetune`'s path, non-strict).
fn state_dict_target(budget: Budget) {
    let tmp = cnn_test_support::temp_dir("fuzz-state-dict");
    let path = tmp.path().join("weights.safetensors");
    save_state_dict(&model(), &path, SaveDtype::F32).unwrap();
    let target = Target {
        name: "state dict",
        corpus: vec![std::fs::read(&path).unwrap()],
        fields: vec![0],
        max_alloc: 4 * MIB,
        must_name: "weights.safetensors".into(),
        mutators: Mutators::Both,
    };
    go(&target, budget, |b| {
        std::fs::write(&path, b).unwrap();
        let sd = StateDict::read(&path).map_err(|e| e.to_string())?;
        sd.load_into(&mut model(), cnn_nn::LoadMode::Lenient, &|_| false)
            .map(drop)
            .map_err(|e| format!("{}: {e}", path.display()))
    });
}

/// The structure awareness measured for safetensors: with the same seed and
/// count, headers rewritten as valid JSON with lying dtypes, shapes and
/// offsets reach error classes that byte mutations do not.
#[test]
fn structure_mutators_reach_errors_the_byte_mutators_do_not() {
    let run = |m| checkpoint_target("model.safetensors", vec![0], Budget::count(2000), m);
    fuzz::assert_structure_reaches_further(
        "safetensors",
        &run(Mutators::Bytes),
        &run(Mutators::Structure),
    );
}

#[test]
fn fuzz_trainer_json() {
    checkpoint_target("trainer.json", Vec::new(), Budget::count(CI_COUNT), Mutators::Both);
}
#[test]
fn fuzz_model_safetensors() {
    checkpoint_target("model.safetensors", vec![0], Budget::count(CI_COUNT), Mutators::Both);
}
#[test]
fn fuzz_optimizer_safetensors() {
    checkpoint_target("optimizer.safetensors", vec![0], Budget::count(CI_COUNT), Mutators::Both);
}
#[test]
fn fuzz_state_dict() {
    state_dict_target(Budget::count(CI_COUNT));
}

// The long runs, one test a target (run them with --test-threads 1).
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-train --test fuzz -- --ignored"]
fn long_trainer_json() {
    checkpoint_target("trainer.json", Vec::new(), Budget::long(), Mutators::Both);
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-train --test fuzz -- --ignored"]
fn long_model_safetensors() {
    checkpoint_target("model.safetensors", vec![0], Budget::long(), Mutators::Both);
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-train --test fuzz -- --ignored"]
fn long_optimizer_safetensors() {
    checkpoint_target("optimizer.safetensors", vec![0], Budget::long(), Mutators::Both);
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-train --test fuzz -- --ignored"]
fn long_state_dict() {
    state_dict_target(Budget::long());
}
