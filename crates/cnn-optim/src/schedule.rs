//! Learning-rate schedules, stepped once per iteration, as PyTorch's `lr_scheduler`.

use std::f64::consts::PI;

use cnn_tensor::{Error, Result};

/// A learning rate as a function of the iteration, from a group's base lr.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The base lr throughout.
    Constant,
    /// `base·γ^⌊t / step_size⌋` (`StepLR`).
    Step {
        /// Iterations between decays.
        step_size: usize,
        /// Factor per decay.
        gamma: f64,
    },
    /// `base·γ^(milestones passed)` (`MultiStepLR`).
    MultiStep {
        /// Iterations at which the lr decays, increasing.
        milestones: Vec<usize>,
        /// Factor per milestone.
        gamma: f64,
    },
    /// `base·γ^t` (`ExponentialLR`).
    Exponential {
        /// Factor per iteration.
        gamma: f64,
    },
    /// `η_min + (base − η_min)·(1 + cos(π·t/T))/2` (`CosineAnnealingLR`).
    Cosine {
        /// Half period T.
        t_max: usize,
        /// The lowest lr.
        eta_min: f64,
    },
    /// Linear warmup from `start_factor·base` to `base` over `warmup_steps`, then
    /// cosine to `min_lr` over the rest of `total_steps` (`LinearLR` then
    /// `CosineAnnealingLR` in a `SequentialLR`).
    WarmupCosine {
        /// Iterations of warmup.
        warmup_steps: usize,
        /// The first iteration's lr as a fraction of base.
        start_factor: f64,
        /// All iterations, warmup included.
        total_steps: usize,
        /// The lr at the end.
        min_lr: f64,
    },
    /// `OneCycleLR` (cosine annealing, two phases): from `max_lr/div_factor` up
    /// to `max_lr` over `pct_start` of the steps, then down to
    /// `max_lr/(div_factor·final_div_factor)`. Ignores the base lr.
    OneCycle {
        /// The peak lr.
        max_lr: f64,
        /// All iterations.
        total_steps: usize,
        /// Fraction of the steps spent rising (PyTorch: 0.3).
        pct_start: f64,
        /// `max_lr / initial lr` (PyTorch: 25).
        div_factor: f64,
        /// `initial lr / final lr` (PyTorch: 1e4).
        final_div_factor: f64,
    },
}

fn anneal_cos(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * (1.0 + (PI * pct).cos())
}

impl Schedule {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] for zero periods, warmup not shorter than the total,
    /// decreasing milestones, or factors out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::config("schedule", format!("{msg}: {self:?}")));
        match self {
            Schedule::Constant | Schedule::Exponential { .. } => Ok(()),
            Schedule::Step { step_size, .. } if *step_size == 0 => {
                bad("step_size must be positive")
            }
            Schedule::MultiStep { milestones, .. }
                if milestones.windows(2).any(|w| w[0] > w[1]) =>
            {
                bad("milestones must increase")
            }
            Schedule::Cosine { t_max, .. } if *t_max == 0 => bad("t_max must be positive"),
            Schedule::WarmupCosine { warmup_steps, total_steps, start_factor, .. }
                if warmup_steps >= total_steps || !(0.0..=1.0).contains(start_factor) =>
            {
                bad("warmup_steps must be below total_steps and start_factor in [0, 1]")
            }
            Schedule::OneCycle { total_steps, pct_start, div_factor, final_div_factor, .. }
                if *total_steps < 2
                    || !(0.0..1.0).contains(pct_start)
                    || *div_factor <= 0.0
                    || *final_div_factor <= 0.0 =>
            {
                bad("one-cycle needs total_steps >= 2, pct_start in [0, 1) and positive factors")
            }
            _ => Ok(()),
        }
    }

    /// The lr at iteration `t` (from 0) for a group whose base lr is `base`.
    pub fn lr(&self, t: usize, base: f64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((t / step_size.max(&1)) as i32)
            }
            Schedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= t).count() as i32)
            }
            Schedule::Exponential { gamma } => base * gamma.powi(t as i32),
            Schedule::Cosine { t_max, eta_min } => {
                eta_min
                    + (base - eta_min) * (1.0 + (PI * t as f64 / (*t_max).max(1) as f64).cos())
                        / 2.0
            }
            Schedule::WarmupCosine { warmup_steps, start_factor, total_steps, min_lr } => {
                if t < *warmup_steps {
                    base * (start_factor + (1.0 - start_factor) * t as f64 / *warmup_steps as f64)
                } else {
                    let period = total_steps.saturating_sub(*warmup_steps).max(1) as f64;
                    min_lr
                        + (base - min_lr) * (1.0 + (PI * (t - warmup_steps) as f64 / period).cos())
                            / 2.0
                }
            }
            Schedule::OneCycle { max_lr, total_steps, pct_start, div_factor, final_div_factor } => {
                let initial = max_lr / div_factor;
                let min = initial / final_div_factor;
                let up_end = pct_start * *total_steps as f64 - 1.0;
                let down_end = *total_steps as f64 - 1.0;
                let t = t as f64;
                if t <= up_end {
                    anneal_cos(initial, *max_lr, if up_end > 0.0 { t / up_end } else { 1.0 })
                } else {
                    anneal_cos(*max_lr, min, ((t - up_end) / (down_end - up_end)).min(1.0))
                }
            }
        }
    }
}
