//! Evaluation, prediction and test-time augmentation, always in eval mode.

use std::fmt::Write as _;

use cnn_augment::Transform;
use cnn_data::{shard_range, Batch, DataLoader};
use cnn_tensor::collective::Collective;
use cnn_tensor::random::{mix_seed, seeded_rng};
use cnn_tensor::{cross_entropy_forward, softmax, ArrayD, Error, Float, Layer, Mode, Result};
use ndarray::{Array2, Array4, Axis};
use serde::{Deserialize, Serialize};

use crate::step::{as_logits, top_k_correct};

/// What [`evaluate`] measured over a whole split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean cross-entropy (no smoothing); for test-time augmentation, of the averaged probabilities.
    pub loss: f64,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Top-5 accuracy, when there are more than 5 classes.
    pub top5: Option<f64>,
    /// Accuracy of each class (NaN for a class with no sample).
    pub per_class: Vec<f64>,
    /// `confusion[label][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Samples seen.
    pub count: usize,
    /// Class names, from the dataset.
    pub classes: Vec<String>,
}

impl EvalReport {
    /// The per-class accuracies and the confusion matrix as a text table.
    pub fn table(&self) -> String {
        let width = self.classes.iter().map(String::len).max().unwrap_or(1).clamp(5, 16);
        let mut out = format!("{:>width$}  {:>8}  {:>6}  predicted →\n", "class", "accuracy", "n");
        for (c, row) in self.confusion.iter().enumerate() {
            let name: String =
                self.classes.get(c).map_or("?", |s| s.as_str()).chars().take(16).collect();
            let n: u64 = row.iter().sum();
            let _ = write!(out, "{name:>width$}  {:>7.2}%  {n:>6} ", 100.0 * self.per_class[c]);
            if self.confusion.len() <= 20 {
                for v in row {
                    let _ = write!(out, " {v:>4}");
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Accumulates loss, hits and the confusion matrix batch by batch.
struct Tally {
    loss_sum: f64,
    top5: usize,
    confusion: Vec<Vec<u64>>,
    count: usize,
}

impl Tally {
    fn new(classes: usize) -> Self {
        Tally { loss_sum: 0.0, top5: 0, confusion: vec![vec![0; classes]; classes], count: 0 }
    }

    /// Adds a batch of probabilities `[n, classes]` (rows summing to 1) and,
    /// when the logits gave it exactly, the batch's summed loss (else it is
    /// taken from the probabilities).
    fn add(&mut self, probs: &Array2<f32>, labels: &[usize], loss_sum: Option<f64>) -> Result<()> {
        let classes = self.confusion.len();
        check_classes(probs.ncols(), classes)?;
        for (row, &label) in probs.outer_iter().zip(labels) {
            if label >= classes {
                return Err(Error::shape(
                    "evaluate",
                    format!("label {label} is not a class of {classes}"),
                ));
            }
            if loss_sum.is_none() {
                self.loss_sum -= f64::from(row[label].max(f32::MIN_POSITIVE)).ln();
            }
            self.confusion[label][argmax(row.iter().copied())] += 1;
        }
        self.loss_sum += loss_sum.unwrap_or(0.0);
        self.top5 += top_k_correct(probs.view(), labels, 5);
        self.count += labels.len();
        Ok(())
    }

    /// Runs `model` on a batch in eval mode and adds it.
    fn add_batch<T: Float>(&mut self, model: &mut dyn Layer<T>, batch: Batch) -> Result<()> {
        let n = batch.labels.len();
        if n == 0 {
            // Every sample unreadable and skipped (`BadSamples::Skip`).
            return Ok(());
        }
        let images = crate::images_as::<T>(batch.images.into_dyn());
        let logits = as_logits(model.forward(images, Mode::Eval)?, n)?;
        check_classes(logits.ncols(), self.confusion.len())?;
        // From the log-softmax, so a confident mistake costs its full loss.
        let loss = cross_entropy_forward(logits.view(), &batch.labels, 0.0)?.as_f64() * n as f64;
        // Probabilities in f32 for the tally: exact for an f32 model.
        let probs = softmax(logits.view()).mapv(|p| p.as_f64() as f32);
        self.add(&probs, &batch.labels, Some(loss))
    }

    fn report(self, classes: Vec<String>) -> Result<EvalReport> {
        if self.count == 0 {
            return Err(Error::config("evaluate", "the split has no samples"));
        }
        let n = self.count as f64;
        // Top-1 hits are the confusion matrix's diagonal (argmax breaks ties as top_k_correct does).
        let top1: u64 = (0..self.confusion.len()).map(|c| self.confusion[c][c]).sum();
        let per_class = self
            .confusion
            .iter()
            .enumerate()
            .map(|(c, row)| row[c] as f64 / row.iter().sum::<u64>() as f64)
            .collect();
        Ok(EvalReport {
            loss: self.loss_sum / n,
            accuracy: top1 as f64 / n,
            top5: (self.confusion.len() > 5).then(|| self.top5 as f64 / n),
            per_class,
            confusion: self.confusion,
            count: self.count,
            classes,
        })
    }
}

fn check_classes(model: usize, data: usize) -> Result<()> {
    if model != data {
        return Err(Error::shape(
            "evaluate",
            format!("the model outputs {model} classes, the dataset has {data}"),
        ));
    }
    Ok(())
}

fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// The softmax of `model` on a batch, in eval mode.
fn probabilities(model: &mut dyn Layer<f32>, images: ArrayD<f32>) -> Result<Array2<f32>> {
    let n = images.shape().first().copied().unwrap_or(0);
    let logits = as_logits(model.forward(images, Mode::Eval)?, n)?;
    Ok(softmax(logits.view()))
}

fn class_names(loader: &DataLoader) -> Vec<String> {
    loader.dataset().classes().to_vec()
}

/// Loss, accuracy (top-5 too past 5 classes), per-class accuracy and the
/// confusion matrix of `model` over every batch of `loader` (epoch 0), in eval mode.
///
/// # Errors
/// Whatever the loader or the model returns; [`Error::Shape`] when the model's
/// classes differ from the dataset's; [`Error::Config`] for an empty split.
pub fn evaluate<T: Float>(model: &mut dyn Layer<T>, loader: &DataLoader) -> Result<EvalReport> {
    let classes = class_names(loader);
    let mut tally = Tally::new(classes.len());
    for batch in loader.epoch(0) {
        tally.add_batch(model, batch?)?;
    }
    tally.report(classes)
}

/// [`evaluate`] shared by the ranks of `group`: each rank evaluates its share
/// of every batch ([`DataLoader::shard`]) and the sums (loss, top-5 hits,
/// the confusion matrix, the count) are added across ranks, so every rank
/// gets the report of the whole split. Every rank must call it.
///
/// # Errors
/// As [`evaluate`]; [`Error::Distributed`] when the transport fails.
pub fn evaluate_distributed<T: Float>(
    model: &mut dyn Layer<T>,
    loader: &DataLoader,
    group: &dyn Collective,
) -> Result<EvalReport> {
    if group.size() <= 1 {
        return evaluate(model, loader);
    }
    let classes = class_names(loader);
    let mut tally = Tally::new(classes.len());
    let (rank, ranks) = (group.rank(), group.size());
    for b in 0..loader.batches_per_epoch() {
        // A last batch of fewer samples than ranks leaves some ranks out.
        if !shard_range(loader.batch_len(b), rank, ranks).is_empty() {
            tally.add_batch(model, loader.shard(0, b, rank, ranks)?)?;
        }
    }
    let mut sums = vec![tally.loss_sum, tally.top5 as f64, tally.count as f64];
    sums.extend(tally.confusion.iter().flatten().map(|&v| v as f64));
    group.sum_f64(&mut sums)?;
    // Counts below 2^53 are exact in f64.
    tally.loss_sum = sums[0];
    tally.top5 = sums[1] as usize;
    tally.count = sums[2] as usize;
    let c = classes.len();
    for (k, v) in sums[3..].iter().enumerate() {
        tally.confusion[k / c][k % c] = *v as u64;
    }
    tally.report(classes)
}

/// [`evaluate`] with test-time augmentation: the softmax averaged over
/// `views` views of each image, the first from `plain` (the eval pipeline)
/// and view `v ≥ 1` from `augmented`'s epoch `v` (the training pipeline's
/// random flips and crops, seeded). Both loaders must walk the same dataset
/// in the same order (`with_shuffle(false)`).
///
/// Training adds randomness; testing averages it out.
///
/// # Errors
/// As [`evaluate`]; [`Error::Config`] for zero views or loaders that disagree.
pub fn evaluate_tta(
    model: &mut dyn Layer<f32>,
    plain: &DataLoader,
    augmented: &DataLoader,
    views: usize,
) -> Result<EvalReport> {
    if views == 0 || plain.batches_per_epoch() != augmented.batches_per_epoch() {
        return Err(Error::config(
            "evaluate_tta",
            "need at least one view, and two loaders over the same samples",
        ));
    }
    let classes = class_names(plain);
    let mut tally = Tally::new(classes.len());
    // View v is epoch v of the augmented loader, walked in step with the plain one.
    let mut augmented_views: Vec<_> = (1..views).map(|v| augmented.epoch(v as u64)).collect();
    for batch in plain.epoch(0) {
        let batch = batch?;
        if batch.labels.is_empty() {
            // Every sample unreadable and skipped: the same in every view.
            for view in &mut augmented_views {
                view.next().transpose()?;
            }
            continue;
        }
        let mut sum = probabilities(model, batch.images.into_dyn())?;
        for view in &mut augmented_views {
            let view = view.next().ok_or_else(|| {
                Error::config("evaluate_tta", "the augmented loader ran out of batches")
            })??;
            if view.labels != batch.labels {
                return Err(Error::config(
                    "evaluate_tta",
                    "the two loaders give other samples: build both with with_shuffle(false)",
                ));
            }
            sum += &probabilities(model, view.images.into_dyn())?;
        }
        sum /= views as f32;
        tally.add(&sum, &batch.labels, None)?;
    }
    tally.report(classes)
}

/// Class probabilities and the most likely class of each image.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// `[n, classes]` softmax rows.
    pub probabilities: Array2<f32>,
    /// The argmax of each row.
    pub classes: Vec<usize>,
}

impl Predictions {
    fn from_probabilities(probabilities: Array2<f32>) -> Self {
        let classes = probabilities.outer_iter().map(|r| argmax(r.iter().copied())).collect();
        Predictions { probabilities, classes }
    }
}

/// The model's class probabilities for `images` (already normalized as in
/// training), in eval mode whatever mode it was last run in.
///
/// # Shapes
/// `images: [n, C, H, W]` → `probabilities: [n, classes]`.
///
/// # Errors
/// Whatever the model's forward returns; [`Error::Shape`] for an output that is not `[n, classes]`.
pub fn predict(model: &mut dyn Layer<f32>, images: ArrayD<f32>) -> Result<Predictions> {
    Ok(Predictions::from_probabilities(probabilities(model, images)?))
}

/// [`predict`] averaged over `views` views: the images as given, then
/// `views − 1` draws of `transform` (view `v` of image `i` seeded from
/// `(seed, v, i)`).
///
/// # Errors
/// As [`predict`]; [`Error::Config`] for zero views; whatever the transform returns.
pub fn predict_tta(
    model: &mut dyn Layer<f32>,
    images: &Array4<f32>,
    transform: &dyn Transform<f32>,
    views: usize,
    seed: u64,
) -> Result<Predictions> {
    if views == 0 {
        return Err(Error::config("predict_tta", "need at least one view"));
    }
    let mut sum = probabilities(model, images.clone().into_dyn())?;
    for v in 1..views {
        let mut drawn = Vec::with_capacity(images.len_of(Axis(0)));
        for (i, img) in images.outer_iter().enumerate() {
            let mut rng = seeded_rng(mix_seed(mix_seed(seed, v as u64), i as u64));
            drawn.push(transform.apply(img.to_owned(), &mut rng)?.insert_axis(Axis(0)));
        }
        let views: Vec<_> = drawn.iter().map(|a| a.view()).collect();
        let batch = ndarray::concatenate(Axis(0), &views)
            .map_err(|e| Error::shape("predict_tta", e.to_string()))?;
        sum += &probabilities(model, batch.into_dyn())?;
    }
    sum /= views as f32;
    Ok(Predictions::from_probabilities(sum))
}
