//! Steps 1 to 3: the initial loss, overfitting a small sample, the learning-rate sweep.

use std::path::Path;
use std::sync::Arc;

use cnn_data::{stratified_split, DataLoader};
use cnn_tensor::{cross_entropy_forward, Error, Layer, Mode, Result};

use super::{ModelFactory, StepReport, TuneConfig, Verdict, STEP_TITLES};
use crate::step::{apply_gradients, as_logits, compute_gradients};
use crate::{CrossEntropy, LineChart, OptimizerKind, ScheduleKind, TrainConfig};

/// Step 1: the untrained model's mean loss over the first batches of
/// `loader` against ln C, the loss of a uniform guess over C classes.
///
/// Returns the section and the measured loss. Pass when
/// `|loss − ln C| ≤ tolerance · ln C`, warn up to twice that, fail beyond.
/// The forward runs in train mode (batch statistics), as the first
/// training step would see it.
///
/// # Errors
/// Whatever the model or the loader returns; [`Error::Config`] for an empty loader.
pub fn check_initial_loss(
    model: &mut dyn Layer<f32>,
    loader: &DataLoader,
    classes: usize,
    config: &TuneConfig,
) -> Result<(StepReport, f64)> {
    let (mut loss_sum, mut seen, mut logit_sq, mut logit_n) = (0.0, 0usize, 0.0, 0usize);
    for batch in loader.epoch(0).take(config.initial_loss_batches) {
        let batch = batch?;
        let n = batch.labels.len();
        let logits = as_logits(model.forward(batch.images.into_dyn(), Mode::Train)?, n)?;
        if logits.ncols() != classes {
            return Err(Error::shape(
                "tune",
                format!("the model outputs {} classes, the data has {classes}", logits.ncols()),
            ));
        }
        loss_sum += f64::from(cross_entropy_forward(logits.view(), &batch.labels, 0.0)?) * n as f64;
        seen += n;
        logit_sq += logits.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
        logit_n += logits.len();
    }
    if seen == 0 {
        return Err(Error::config("tune", "the training set gives no batch"));
    }
    let loss = loss_sum / seen as f64;
    let expected = (classes as f64).ln();
    let deviation = (loss - expected).abs() / expected;
    let tol = config.initial_loss_tolerance;
    let logit_rms = (logit_sq / logit_n.max(1) as f64).sqrt();
    let verdict = if !loss.is_finite() || deviation > 2.0 * tol {
        Verdict::Fail
    } else if deviation > tol {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    let table = format!(
        "| classes C | ln C | initial loss ({seen} images) | deviation | tolerance (warn, fail) | logit RMS |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n\
         | {classes} | {expected:.4} | {loss:.4} | {:.1}% | {:.0}%, {:.0}% | {logit_rms:.3} |\n",
        100.0 * deviation,
        100.0 * tol,
        200.0 * tol
    );
    let (summary, next) = match verdict {
        Verdict::Pass => (
            format!("The untrained loss {loss:.3} is within {:.0}% of ln {classes} = {expected:.3}: the logits start near zero, as they should.", 100.0 * tol),
            "Go on: the loss and the labels agree.".to_string(),
        ),
        _ => {
            let direction = if loss > expected {
                "above: the untrained network is confidently wrong"
            } else {
                "below: better than chance before any training, which is suspicious"
            };
            (
                format!("The untrained loss {loss:.3} is {:.0}% {direction} (ln {classes} = {expected:.3}, logit RMS {logit_rms:.2}).", 100.0 * deviation),
                "Check the usual causes: the labels (out of range, shifted, from another split), \
                 the loss (mean cross-entropy on raw logits, not on probabilities or a sum), \
                 the init scale (the last layer's weights too large: logits should start near 0), \
                 and a ReLU or other activation before the logits."
                    .to_string(),
            )
        }
    };
    let report = StepReport {
        number: 1,
        title: STEP_TITLES[0].into(),
        verdict,
        summary,
        table,
        next,
        plot: None,
    };
    Ok((report, loss))
}

/// Step 2: trains on `config.overfit_samples` training images (a stratified
/// draw, no augmentation, no weight decay, one full batch, Adam at
/// `config.overfit_lr`) until the loss falls to `config.overfit_loss` or
/// `config.overfit_steps` run out; then checks that what it learned carries
/// to up to 1000 other training images. Returns the section and the loss per step.
///
/// A network that cannot drive the loss on a handful of images to zero has a
/// bug, too little capacity, or an optimizer that cannot move it. One that
/// can, but then does no better than chance on other images of the same
/// classes, has memorized labels that do not belong to their images
/// (shuffled, misaligned, from another file): a large network memorizes
/// random labels as fast as true ones (Zhang et al. 2017), so the loss alone
/// cannot tell. The rule: fail unless the held-out accuracy is above chance
/// by more than 2.33 binomial standard deviations (one-sided p ≈ 0.01); with
/// fewer than two sample images per class, that check only warns.
///
/// # Errors
/// Whatever the model or the loader returns.
pub fn overfit_sample(
    model: &mut dyn Layer<f32>,
    plain: &DataLoader,
    config: &TuneConfig,
    plot: Option<&Path>,
) -> Result<(StepReport, Vec<f64>)> {
    let dataset = plain.dataset().clone();
    let classes = dataset.classes().len().max(2);
    let n = config.overfit_samples.min(dataset.len());
    let fraction = n as f64 / dataset.len() as f64;
    let (rest, sample) = stratified_split(dataset, fraction, config.seed)?;
    let n = cnn_data::Dataset::len(&sample);
    let rest: Arc<dyn cnn_data::Dataset> = Arc::new(rest);
    let held_fraction = (1000.0 / rest.len().max(1) as f64).min(1.0);
    let (_, held_out) = stratified_split(rest, held_fraction, config.seed ^ 1)?;
    let loader = plain.over(Arc::new(sample)).with_batch_size(n.max(1))?;
    let batch = loader.batch(0, 0)?;
    let train = TrainConfig::default()
        .with_optimizer(OptimizerKind::Adam)
        .with_lr(config.overfit_lr)
        .with_weight_decay(0.0)
        .with_schedule(ScheduleKind::Constant);
    let mut optimizer = train.build_optimizer()?;
    let schedule = train.build_schedule(1)?;
    let mut losses = Vec::new();
    let mut correct = 0;
    for step in 0..config.overfit_steps as u64 {
        let stats = compute_gradients(
            model,
            batch.images.clone().into_dyn(),
            &batch.labels,
            &CrossEntropy::default(),
            config.seed,
            step,
        )?;
        losses.push(stats.loss);
        correct = stats.correct;
        if !stats.loss.is_finite() || stats.loss <= config.overfit_loss {
            break;
        }
        apply_gradients(&mut optimizer, &schedule, model, step)?;
    }
    let last = losses.last().copied().unwrap_or(f64::NAN);
    let reached = last.is_finite() && last <= config.overfit_loss;
    // Does what it learned carry to other images? Chance is 1/C.
    let held_n = cnn_data::Dataset::len(&held_out);
    let held = if reached && held_n > 0 {
        let report = crate::evaluate(model, &plain.over(Arc::new(held_out)).with_shuffle(false))?;
        let chance = 1.0 / classes as f64;
        let sd = (chance * (1.0 - chance) / held_n as f64).sqrt();
        Some((report.accuracy, (report.accuracy - chance) / sd))
    } else {
        None
    };
    let enough_per_class = n >= 2 * classes;
    let verdict = match held {
        _ if !reached => Verdict::Fail,
        None => Verdict::Warn,
        Some((_, z)) if z <= 2.33 && enough_per_class => Verdict::Fail,
        Some((_, z)) if z <= 2.33 => Verdict::Warn,
        _ => Verdict::Pass,
    };
    let held_cell = held
        .map_or("–".to_string(), |(a, z)| format!("{:.1}%, {z:.1} sd above chance", 100.0 * a));
    let table = format!(
        "| images | steps run (budget) | first loss | last loss | threshold | accuracy on the sample | on {held_n} other images (chance {:.1}%) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
         | {n} | {} ({}) | {:.4} | {last:.4} | {} | {:.1}% | {held_cell} |\n",
        100.0 / classes as f64,
        losses.len(),
        config.overfit_steps,
        losses.first().copied().unwrap_or(f64::NAN),
        config.overfit_loss,
        100.0 * correct as f64 / n.max(1) as f64
    );
    let (summary, next) = match (reached, verdict) {
        (false, _) => (
            format!("After {} steps the loss on {n} images is still {last:.4} (threshold {}): the network cannot memorize a handful of images.", losses.len(), config.overfit_loss),
            "Look at capacity (a network too small or too narrow for the images), optimization \
             (a broken backward: gradient-check custom layers; an init that kills the signal; the lr), \
             or preprocessing (labels that do not belong to their images, normalization that wipes the signal)."
                .to_string(),
        ),
        (true, Verdict::Pass) => (
            format!("The loss on {n} images fell from {:.3} to {last:.4} in {} steps, and the fit carries to other images ({held_cell}): the network learns these labels.", losses[0], losses.len()),
            "Go on: the model, the loss and the backward pass work together.".to_string(),
        ),
        (true, _) if held.is_none() => (
            format!("The loss on {n} images fell from {:.3} to {last:.4} in {} steps; no training images were left to check that the fit carries to others.", losses[0], losses.len()),
            "Go on, but with this little data, check the labels by eye (`cnn augment-preview` shows images by class) and expect the search to be noisy.".to_string(),
        ),
        (true, _) => (
            format!("The network memorized {n} images (loss {last:.4} in {} steps) but does no better than chance on other images ({held_cell}): it memorized labels that do not belong to their images.", losses.len()),
            "Look at preprocessing: labels shuffled or misaligned with their images (a sort on one \
             list but not the other, the wrong label file), a transform that destroys the image; \
             capacity and optimization are fine, since the sample was memorized."
                .to_string(),
        ),
    };
    let plot_name = draw_chart(plot, || LineChart {
        title: format!("Step 2: overfitting {n} images"),
        x_desc: "step".into(),
        y_desc: "training loss (log scale)".into(),
        series: vec![(
            "loss".into(),
            losses.iter().enumerate().map(|(i, &l)| (i as f64 + 1.0, l)).collect(),
        )],
        log_x: false,
        log_y: true,
        reference: Some((config.overfit_loss, format!("threshold {}", config.overfit_loss))),
    })?;
    let report = StepReport {
        number: 2,
        title: STEP_TITLES[1].into(),
        verdict,
        summary,
        table,
        next,
        plot: plot_name,
    };
    Ok((report, losses))
}

pub(crate) fn file_name(path: &Path) -> Option<String> {
    path.file_name().map(|f| f.to_string_lossy().into_owned())
}

/// Draws the chart `make` builds into `plot` (900×520), when a path is
/// given; returns the file name the report links.
pub(crate) fn draw_chart(
    plot: Option<&Path>,
    make: impl FnOnce() -> LineChart,
) -> Result<Option<String>> {
    let Some(path) = plot else { return Ok(None) };
    make().write_png(path, (900, 520))?;
    Ok(file_name(path))
}

/// One rate's run in the learning-rate sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct LrCurve {
    /// The learning rate.
    pub lr: f64,
    /// The loss of every iteration.
    pub losses: Vec<f64>,
    /// The exponentially smoothed loss (β = 0.9, bias-corrected).
    pub smoothed: Vec<f64>,
    /// The loss before the first update: the same network for every rate.
    pub start: f64,
    /// The last smoothed loss.
    pub end: f64,
    /// Whether every loss was finite and the smoothed loss never exceeded
    /// 1.5× `start`.
    pub stable: bool,
}

impl LrCurve {
    /// `1 − end / start`: the share of the starting loss it removed.
    pub fn drop(&self) -> f64 {
        1.0 - self.end / self.start
    }
}

/// Exponential smoothing with bias correction (what Lightning's `lr_find` plots).
fn smooth(losses: &[f64], beta: f64) -> Vec<f64> {
    let mut avg = 0.0;
    losses
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            avg = beta * avg + (1.0 - beta) * l;
            avg / (1.0 - beta.powi(i as i32 + 1))
        })
        .collect()
}

/// Step 3: `config.lr_iterations` iterations at each rate of
/// `config.lr_candidates` (a fresh network each, the base optimizer at a
/// constant rate, weight decay `config.lr_weight_decay`, the full training
/// data). The pick is **the largest rate that is stable and whose smoothed
/// loss fell by at least `config.lr_min_drop` of its start (the loss before
/// the first update, the same for every rate) and never rose above 1.5× it**.
/// Returns the section, the pick (if any) and every curve.
///
/// # Errors
/// Whatever the models or the loader return.
pub fn lr_sweep(
    factory: &mut ModelFactory<'_>,
    train: &DataLoader,
    base: &TrainConfig,
    config: &TuneConfig,
    plot: Option<&Path>,
) -> Result<(StepReport, Option<f64>, Vec<LrCurve>)> {
    let mut curves = Vec::new();
    for &lr in &config.lr_candidates {
        let mut model = factory(config.seed)?;
        let cfg = base
            .clone()
            .with_lr(lr)
            .with_weight_decay(config.lr_weight_decay)
            .with_schedule(ScheduleKind::Constant);
        let mut optimizer = cfg.build_optimizer()?;
        let schedule = cfg.build_schedule(1)?;
        let mut losses = Vec::with_capacity(config.lr_iterations);
        'run: for epoch in 0.. {
            let mut any = false;
            for batch in train.epoch(epoch) {
                any = true;
                let batch = batch?;
                let step = losses.len() as u64;
                let stats = compute_gradients(
                    &mut *model,
                    batch.images.into_dyn(),
                    &batch.labels,
                    &CrossEntropy::new(base.label_smoothing),
                    config.seed,
                    step,
                )?;
                losses.push(stats.loss);
                if !stats.loss.is_finite() || losses.len() >= config.lr_iterations {
                    break 'run;
                }
                apply_gradients(&mut optimizer, &schedule, &mut *model, step)?;
            }
            if !any {
                return Err(Error::config("tune", "the training set gives no batch"));
            }
        }
        let smoothed = smooth(&losses, 0.9);
        // The reference is the loss before any update, shared by every rate:
        // a mean of the first few losses would already hold a diverging
        // rate's jump (lr 10 on the digits: 2.3 → 6.6 by step 5, then "down"
        // to 3.0, above chance, which is not training), and a good rate's drop.
        let start = losses.first().copied().unwrap_or(f64::NAN);
        let end = smoothed.last().copied().unwrap_or(f64::NAN);
        let ceiling = 1.5 * start;
        let stable = losses.iter().all(|l| l.is_finite()) && smoothed.iter().all(|&s| s <= ceiling);
        curves.push(LrCurve { lr, losses, smoothed, start, end, stable });
    }
    let trains = |c: &LrCurve| c.stable && c.drop() >= config.lr_min_drop;
    let pick = curves
        .iter()
        .filter(|c| trains(c))
        .map(|c| c.lr)
        .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))));
    let mut table = String::from(
        "| lr | start loss | end loss (smoothed) | drop | stable | trains |\n| ---: | ---: | ---: | ---: | :---: | :---: |\n",
    );
    for c in &curves {
        table.push_str(&format!(
            "| {:e} | {:.4} | {:.4} | {:.0}% | {} | {} |\n",
            c.lr,
            c.start,
            c.end,
            100.0 * c.drop(),
            if c.stable { "yes" } else { "no" },
            if trains(c) { "yes" } else { "no" }
        ));
    }
    let smallest = config.lr_candidates.iter().copied().fold(f64::INFINITY, f64::min);
    let rule = format!(
        "the largest stable rate whose smoothed loss fell by at least {:.0}% in {} iterations",
        100.0 * config.lr_min_drop,
        config.lr_iterations
    );
    let (verdict, summary, next) = match pick {
        Some(lr) if lr > smallest => (
            Verdict::Pass,
            format!("Picked lr = {lr:e}: {rule}."),
            format!("Search around {lr:e} in step 4."),
        ),
        Some(lr) => (
            Verdict::Warn,
            format!("Only the smallest rate, {lr:e}, trains by the rule ({rule})."),
            "Larger rates diverge or stall: try still smaller rates, a warmup, or check the input scale (normalization).".into(),
        ),
        None => (
            Verdict::Fail,
            format!("No rate trains by the rule ({rule})."),
            "If every rate diverged, add smaller rates; if none moved, add larger ones or more \
             iterations; if step 2 passed, suspect the augmentation or the full data's labels."
                .into(),
        ),
    };
    let plot_name = draw_chart(plot, || LineChart {
        title: "Step 3: smoothed training loss per learning rate".into(),
        x_desc: "iteration".into(),
        y_desc: "training loss (smoothed)".into(),
        series: curves
            .iter()
            .map(|c| {
                let pts =
                    c.smoothed.iter().enumerate().map(|(i, &l)| (i as f64 + 1.0, l)).collect();
                (format!("lr {:e}{}", c.lr, if Some(c.lr) == pick { " (picked)" } else { "" }), pts)
            })
            .collect(),
        log_x: false,
        log_y: false,
        reference: None,
    })?;
    let report = StepReport {
        number: 3,
        title: STEP_TITLES[2].into(),
        verdict,
        summary,
        table,
        next,
        plot: plot_name,
    };
    Ok((report, pick, curves))
}
