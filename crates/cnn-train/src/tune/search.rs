//! Steps 4 and 5: the coarse random search and its refinement.

use std::path::Path;

use cnn_tensor::{random::seeded_rng, Result};
use rand::Rng;

use super::steps::{draw_chart, file_name};
use super::{trial_seed, ModelFactory, StepReport, TuneConfig, TuneData, Verdict, STEP_TITLES};
use crate::{plot_scatter, History, LineChart, ProgressMode, ScheduleKind, TrainConfig, Trainer};

/// One trained configuration of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Its number within the step, from 1.
    pub id: usize,
    /// The configuration it trained with.
    pub config: TrainConfig,
    /// Its epochs.
    pub history: History,
}

impl Trial {
    /// The last epoch's validation accuracy.
    pub fn val_accuracy(&self) -> Option<f64> {
        self.history.epochs.last().and_then(|r| r.val_accuracy)
    }

    /// The last epoch's validation loss.
    pub fn val_loss(&self) -> Option<f64> {
        self.history.epochs.last().and_then(|r| r.val_loss)
    }

    /// One line for progress: `trial 3: lr 2.1e-2, wd 3.4e-4: val 97.50% (loss 0.0810)`.
    pub fn line(&self) -> String {
        format!(
            "trial {}: lr {:.2e}, weight decay {:.2e}: validation {:.2}% (loss {:.4})",
            self.id,
            self.config.optimizer.lr,
            self.config.optimizer.weight_decay,
            100.0 * self.val_accuracy().unwrap_or(f64::NAN),
            self.val_loss().unwrap_or(f64::NAN)
        )
    }

    /// Sort key: higher accuracy first, then lower loss, then the earlier trial.
    fn rank(&self) -> (i64, i64, usize) {
        let acc = self.val_accuracy().filter(|a| a.is_finite()).unwrap_or(-1.0);
        let loss = self.val_loss().filter(|l| l.is_finite()).unwrap_or(f64::MAX / 4.0);
        (-(acc * 1e9) as i64, (loss * 1e9).min(i64::MAX as f64 / 2.0) as i64, self.id)
    }
}

/// Where a search step reports as it goes: its plot, each trial's progress
/// display, and a callback after each trial.
pub struct SearchOutput<'a> {
    /// The plot to draw, if any.
    pub plot: Option<&'a Path>,
    /// How each trial's training shows progress.
    pub progress: ProgressMode,
    /// Where each trial writes its TensorBoard log (`DIR/trial-N`), if anywhere.
    pub tensorboard: Option<&'a Path>,
    /// Called with each finished trial.
    pub on_trial: &'a mut dyn FnMut(&Trial),
}

fn sorted(trials: &[Trial]) -> Vec<&Trial> {
    let mut v: Vec<&Trial> = trials.iter().collect();
    v.sort_by_key(|t| t.rank());
    v
}

/// `epochs`, or more when a tiny training set gives fewer than the two steps a schedule needs.
fn at_least_two_steps(epochs: usize, train: &cnn_data::DataLoader) -> usize {
    epochs.max(2usize.div_ceil(train.batches_per_epoch().max(1)))
}

fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        return lo;
    }
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// Trains one configuration on a fresh network; a diverged run is recorded,
/// not an error (its accuracy is missing and it sorts last).
fn train_trial(
    factory: &mut ModelFactory<'_>,
    data: &TuneData,
    id: usize,
    config: TrainConfig,
    seed: u64,
    progress: ProgressMode,
    tensorboard: Option<&Path>,
) -> Result<Trial> {
    let mut model = factory(seed)?;
    let mut trainer = Trainer::new(config.clone()).with_progress(progress);
    if let Some(dir) = tensorboard {
        trainer = trainer.with_tensorboard_dir(dir.join(format!("trial-{id}")));
    }
    let history = match trainer.fit(&mut *model, &data.train, Some(&data.val)) {
        Ok(report) => report.history,
        Err(cnn_tensor::Error::Diverged { .. }) => History::default(),
        Err(e) => return Err(e),
    };
    Ok(Trial { id, config, history })
}

fn trial_table(trials: &[&Trial]) -> String {
    let mut t = String::from(
        "| rank | trial | lr | weight decay | epochs | train loss | val loss | val accuracy |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (rank, trial) in trials.iter().enumerate() {
        let last = trial.history.epochs.last();
        let f = |v: Option<f64>, pct: bool| match v {
            Some(v) if pct => format!("{:.2}%", 100.0 * v),
            Some(v) => format!("{v:.4}"),
            None => "diverged".into(),
        };
        t.push_str(&format!(
            "| {} | {} | {:.3e} | {:.3e} | {} | {} | {} | {} |\n",
            rank + 1,
            trial.id,
            trial.config.optimizer.lr,
            trial.config.optimizer.weight_decay,
            trial.config.epochs,
            f(last.map(|r| r.train_loss), false),
            f(trial.val_loss(), false),
            f(trial.val_accuracy(), true)
        ));
    }
    t
}

/// Step 4: `config.coarse_trials` short runs (`config.coarse_epochs` each) of
/// the base configuration with the learning rate drawn log-uniform around
/// `pick` (`config.coarse_lr_decades`) and the weight decay log-uniform in
/// `config.coarse_weight_decay`; every trial starts from the same
/// initialization. Returns the section and the trials in the order run.
///
/// # Errors
/// Whatever training returns, other than divergence.
pub fn coarse_search(
    factory: &mut ModelFactory<'_>,
    data: &TuneData,
    base: &TrainConfig,
    pick: f64,
    config: &TuneConfig,
    out: SearchOutput<'_>,
) -> Result<(StepReport, Vec<Trial>)> {
    let SearchOutput { plot, progress, tensorboard, on_trial } = out;
    let mut rng = seeded_rng(trial_seed(config.seed, 4, 0));
    let epochs = at_least_two_steps(config.coarse_epochs, &data.train);
    let (down, up) = config.coarse_lr_decades;
    let (lr_lo, lr_hi) = (pick * 10f64.powf(-down), pick * 10f64.powf(up));
    let (wd_lo, wd_hi) = config.coarse_weight_decay;
    let mut trials = Vec::new();
    for id in 1..=config.coarse_trials {
        let lr = log_uniform(&mut rng, lr_lo, lr_hi);
        let wd = log_uniform(&mut rng, wd_lo, wd_hi);
        let cfg = base.clone().with_lr(lr).with_weight_decay(wd).with_epochs(epochs);
        let trial = train_trial(factory, data, id, cfg, config.seed, progress, tensorboard)?;
        on_trial(&trial);
        trials.push(trial);
    }
    let ranked = sorted(&trials);
    let chance = 1.0 / data.train.dataset().classes().len().max(2) as f64;
    let accs: Vec<f64> = trials.iter().filter_map(Trial::val_accuracy).collect();
    let best = accs.iter().copied().fold(f64::NAN, f64::max);
    let worst = accs.iter().copied().fold(f64::NAN, f64::min);
    let diverged = trials.len() - accs.len();
    // A NaN best (every trial diverged) fails too.
    let (verdict, summary, next) = if best.is_nan() || best <= chance * 1.5 {
        (
            Verdict::Fail,
            format!("No trial beat chance ({:.1}%) clearly; the best reached {:.2}%.", 100.0 * chance, 100.0 * best),
            "Steps 1–3 passed, so look at the range: widen it, or train each trial longer (--budget large).".to_string(),
        )
    } else if best - worst < 0.01 && trials.len() > 2 {
        (
            Verdict::Warn,
            format!("Every trial landed within one point ({:.2}% to {:.2}%): these hyperparameters matter little here.", 100.0 * worst, 100.0 * best),
            "Spend effort on the network, the data or the augmentation rather than on the lr and weight decay.".to_string(),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "Best trial {}: {:.2}% at lr {:.2e}, weight decay {:.2e} (worst {:.2}%{}).",
                ranked[0].id,
                100.0 * best,
                ranked[0].config.optimizer.lr,
                ranked[0].config.optimizer.weight_decay,
                100.0 * worst,
                if diverged > 0 { format!(", {diverged} diverged") } else { String::new() }
            ),
            format!(
                "Refine around the best {} trials in step 5.",
                config.refine_top.min(trials.len())
            ),
        )
    };
    let plot_name = match plot {
        Some(path) => {
            let pts: Vec<(f64, f64, f64)> = trials
                .iter()
                .map(|t| {
                    (
                        t.config.optimizer.lr,
                        t.config.optimizer.weight_decay,
                        t.val_accuracy().unwrap_or(f64::NAN),
                    )
                })
                .collect();
            plot_scatter(
                path,
                "Step 4: validation accuracy by learning rate × weight decay",
                ("learning rate (log scale)", "weight decay (log scale)"),
                &pts,
            )?;
            file_name(path)
        }
        None => None,
    };
    let table = format!(
        "Ranges: lr log-uniform in [{lr_lo:.2e}, {lr_hi:.2e}], weight decay log-uniform in [{wd_lo:.0e}, {wd_hi:.0e}]; {} epoch(s) per trial, {:?} schedule.\n\n{}",
        epochs,
        base.schedule,
        trial_table(&ranked)
    );
    let report = StepReport {
        number: 4,
        title: STEP_TITLES[3].into(),
        verdict,
        summary,
        table,
        next,
        plot: plot_name,
    };
    Ok((report, trials))
}

/// Step 5: the best `config.refine_top` coarse trials bound narrower ranges
/// (their smallest and largest lr and weight decay, widened by ×1.5 on
/// each side); the best coarse configuration and `config.refine_candidates − 1`
/// new draws from those ranges train for `config.refine_epochs` epochs with
/// linear warmup (one epoch) and cosine decay. Returns the section and the
/// winner (highest final validation accuracy, then lowest loss).
///
/// # Errors
/// Whatever training returns, other than divergence; [`cnn_tensor::Error::Config`]
/// when no coarse trial finished.
pub fn refine(
    factory: &mut ModelFactory<'_>,
    data: &TuneData,
    base: &TrainConfig,
    coarse: &[Trial],
    config: &TuneConfig,
    out: SearchOutput<'_>,
) -> Result<(StepReport, Trial)> {
    let SearchOutput { plot, progress, tensorboard, on_trial } = out;
    let ranked: Vec<&Trial> =
        sorted(coarse).into_iter().filter(|t| t.val_accuracy().is_some()).collect();
    let Some(best_coarse) = ranked.first() else {
        return Err(cnn_tensor::Error::config("tune", "no coarse trial finished to refine"));
    };
    let top = &ranked[..config.refine_top.min(ranked.len())];
    let bound = |f: &dyn Fn(&Trial) -> f64| {
        let lo = top.iter().map(|t| f(t)).fold(f64::INFINITY, f64::min) / 1.5;
        let hi = top.iter().map(|t| f(t)).fold(0.0, f64::max) * 1.5;
        (lo, hi)
    };
    let (lr_lo, lr_hi) = bound(&|t| t.config.optimizer.lr);
    let (wd_lo, wd_hi) = bound(&|t| t.config.optimizer.weight_decay);
    let epochs = at_least_two_steps(config.refine_epochs, &data.train);
    let longer = |cfg: TrainConfig| {
        cfg.with_epochs(epochs).with_schedule(ScheduleKind::WarmupCosine).with_warmup_epochs(1.0)
    };
    let mut rng = seeded_rng(trial_seed(config.seed, 5, 0));
    let mut candidates = vec![longer(best_coarse.config.clone())];
    for _ in 1..config.refine_candidates {
        let lr = log_uniform(&mut rng, lr_lo, lr_hi);
        let wd = log_uniform(&mut rng, wd_lo, wd_hi);
        candidates.push(longer(base.clone().with_lr(lr).with_weight_decay(wd)));
    }
    let mut trials = Vec::new();
    for (i, cfg) in candidates.into_iter().enumerate() {
        let trial = train_trial(factory, data, i + 1, cfg, config.seed, progress, tensorboard)?;
        on_trial(&trial);
        trials.push(trial);
    }
    let ranked = sorted(&trials);
    let winner = ranked[0].clone();
    let coarse_best = best_coarse.val_accuracy().unwrap_or(0.0);
    let won = winner.val_accuracy().unwrap_or(f64::NAN);
    let (verdict, next) = if won >= coarse_best {
        (
            Verdict::Pass,
            "Train with best.json: `cnn train --config best.json` (same data and network).",
        )
    } else {
        (
            Verdict::Warn,
            "Longer training did worse than the short trial: read step 6 for overfitting, and consider fewer epochs or more regularization.",
        )
    };
    let summary = format!(
        "Candidate {} reached {:.2}% after {} epochs (lr {:.2e}, weight decay {:.2e}); the best coarse trial had {:.2}% after {}.",
        winner.id,
        100.0 * won,
        epochs,
        winner.config.optimizer.lr,
        winner.config.optimizer.weight_decay,
        100.0 * coarse_best,
        best_coarse.config.epochs
    );
    let plot_name = draw_chart(plot, || LineChart {
        title: "Step 5: validation accuracy of the refined candidates".into(),
        x_desc: "epoch".into(),
        y_desc: "validation accuracy (%)".into(),
        series: trials
            .iter()
            .map(|t| {
                let pts = t
                    .history
                    .epochs
                    .iter()
                    .filter_map(|r| r.val_accuracy.map(|a| (r.epoch as f64, 100.0 * a)))
                    .collect();
                (
                    format!(
                        "{}: lr {:.1e}, wd {:.1e}",
                        t.id, t.config.optimizer.lr, t.config.optimizer.weight_decay
                    ),
                    pts,
                )
            })
            .collect(),
        log_x: false,
        log_y: false,
        reference: None,
    })?;
    let table = format!(
        "Narrowed ranges (the best {} coarse trials, ×1.5 either side): lr [{lr_lo:.2e}, {lr_hi:.2e}], weight decay [{wd_lo:.2e}, {wd_hi:.2e}]; {} epochs, warmup one epoch then cosine. Candidate 1 is the best coarse configuration.\n\n{}",
        top.len(),
        epochs,
        trial_table(&ranked)
    );
    let report = StepReport {
        number: 5,
        title: STEP_TITLES[4].into(),
        verdict,
        summary,
        table,
        next: next.into(),
        plot: plot_name,
    };
    Ok((report, winner))
}
