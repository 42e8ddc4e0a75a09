//! Training for `cnn` networks: a [`Trainer`] that runs epochs over a
//! [`cnn_data::DataLoader`] (cross-entropy, the optimizer and its schedule
//! per iteration, validation in eval mode), shows progress, writes
//! `metrics.csv`/`metrics.json` and `curves.png`, and checkpoints after every
//! epoch so that a resumed run is bitwise the run that never stopped;
//! [`evaluate`] and [`predict`] (with test-time augmentation); a
//! [`DivergenceGuard`]. One step is two functions, [`compute_gradients`] and
//! [`apply_gradients`], so a data-parallel trainer can reduce gradients between them.
//!
//! Also the lecture's workflow: the six-step tuning recipe ([`Tuner`],
//! [`tune`]: initial loss, overfitting a sample, an lr sweep, coarse and
//! refined search, reading the curves, written up as `report.md`), and
//! transfer learning ([`load_pretrained`], [`set_transfer_mode`]; frozen parts
//! run in eval mode and stop backward, [`frozen_boundary`]; a linear probe on
//! features computed once, [`extract_features`], [`FeatureHead`]).
//!
//! ```
//! use std::sync::Arc;
//! use cnn_data::{DataLoader, Digits};
//! use cnn_nn::{Flatten, Sequential};
//! use cnn_tensor::{random::seeded_rng};
//! use cnn_nn::{Linear, LinearConfig};
//! use cnn_train::{evaluate, ProgressMode, TrainConfig, Trainer};
//!
//! let mut rng = seeded_rng(0);
//! let mut model = Sequential::new()
//!     .push(Flatten::new())
//!     .push(Linear::<f32>::new(LinearConfig::new(64, 10), &mut rng)?);
//! let (train, test) = Digits::load()?.split(0.2, 0)?;
//! let train = DataLoader::new(Arc::new(train), 64, 0)?;
//! let test = DataLoader::new(Arc::new(test), 256, 0)?.with_shuffle(false);
//! let config = TrainConfig::default().with_epochs(3);
//! Trainer::new(config).with_progress(ProgressMode::Quiet).fit(&mut model, &train, Some(&test))?;
//! let report = evaluate(&mut model, &test)?;
//! assert!(report.accuracy > 0.8, "{}", report.table());
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

pub mod checkpoint;
mod config;
pub mod distributed;
mod eval;
mod frozen;
mod guard;
mod history;
mod loss;
#[cfg(feature = "distributed")]
mod mpi;
mod plot;
mod profile;
mod progress;
mod step;
use step::images_as;
pub mod tensorboard;
mod trainer;
mod transfer;
pub mod tune;

pub use checkpoint::{find_checkpoint, load_checkpoint, save_checkpoint, TrainerState};
pub use config::{
    GuardConfig, OptimizerConfig, OptimizerKind, ScheduleConfig, ScheduleKind, TrainConfig,
    TransferConfig,
};
pub use eval::{
    evaluate, evaluate_distributed, evaluate_tta, predict, predict_tta, EvalReport, Predictions,
};
pub use frozen::{extract_features, frozen_boundary, frozen_prefix, FeatureHead};
pub use guard::DivergenceGuard;
pub use history::{EpochRecord, History};
pub use loss::{CrossEntropy, Loss};
#[cfg(feature = "distributed")]
pub use mpi::Mpi;
pub use plot::{plot_confusion, plot_curves, plot_runs, plot_scatter, LineChart};
pub use profile::PhaseTimes;
pub use progress::ProgressMode;
pub use step::{
    apply_gradients, as_logits, compute_gradients, compute_shard_gradients, top_k_correct,
    StepStats,
};
pub use trainer::{EpochCallback, FitReport, StepCallback, Trainer};
pub use transfer::{
    head_path, load_pretrained, replace_head, set_transfer_mode, PretrainedOptions, TransferMode,
    TransferReport,
};
pub use tune::{Budget, TuneConfig, TuneData, TuneReport, Tuner, Verdict};
