//! Checkpoints: a directory holding the model (`model.safetensors`, the
//! model's `state_dict` keys), the optimizer state (`optimizer.safetensors`)
//! and `trainer.json` (where the run stands, its config and history).
//!
//! A checkpoint directory is written whole or not at all: the files go into
//! a staging directory, are flushed to disk, and the directory is renamed
//! into place. The previous one is first renamed aside (`.last.old`) and
//! removed last, so a crash at any moment leaves a complete checkpoint under
//! `last/` or, between the two renames, under `.last.old/`, which
//! [`find_checkpoint`] falls back to.

use std::fs;
use std::path::{Path, PathBuf};

use cnn_nn::{load_state_dict, save_state_dict, SaveDtype};
use cnn_optim::Optimizer;
use cnn_tensor::{write_atomic, Error, Float, Layer, Result};
use serde::{Deserialize, Serialize};

use crate::{DivergenceGuard, EpochRecord, TrainConfig};

/// The model's file in a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state's file in a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state's file in a checkpoint directory.
pub const TRAINER_FILE: &str = "trainer.json";
/// Version of `trainer.json`'s layout.
pub const FORMAT_VERSION: u32 = 1;

/// Sums of an epoch that was interrupted midway, so its record comes out as
/// if it had not been.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Σ over the batches done of (batch mean loss × batch size).
    pub loss_sum: f64,
    /// Samples classified right so far.
    pub correct: usize,
    /// Samples seen so far.
    pub seen: usize,
    /// Training seconds spent so far.
    pub train_seconds: f64,
}

/// Where a run stands: everything besides the tensors that a resumed run
/// needs to continue exactly as if it had never stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// Epochs finished.
    pub epoch: usize,
    /// Batches of the next epoch already done (non-zero after an interrupt).
    pub batch: usize,
    /// Optimizer steps taken; the schedule's position.
    pub global_step: u64,
    /// The interrupted epoch's sums (zero when `batch` is 0).
    pub partial: PartialEpoch,
    /// The training config (optimizer, schedule, seeds).
    pub config: TrainConfig,
    /// Batches per epoch of the run (checked on resume: another batch size or dataset is refused).
    pub batches_per_epoch: usize,
    /// The training loader's seed, which fixes the data order and augmentation (checked on resume).
    pub data_seed: u64,
    /// The best validation accuracy so far.
    pub best_val_accuracy: Option<f64>,
    /// The divergence guard: its settings (from the config), the first
    /// step's loss and the steps in a row above its bound.
    pub guard: DivergenceGuard,
    /// Every finished epoch.
    pub history: Vec<EpochRecord>,
    /// What the caller stored with the run (the CLI: data, architecture, normalization).
    pub metadata: serde_json::Value,
}

impl TrainerState {
    /// The state of a run that has not started.
    pub fn new(
        config: TrainConfig,
        batches_per_epoch: usize,
        data_seed: u64,
        metadata: serde_json::Value,
    ) -> Self {
        let guard =
            DivergenceGuard::new(config.guard.divergence_factor, config.guard.divergence_patience);
        TrainerState {
            format: FORMAT_VERSION,
            epoch: 0,
            batch: 0,
            global_step: 0,
            partial: PartialEpoch::default(),
            config,
            batches_per_epoch,
            data_seed,
            best_val_accuracy: None,
            guard,
            history: Vec::new(),
            metadata,
        }
    }

    /// Reads `trainer.json` from a checkpoint directory.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::Format`] naming the file
    /// when it is truncated, not JSON, or of another format version.
    pub fn read(dir: &Path) -> Result<TrainerState> {
        let path = dir.join(TRAINER_FILE);
        let bytes = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let bad = |msg: String| Error::format(path.display(), msg);
        let state: TrainerState =
            cnn_tensor::untrusted::contain_panic(path.display(), "the JSON parser", || {
                serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("not a trainer state ({e})")))
            })?;
        if state.format != FORMAT_VERSION {
            return Err(bad(format!(
                "format {} (this build reads {FORMAT_VERSION})",
                state.format
            )));
        }
        Ok(state)
    }
}

/// Flushes a directory's entries (the renames) to disk; best effort on
/// systems where a directory cannot be opened for syncing.
fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Replaces `parent/name` by a directory that `fill` writes, atomically (see the module docs).
///
/// # Errors
/// Whatever `fill` returns (the previous directory is then untouched, and the
/// staging directory removed); [`Error::Io`] when a rename fails.
pub fn replace_dir_atomic(
    parent: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
    let target = parent.join(name);
    let staging = parent.join(format!(".{name}.tmp"));
    let aside = parent.join(format!(".{name}.old"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io("remove", &staging, e))?;
    }
    fs::create_dir(&staging).map_err(|e| Error::io("create", &staging, e))?;
    if let Err(e) = fill(&staging) {
        // A full disk leaves half a checkpoint in staging: give its space back.
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    sync_dir(&staging);
    if target.exists() {
        if aside.exists() {
            fs::remove_dir_all(&aside).map_err(|e| Error::io("remove", &aside, e))?;
        }
        fs::rename(&target, &aside).map_err(|e| Error::io("rename aside", &target, e))?;
    }
    fs::rename(&staging, &target).map_err(|e| Error::io("rename into place", &target, e))?;
    sync_dir(parent);
    if aside.exists() {
        fs::remove_dir_all(&aside).map_err(|e| Error::io("remove", &aside, e))?;
    }
    Ok(())
}

/// The complete checkpoint `name` (`"last"`, `"best"`) of a run directory:
/// `run/name`, or `run/.name.old` when a crash came between the two renames.
///
/// # Errors
/// [`Error::Io`] (not found) naming what was looked for.
pub fn find_checkpoint(run: &Path, name: &str) -> Result<PathBuf> {
    for dir in [run.join(name), run.join(format!(".{name}.old"))] {
        if dir.join(TRAINER_FILE).is_file() {
            return Ok(dir);
        }
    }
    let why = if run.is_dir() {
        format!(
            "{} has no checkpoint {name}/ (is it a run directory of `cnn train`?)",
            run.display()
        )
    } else {
        format!("{} is not a directory", run.display())
    };
    Err(Error::io("open", run.join(name), std::io::Error::new(std::io::ErrorKind::NotFound, why)))
}

/// Writes checkpoint `name` of the run in `run`: model, optimizer state and trainer state.
///
/// # Errors
/// [`Error::Io`] when a file cannot be written.
pub fn save_checkpoint<T: Float>(
    run: &Path,
    name: &str,
    model: &dyn Layer<T>,
    optimizer: &Optimizer<T>,
    state: &TrainerState,
) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(state).map_err(|e| Error::format(TRAINER_FILE, e.to_string()))?;
    replace_dir_atomic(run, name, |dir| {
        save_state_dict(model, &dir.join(MODEL_FILE), SaveDtype::F32)?;
        optimizer.save_state(&dir.join(OPTIMIZER_FILE))?;
        write_atomic(&dir.join(TRAINER_FILE), &json)
    })
}

/// Loads a checkpoint directory into `model` (strictly: every key and shape)
/// and `optimizer`, and returns its trainer state.
///
/// # Errors
/// [`Error::Io`] for a missing file; [`Error::Format`] naming the file that is
/// truncated or corrupt, or whose keys do not fit the model.
pub fn load_checkpoint<T: Float>(
    dir: &Path,
    model: &mut dyn Layer<T>,
    optimizer: &mut Optimizer<T>,
) -> Result<TrainerState> {
    let state = TrainerState::read(dir)?;
    load_state_dict(model, &dir.join(MODEL_FILE), cnn_nn::LoadMode::Strict)?;
    optimizer.load_state(&dir.join(OPTIMIZER_FILE))?;
    Ok(state)
}
