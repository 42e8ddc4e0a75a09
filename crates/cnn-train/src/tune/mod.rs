//! The lecture's tuning recipe as a tool: six steps, each with a table, a
//! verdict and what to do next, written to `report.md` with its plots.
//!
//! 1. [`check_initial_loss`]: the untrained loss against ln C.
//! 2. [`overfit_sample`]: a few images, no augmentation or decay, to a loss near zero.
//! 3. [`lr_sweep`]: short runs at a list of rates; the largest that trains stably.
//! 4. [`coarse_search`]: random learning rates and weight decays, short runs.
//! 5. [`refine`]: narrower ranges, longer runs with warmup and cosine decay.
//! 6. [`read_curves`]: overfitting, underfitting, instability, or healthy.
//!
//! [`Tuner::run`] chains them; every draw comes from the seed, so the same
//! call gives the same report.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cnn_data::{DataLoader, Digits};
//! use cnn_models::small_cnn;
//! use cnn_tensor::{random::seeded_rng, Layer};
//! use cnn_train::{Budget, TrainConfig, TuneConfig, TuneData, Tuner};
//!
//! let (train, val) = Digits::load()?.split(0.2, 0)?;
//! let (train, val) = (Arc::new(train), Arc::new(val));
//! let data = TuneData {
//!     train: DataLoader::new(train.clone(), 64, 0)?,
//!     plain: DataLoader::new(train, 64, 0)?,
//!     val: DataLoader::new(val, 256, 0)?.with_shuffle(false),
//! };
//! let mut factory = |seed: u64| -> cnn_tensor::Result<Box<dyn Layer<f32>>> {
//!     Ok(Box::new(small_cnn(1, [8, 8], 10, &mut seeded_rng(seed))?))
//! };
//! let report = Tuner::new(TuneConfig::for_budget(Budget::Small), TrainConfig::default())
//!     .with_out_dir("runs/tune-digits")
//!     .run(&mut factory, &data)?;
//! println!("{:?}: best {:?}", report.worst(), report.best);
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod curves;
mod report;
mod search;
mod steps;

use std::path::PathBuf;
use std::time::Instant;

use cnn_data::DataLoader;
use cnn_tensor::{random::mix_seed, Error, Layer, Result};
use serde::{Deserialize, Serialize};

use crate::{History, ProgressMode, TrainConfig};

pub use curves::{read_curves, CurveKind, CurveReading, CurveRules};
pub use search::{coarse_search, refine, SearchOutput, Trial};
pub use steps::{check_initial_loss, lr_sweep, overfit_sample, LrCurve};

/// How much work the search may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    /// A quick look: few, short trials.
    Small,
    /// The default: about a minute on the embedded digits with two cores.
    #[default]
    Medium,
    /// More and longer trials.
    Large,
}

/// A step's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Pass,
    /// Works, with something to look at.
    Warn,
    /// Broken: fix this before anything later means anything.
    Fail,
    /// Not run, because an earlier step failed.
    Skipped,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Skipped => "skipped",
        })
    }
}

/// One section of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// 1 to 6.
    pub number: usize,
    /// The heading (`Check the initial loss`).
    pub title: String,
    /// Pass, warn, fail or skipped.
    pub verdict: Verdict,
    /// One sentence: what was found.
    pub summary: String,
    /// A Markdown table of the figures.
    pub table: String,
    /// What to do next.
    pub next: String,
    /// The plot's file name beside the report, if any.
    pub plot: Option<String>,
}

impl StepReport {
    fn skipped(number: usize, title: &str, because: usize) -> Self {
        StepReport {
            number,
            title: title.to_string(),
            verdict: Verdict::Skipped,
            summary: format!("Not run: step {because} failed, and nothing after it means much until that is fixed."),
            table: String::new(),
            next: format!("Fix what step {because} names, then run `cnn tune` again."),
            plot: None,
        }
    }
}

/// The step titles, in order.
pub const STEP_TITLES: [&str; 6] = [
    "Check the initial loss",
    "Overfit a small sample",
    "Find a working learning rate",
    "Coarse search",
    "Refine",
    "Read the curves",
];

/// The recipe's settings; [`TuneConfig::for_budget`] scales the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneConfig {
    /// The budget the search sizes were taken from. Default medium.
    pub budget: Budget,
    /// Seed of every draw (trials, samples). Default 0.
    pub seed: u64,
    /// Step 1: batches whose mean loss is compared with ln C. Default 4.
    pub initial_loss_batches: usize,
    /// Step 1: pass when |loss − ln C| ≤ this × ln C, warn up to twice it. Default 0.25.
    pub initial_loss_tolerance: f64,
    /// Step 2: training images to overfit (10–100). Default 50.
    pub overfit_samples: usize,
    /// Step 2: full-batch Adam steps at most. Default 300 (small 150, large 500).
    pub overfit_steps: usize,
    /// Step 2: the loss that counts as overfit. Default 0.05.
    pub overfit_loss: f64,
    /// Step 2: Adam's learning rate. Default 1e-3.
    pub overfit_lr: f64,
    /// Step 3: the rates tried. Default 1e-1, 1e-2, 1e-3, 1e-4.
    pub lr_candidates: Vec<f64>,
    /// Step 3: iterations per rate. Default 100 (small 50, large 200).
    pub lr_iterations: usize,
    /// Step 3: weight decay during the sweep. Default 1e-4.
    pub lr_weight_decay: f64,
    /// Step 3: a rate trains when its smoothed loss falls by at least this
    /// share of its starting loss. Default 0.3.
    pub lr_min_drop: f64,
    /// Step 4: random trials. Default 12 (small 6, large 24).
    pub coarse_trials: usize,
    /// Step 4: epochs per trial. Default 2 (small 1, large 3).
    pub coarse_epochs: usize,
    /// Step 4: the learning rate is drawn log-uniform in [pick·10^−a, pick·10^b]
    /// for `(a, b)` = this. Default (1, 0.5).
    pub coarse_lr_decades: (f64, f64),
    /// Step 4: the weight decay is drawn log-uniform in this range. Default [1e-5, 1e-2].
    pub coarse_weight_decay: (f64, f64),
    /// Step 5: candidates trained longer (the best coarse trial and new draws). Default 3 (small 2, large 5).
    pub refine_candidates: usize,
    /// Step 5: the best coarse trials whose values bound the narrowed ranges. Default 3.
    pub refine_top: usize,
    /// Step 5: epochs per candidate. Default 12 (small 6, large 20).
    pub refine_epochs: usize,
    /// Step 6: the rules that read the curves.
    pub curve_rules: CurveRules,
}

impl TuneConfig {
    /// The default recipe at `budget`.
    pub fn for_budget(budget: Budget) -> Self {
        let (overfit_steps, lr_iterations, coarse, refine) = match budget {
            Budget::Small => (150, 50, (6, 1), (2, 6)),
            Budget::Medium => (300, 100, (12, 2), (3, 12)),
            Budget::Large => (500, 200, (24, 3), (5, 20)),
        };
        TuneConfig {
            budget,
            seed: 0,
            initial_loss_batches: 4,
            initial_loss_tolerance: 0.25,
            overfit_samples: 50,
            overfit_steps,
            overfit_loss: 0.05,
            overfit_lr: 1e-3,
            lr_candidates: vec![1e-1, 1e-2, 1e-3, 1e-4],
            lr_iterations,
            lr_weight_decay: 1e-4,
            lr_min_drop: 0.3,
            coarse_trials: coarse.0,
            coarse_epochs: coarse.1,
            coarse_lr_decades: (1.0, 0.5),
            coarse_weight_decay: (1e-5, 1e-2),
            refine_candidates: refine.0,
            refine_top: 3,
            refine_epochs: refine.1,
            curve_rules: CurveRules::default(),
        }
    }

    cnn_tensor::setters! {
        /// Sets [`TuneConfig::seed`].
        with_seed: seed: u64;
        /// Sets [`TuneConfig::overfit_samples`].
        with_overfit_samples: overfit_samples: usize;
        /// Sets [`TuneConfig::lr_candidates`].
        with_lr_candidates: lr_candidates: Vec<f64>;
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config("tune", m));
        if !(1..=1000).contains(&self.overfit_samples) {
            return bad(format!(
                "overfit_samples must be in 1..=1000, got {}",
                self.overfit_samples
            ));
        }
        if self.lr_candidates.is_empty()
            || self.lr_candidates.iter().any(|&l| !(l > 0.0 && l.is_finite()))
        {
            return bad(format!(
                "lr_candidates must be positive rates, got {:?}",
                self.lr_candidates
            ));
        }
        let (w0, w1) = self.coarse_weight_decay;
        if !(w0 > 0.0 && w1 >= w0 && w1.is_finite()) {
            return bad(format!(
                "coarse_weight_decay must be a positive range, got {:?}",
                self.coarse_weight_decay
            ));
        }
        if [
            self.initial_loss_batches,
            self.overfit_steps,
            self.lr_iterations,
            self.coarse_trials,
            self.coarse_epochs,
            self.refine_candidates,
            self.refine_top,
            self.refine_epochs,
        ]
        .contains(&0)
        {
            return bad("batch, step, trial, candidate and epoch counts must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig::for_budget(Budget::Medium)
    }
}

/// The data a tuning run reads.
pub struct TuneData {
    /// The training loader as training uses it (shuffled, augmented, normalized).
    pub train: DataLoader,
    /// The same training set without augmentation (normalized): steps 1 and 2.
    pub plain: DataLoader,
    /// The validation loader (not the test set: the search selects on it).
    pub val: DataLoader,
}

/// Makes a fresh, untrained network from a seed.
pub type ModelFactory<'a> = dyn FnMut(u64) -> Result<Box<dyn Layer<f32>>> + 'a;

/// What [`Tuner::run`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneReport {
    /// The six sections, in order.
    pub steps: Vec<StepReport>,
    /// The best configuration found (what `best.json` holds), when the search ran.
    pub best: Option<TrainConfig>,
    /// Its validation accuracy.
    pub best_val_accuracy: Option<f64>,
    /// The history of the best refined run (what step 6 read).
    pub final_history: Option<History>,
    /// Wall time, in seconds.
    pub seconds: f64,
}

impl TuneReport {
    /// The worst verdict of the steps that ran.
    pub fn worst(&self) -> Verdict {
        let rank = |v: &Verdict| match v {
            Verdict::Pass | Verdict::Skipped => 0,
            Verdict::Warn => 1,
            Verdict::Fail => 2,
        };
        self.steps.iter().map(|s| s.verdict).max_by_key(rank).unwrap_or(Verdict::Pass)
    }

    /// The report as Markdown, headed by `title` and the `context` lines (data, network).
    pub fn markdown(&self, title: &str, context: &[String]) -> String {
        report::markdown(self, title, context)
    }
}

/// Runs the six steps ([`TuneConfig`]) from a base [`TrainConfig`] (its
/// optimizer, momentum, schedule and label smoothing are kept; the search
/// sets the learning rate, weight decay and epochs).
pub struct Tuner {
    config: TuneConfig,
    base: TrainConfig,
    out_dir: Option<PathBuf>,
    context: Vec<String>,
    progress: ProgressMode,
    log: Box<dyn FnMut(&str) + Send>,
    tensorboard: bool,
}

impl Tuner {
    /// A tuner with `config`, starting from `base`; silent, writing nothing.
    pub fn new(config: TuneConfig, base: TrainConfig) -> Self {
        Tuner {
            config,
            base,
            out_dir: None,
            context: Vec::new(),
            progress: ProgressMode::Quiet,
            log: Box::new(|_| {}),
            tensorboard: true,
        }
    }

    /// Whether each search trial writes a TensorBoard log under the output
    /// directory (`tensorboard/coarse/trial-N`, `tensorboard/refine/trial-N`:
    /// `tensorboard --logdir DIR/tensorboard` shows them side by side).
    /// Default `true`.
    pub fn with_tensorboard(mut self, on: bool) -> Self {
        self.tensorboard = on;
        self
    }

    /// The TensorBoard directory of a search step's trials, when on.
    fn board_dir(&self, step: &str) -> Option<PathBuf> {
        self.out_dir.as_ref().filter(|_| self.tensorboard).map(|d| d.join("tensorboard").join(step))
    }

    /// Writes `report.md`, `best.json` and the plots into `dir` (created if missing).
    pub fn with_out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    cnn_tensor::setters! {
        /// Lines that open the report (the data, the network, the command).
        with_context: context: Vec<String>;
        /// How each search trial's training shows progress. Default quiet.
        with_progress: progress: ProgressMode;
    }

    /// Receives one line per step and per trial as the run goes.
    pub fn with_log(mut self, log: impl FnMut(&str) + Send + 'static) -> Self {
        self.log = Box::new(log);
        self
    }

    fn plot_path(&self, name: &str) -> Option<PathBuf> {
        self.out_dir.as_ref().map(|d| d.join(name))
    }

    /// Runs the recipe: each step on fresh networks from `factory` (seeded
    /// with [`TuneConfig::seed`]); a failed step 1, 2 or 3 skips the rest.
    ///
    /// # Errors
    /// [`Error::Config`] for bad settings; whatever the model, the loaders or
    /// the file writes return.
    pub fn run(&mut self, factory: &mut ModelFactory<'_>, data: &TuneData) -> Result<TuneReport> {
        // Every step in the base recipe's precision, not only the trials
        // that train through `Trainer::fit`.
        let precision = self.base.precision;
        cnn_tensor::with_precision(precision, || self.run_steps(factory, data))
    }

    /// The steps of [`Tuner::run`], inside its precision scope.
    fn run_steps(&mut self, factory: &mut ModelFactory<'_>, data: &TuneData) -> Result<TuneReport> {
        let started = Instant::now();
        self.config.validate()?;
        self.base.validate()?;
        if let Some(dir) = &self.out_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        let c = self.config.clone();
        let seed = c.seed;
        let classes = data.train.dataset().classes().len().max(2);
        let mut steps = Vec::new();
        let mut best = None;
        let mut best_val = None;
        let mut final_history = None;

        (self.log)("step 1/6: the initial loss against ln C");
        let step1 = check_initial_loss(&mut *factory(seed)?, &data.plain, classes, &c)?.0;
        (self.log)(&format!("  {}: {}", step1.verdict, step1.summary));
        let failed = (step1.verdict == Verdict::Fail).then_some(1);
        steps.push(step1);

        let step2 = match failed {
            Some(f) => StepReport::skipped(2, STEP_TITLES[1], f),
            None => {
                (self.log)(&format!("step 2/6: overfit {} training images", c.overfit_samples));
                let plot = self.plot_path("overfit.png");
                overfit_sample(&mut *factory(seed)?, &data.plain, &c, plot.as_deref())?.0
            }
        };
        let failed = failed.or((step2.verdict == Verdict::Fail).then_some(2));
        if step2.verdict != Verdict::Skipped {
            (self.log)(&format!("  {}: {}", step2.verdict, step2.summary));
        }
        steps.push(step2);

        let mut pick = None;
        let step3 = match failed {
            Some(f) => StepReport::skipped(3, STEP_TITLES[2], f),
            None => {
                (self.log)(&format!(
                    "step 3/6: {} iterations at each of {} learning rates",
                    c.lr_iterations,
                    c.lr_candidates.len()
                ));
                let plot = self.plot_path("lr_sweep.png");
                let (report, chosen, _) =
                    lr_sweep(factory, &data.train, &self.base, &c, plot.as_deref())?;
                pick = chosen;
                report
            }
        };
        let failed = failed.or((step3.verdict == Verdict::Fail).then_some(3));
        if step3.verdict != Verdict::Skipped {
            (self.log)(&format!("  {}: {}", step3.verdict, step3.summary));
        }
        steps.push(step3);

        match (failed, pick) {
            (None, Some(pick)) => {
                (self.log)(&format!(
                    "step 4/6: {} random trials of {} epoch(s)",
                    c.coarse_trials, c.coarse_epochs
                ));
                let board = self.board_dir("coarse");
                let log = &mut self.log;
                let plot = self.out_dir.as_ref().map(|d| d.join("coarse.png"));
                let out = SearchOutput {
                    plot: plot.as_deref(),
                    progress: self.progress,
                    tensorboard: board.as_deref(),
                    on_trial: &mut |t: &Trial| log(&format!("  {}", t.line())),
                };
                let (step4, trials) = coarse_search(factory, data, &self.base, pick, &c, out)?;
                (self.log)(&format!("  {}: {}", step4.verdict, step4.summary));
                steps.push(step4);
                (self.log)(&format!(
                    "step 5/6: {} candidates of {} epochs, warmup and cosine",
                    c.refine_candidates, c.refine_epochs
                ));
                let board = self.board_dir("refine");
                let log = &mut self.log;
                let plot = self.out_dir.as_ref().map(|d| d.join("refine.png"));
                let out = SearchOutput {
                    plot: plot.as_deref(),
                    progress: self.progress,
                    tensorboard: board.as_deref(),
                    on_trial: &mut |t: &Trial| log(&format!("  {}", t.line())),
                };
                let (step5, winner) = refine(factory, data, &self.base, &trials, &c, out)?;
                (self.log)(&format!("  {}: {}", step5.verdict, step5.summary));
                steps.push(step5);
                (self.log)("step 6/6: read the curves of the best run");
                let plot = self.plot_path("curves.png");
                let step6 = curves::curve_step(&winner.history, &c.curve_rules, plot.as_deref())?;
                (self.log)(&format!("  {}: {}", step6.verdict, step6.summary));
                steps.push(step6);
                best_val = winner.val_accuracy();
                final_history = Some(winner.history.clone());
                best = Some(winner.config.clone());
            }
            (failed, _) => {
                let because = failed.unwrap_or(3);
                for (i, title) in STEP_TITLES.iter().enumerate().skip(3) {
                    steps.push(StepReport::skipped(i + 1, title, because));
                }
            }
        }
        let report = TuneReport {
            steps,
            best,
            best_val_accuracy: best_val,
            final_history,
            seconds: started.elapsed().as_secs_f64(),
        };
        if let Some(dir) = &self.out_dir {
            if let Some(best) = &report.best {
                let json = serde_json::to_vec_pretty(best)
                    .map_err(|e| Error::format("best.json", e.to_string()))?;
                cnn_tensor::write_atomic(&dir.join("best.json"), &json)?;
            }
            let md = report.markdown("Tuning report", &self.context);
            cnn_tensor::write_atomic(&dir.join("report.md"), md.as_bytes())?;
        }
        Ok(report)
    }
}

/// A seed for trial `i` of a step, from the run's seed.
pub(crate) fn trial_seed(seed: u64, step: u64, i: u64) -> u64 {
    mix_seed(mix_seed(seed, step), i)
}
