//! Step 6: reading a run's curves by stated numeric rules.

use std::path::Path;

use cnn_tensor::Result;
use serde::{Deserialize, Serialize};

use super::steps::file_name;
use super::{StepReport, Verdict, STEP_TITLES};
use crate::{plot_curves, History};

/// What the curves say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveKind {
    /// Training and validation improve together and end close.
    Healthy,
    /// The train/validation gap widens or the validation loss rises.
    Overfitting,
    /// Both accuracies low and flat.
    Underfitting,
    /// Non-finite values, or spikes in the training loss.
    Unstable,
}

/// The thresholds [`read_curves`] applies, in the order it applies them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveRules {
    /// Instability: an epoch's training loss above this multiple of the
    /// lowest before it is a spike. Default 1.25.
    pub spike_factor: f64,
    /// Overfitting: a final train − validation accuracy gap above this ... Default 0.05.
    pub gap: f64,
    /// ... that grew by more than this since the epoch of the lowest validation loss. Default 0.02.
    pub gap_growth: f64,
    /// Overfitting also: a final validation loss above this multiple of its lowest. Default 1.2.
    pub val_loss_rise: f64,
    /// Underfitting: a final training accuracy below this ... Default 0.8.
    pub low_accuracy: f64,
    /// ... that moved less than this over the last third of the epochs. Default 0.02.
    pub flat: f64,
}

impl Default for CurveRules {
    fn default() -> Self {
        CurveRules {
            spike_factor: 1.25,
            gap: 0.05,
            gap_growth: 0.02,
            val_loss_rise: 1.2,
            low_accuracy: 0.8,
            flat: 0.02,
        }
    }
}

/// The reading: the kind and the figures that decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveReading {
    /// What the curves show.
    pub kind: CurveKind,
    /// The measured figures behind the call, one sentence each.
    pub evidence: Vec<String>,
}

/// Reads a run's per-epoch curves. The rules, checked in this order:
///
/// 1. **unstable** if any loss or accuracy is non-finite, or some epoch's
///    training loss exceeds `spike_factor` × the lowest training loss before it;
/// 2. **overfitting** if the final train − validation accuracy gap exceeds
///    `gap` and grew by more than `gap_growth` since the epoch of the lowest
///    validation loss, or the final validation loss exceeds `val_loss_rise` ×
///    its lowest;
/// 3. **underfitting** if the final training and validation accuracies are
///    both below `low_accuracy` and the training accuracy moved less than
///    `flat` over the last third of the epochs;
/// 4. **healthy** otherwise.
///
/// A run without validation figures is judged on its training curve alone.
pub fn read_curves(history: &History, rules: &CurveRules) -> CurveReading {
    let e = &history.epochs;
    let mut evidence = Vec::new();
    let Some(last) = e.last() else {
        return CurveReading {
            kind: CurveKind::Unstable,
            evidence: vec![
                "no epoch finished: the run diverged before its first epoch ended".into()
            ],
        };
    };
    let finite = e.iter().all(|r| {
        r.train_loss.is_finite()
            && r.train_accuracy.is_finite()
            && r.val_loss.is_none_or(f64::is_finite)
            && r.val_accuracy.is_none_or(f64::is_finite)
    });
    if !finite {
        evidence.push("a loss or accuracy is not finite (NaN or infinity)".into());
        return CurveReading { kind: CurveKind::Unstable, evidence };
    }
    let mut lowest = f64::INFINITY;
    let mut spikes = Vec::new();
    for r in e {
        if r.train_loss > rules.spike_factor * lowest {
            spikes.push(format!(
                "epoch {} ({:.4} after a low of {lowest:.4})",
                r.epoch, r.train_loss
            ));
        }
        lowest = lowest.min(r.train_loss);
    }
    if !spikes.is_empty() {
        evidence.push(format!(
            "the training loss spiked above {}× its lowest so far at {}",
            rules.spike_factor,
            spikes.join(", ")
        ));
        return CurveReading { kind: CurveKind::Unstable, evidence };
    }
    let vals: Vec<(usize, f64, f64)> = e
        .iter()
        .filter_map(|r| Some((r.epoch, r.val_loss?, r.train_accuracy - r.val_accuracy?)))
        .collect();
    if let (Some(&(_, last_loss, last_gap)), Some(&(best_epoch, best_loss, best_gap))) =
        (vals.last(), vals.iter().min_by(|a, b| a.1.total_cmp(&b.1)))
    {
        let widening = last_gap > rules.gap && last_gap - best_gap > rules.gap_growth;
        let rising = last_loss > rules.val_loss_rise * best_loss;
        if widening || rising {
            if widening {
                evidence.push(format!(
                    "the train − validation accuracy gap is {:.1} points, up from {:.1} at epoch {best_epoch} (lowest validation loss)",
                    100.0 * last_gap,
                    100.0 * best_gap
                ));
            }
            if rising {
                evidence.push(format!(
                    "the validation loss rose to {last_loss:.4} from its lowest {best_loss:.4} at epoch {best_epoch}"
                ));
            }
            return CurveReading { kind: CurveKind::Overfitting, evidence };
        }
    }
    // The change over the last third of the epochs (at least one epoch back).
    let third = e.len().div_ceil(3).max(1);
    let moved = last.train_accuracy - e[e.len().saturating_sub(third + 1)].train_accuracy;
    let val_low = last.val_accuracy.is_none_or(|v| v < rules.low_accuracy);
    if last.train_accuracy < rules.low_accuracy && val_low && moved.abs() < rules.flat {
        evidence.push(format!(
            "training accuracy ends at {:.1}% and moved {:.1} points over the last {third} epoch(s); validation {}",
            100.0 * last.train_accuracy,
            100.0 * moved,
            last.val_accuracy.map_or("absent".into(), |v| format!("{:.1}%", 100.0 * v))
        ));
        return CurveReading { kind: CurveKind::Underfitting, evidence };
    }
    evidence.push(format!(
        "training {:.1}%, validation {}, gap {}; no spike, no rise of the validation loss",
        100.0 * last.train_accuracy,
        last.val_accuracy.map_or("absent".into(), |v| format!("{:.1}%", 100.0 * v)),
        last.val_accuracy
            .map_or("n/a".into(), |v| format!("{:.1} points", 100.0 * (last.train_accuracy - v)))
    ));
    CurveReading { kind: CurveKind::Healthy, evidence }
}

/// Step 6's section for a run's history, with `curves.png` when `plot` is given.
pub(crate) fn curve_step(
    history: &History,
    rules: &CurveRules,
    plot: Option<&Path>,
) -> Result<StepReport> {
    let reading = read_curves(history, rules);
    let (verdict, next) = match reading.kind {
        CurveKind::Healthy => (Verdict::Pass, "Nothing to fix: train the final model with best.json, or try a larger budget for the last points."),
        CurveKind::Overfitting => (Verdict::Warn, "More regularization or augmentation: a larger weight decay, stronger augmentation, dropout or label smoothing; or stop earlier (the best/ checkpoint)."),
        CurveKind::Underfitting => (Verdict::Warn, "More capacity or training: a wider or deeper network, more epochs, a larger learning rate, less regularization."),
        CurveKind::Unstable => (Verdict::Fail, "Lower the learning rate (or add warmup), clip gradients, or change the optimizer (Adam or AdamW); check the data for broken samples."),
    };
    let mut table = String::from(
        "| epoch | train loss | val loss | train accuracy | val accuracy | lr |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in &history.epochs {
        let opt = |v: Option<f64>, pct: bool| {
            v.map_or("–".into(), |v| {
                if pct {
                    format!("{:.2}%", 100.0 * v)
                } else {
                    format!("{v:.4}")
                }
            })
        };
        table.push_str(&format!(
            "| {} | {:.4} | {} | {:.2}% | {} | {:.3e} |\n",
            r.epoch,
            r.train_loss,
            opt(r.val_loss, false),
            100.0 * r.train_accuracy,
            opt(r.val_accuracy, true),
            r.lr
        ));
    }
    table.push_str(&format!(
        "\nRules, in order: unstable (a non-finite value, or a training loss above {}× its lowest so far); \
         overfitting (a final gap above {:.0} points that grew by over {:.0} since the lowest validation loss, \
         or a final validation loss above {}× its lowest); underfitting (both accuracies below {:.0}% and the \
         training accuracy moving under {:.0} points over the last third); healthy otherwise.\n",
        rules.spike_factor,
        100.0 * rules.gap,
        100.0 * rules.gap_growth,
        rules.val_loss_rise,
        100.0 * rules.low_accuracy,
        100.0 * rules.flat
    ));
    let plot_name = match plot {
        Some(path) if !history.epochs.is_empty() => {
            plot_curves(history, path)?;
            file_name(path)
        }
        _ => None,
    };
    Ok(StepReport {
        number: 6,
        title: STEP_TITLES[5].into(),
        verdict,
        summary: format!("{:?}: {}.", reading.kind, reading.evidence.join("; ")),
        table,
        next: next.into(),
        plot: plot_name,
    })
}
