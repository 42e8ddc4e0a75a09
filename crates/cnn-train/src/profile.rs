//! Where the wall time of a [`Trainer::fit`](crate::Trainer::fit) call goes,
//! phase by phase: what `cnn train --profile` prints, so that the slow
//! phase of a whole run (not only of its steps) can be found and fixed.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Seconds of one `fit` call per phase (this process's wall time; on a
/// data-parallel rank, its own). The phases do not overlap; what none of
/// them covers (the progress display, the loop itself) is
/// [`PhaseTimes::other`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// Before the first step: the config checked, the optimizer and the
    /// schedule built, the state fresh or read from a checkpoint and shared.
    pub start: f64,
    /// Waiting for batches: the loader's reading, decoding, augmenting and
    /// collating that its workers had not finished ahead of the step.
    pub data: f64,
    /// The first step's forward, loss and backward: its scratch buffers,
    /// weight caches and pages are made here (the warm-up).
    pub first_step: f64,
    /// Forward, loss and backward of every other step.
    pub steps: f64,
    /// Summing gradients and statistics across ranks (next to nothing in one process).
    pub allreduce: f64,
    /// The divergence guard and the optimizer's update.
    pub optimizer: f64,
    /// Evaluation on the validation loader after each epoch.
    pub validation: f64,
    /// Writing `last/` and `best/`.
    pub checkpoints: f64,
    /// Writing `metrics.csv`, `metrics.json` and `curves.png`.
    pub metrics: f64,
    /// Writing the TensorBoard event file.
    pub tensorboard: f64,
}

impl PhaseTimes {
    /// The phases as `(name, seconds)`, in the order a run meets them.
    pub fn phases(&self) -> [(&'static str, f64); 10] {
        [
            ("trainer start", self.start),
            ("waiting for data", self.data),
            ("first step (warm-up)", self.first_step),
            ("steps: forward, loss, backward", self.steps),
            ("gradient sums across ranks", self.allreduce),
            ("optimizer", self.optimizer),
            ("validation", self.validation),
            ("checkpoints", self.checkpoints),
            ("metrics and curves", self.metrics),
            ("TensorBoard log", self.tensorboard),
        ]
    }

    /// Seconds of the phases together.
    pub fn total(&self) -> f64 {
        self.phases().iter().map(|(_, s)| s).sum()
    }

    /// What no phase covers of a call that took `seconds` (never below 0).
    pub fn other(&self, seconds: f64) -> f64 {
        (seconds - self.total()).max(0.0)
    }
}

/// Times a phase: `let t = Stopwatch::start(); …; times.x += t.seconds();`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch(Instant);

impl Stopwatch {
    /// Starts now.
    pub(crate) fn start() -> Self {
        Stopwatch(Instant::now())
    }

    /// Seconds since the start.
    pub(crate) fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_is_what_the_phases_leave() {
        let t = PhaseTimes { data: 0.5, steps: 2.0, metrics: 0.25, ..Default::default() };
        assert_eq!(t.total(), 2.75);
        assert_eq!(t.other(3.0), 0.25);
        assert_eq!(t.other(1.0), 0.0);
        assert_eq!(t.phases().len(), 10);
        assert!(t.phases().iter().any(|&(n, s)| n == "waiting for data" && s == 0.5));
    }
}
