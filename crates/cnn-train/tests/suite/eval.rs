//! evaluate, predict and test-time augmentation against hand-computed values.

#![allow(clippy::unwrap_used)] // test helpers unwrap like the tests themselves

use std::sync::Arc;

use cnn_augment::{Compose, RandomHorizontalFlip};
use cnn_data::{DataLoader, Dataset, Digits, Subset};
use cnn_nn::{Flatten, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_tensor::{random::seeded_rng, ArrayD, Layer, Mode, Param, Result};
use cnn_train::{evaluate, evaluate_tta, predict, predict_tta, ProgressMode, TrainConfig, Trainer};
use ndarray::{Array4, Axis, IxDyn};

/// Logits that put all mass on class `pixel[0] > 0.5 ? 1 : 0` of 3, whatever else.
struct Threshold;

impl Layer<f32> for Threshold {
    fn forward(&mut self, x: ArrayD<f32>, _mode: Mode) -> Result<ArrayD<f32>> {
        let n = x.shape()[0];
        let mut y = ArrayD::zeros(IxDyn(&[n, 3]));
        for (i, img) in x.axis_iter(Axis(0)).enumerate() {
            let class = usize::from(img.iter().next().copied().unwrap_or(0.0) > 0.5);
            y[[i, class]] = 20.0;
        }
        Ok(y)
    }
    fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        Ok(dy)
    }
    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<f32>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<f32>)) {}
}

/// Six 1×1×1 images: (value, label).
struct Tiny(Vec<(f32, usize)>, Vec<String>);

impl Dataset for Tiny {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> Result<(ndarray::Array3<f32>, usize)> {
        let (v, l) = self.0[i];
        Ok((ndarray::Array3::from_elem((1, 1, 1), v), l))
    }
    fn classes(&self) -> &[String] {
        &self.1
    }
}

#[test]
fn evaluate_counts_the_confusion_matrix() {
    let data = Tiny(
        vec![(0.0, 0), (0.0, 0), (1.0, 1), (0.0, 1), (1.0, 2), (0.0, 2)],
        vec!["a".into(), "b".into(), "c".into()],
    );
    let loader = DataLoader::new(Arc::new(data), 4, 0).unwrap().with_shuffle(false);
    let r = evaluate(&mut Threshold, &loader).unwrap();
    assert_eq!(r.count, 6);
    assert_eq!(r.confusion, vec![vec![2, 0, 0], vec![1, 1, 0], vec![1, 1, 0]]);
    assert_eq!(r.per_class, vec![1.0, 0.5, 0.0]);
    approx::assert_relative_eq!(r.accuracy, 0.5);
    assert_eq!(r.top5, None);
    // Right answers cost ~0, wrong ones 20 nats (logit gap of 20), computed exactly.
    approx::assert_relative_eq!(r.loss, 3.0 * 20.0 / 6.0, max_relative = 1e-6);
    assert!(r.table().contains("    a   100.00%       2     2    0    0"), "{}", r.table());
    // With one view TTA is plain evaluation (accuracy and matrix; its loss comes from the probabilities).
    let t = evaluate_tta(&mut Threshold, &loader, &loader, 1).unwrap();
    assert_eq!((t.accuracy, &t.confusion), (r.accuracy, &r.confusion));
}

fn trained() -> (Sequential<f32>, DataLoader, Subset) {
    let (train, test) = Digits::load().unwrap().split(0.2, 0).unwrap();
    let train = DataLoader::new(Arc::new(train), 64, 0).unwrap();
    let mut rng = seeded_rng(0);
    let mut m = Sequential::new()
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(64, 10), &mut rng).unwrap());
    Trainer::new(TrainConfig::default().with_epochs(3).with_lr(0.05))
        .with_progress(ProgressMode::Quiet)
        .fit(&mut m, &train, None)
        .unwrap();
    let test_loader = DataLoader::new(Arc::new(test.clone()), 100, 0).unwrap().with_shuffle(false);
    (m, test_loader, test)
}

#[test]
fn predict_and_tta_agree_with_evaluate() {
    let (mut m, loader, test) = trained();
    let r = evaluate(&mut m, &loader).unwrap();
    assert!(r.accuracy > 0.85, "{}", r.accuracy);
    assert_eq!(r.top5.map(|t| t >= r.accuracy), Some(true));
    let images: Vec<_> =
        (0..test.len()).map(|i| test.get(i).unwrap().0.insert_axis(Axis(0))).collect();
    let views: Vec<_> = images.iter().map(|a| a.view()).collect();
    let batch: Array4<f32> = ndarray::concatenate(Axis(0), &views).unwrap();
    let p = predict(&mut m, batch.clone().into_dyn()).unwrap();
    let right = (0..test.len()).filter(|&i| p.classes[i] == test.get(i).unwrap().1).count();
    approx::assert_relative_eq!(right as f64 / test.len() as f64, r.accuracy);
    for row in p.probabilities.outer_iter() {
        approx::assert_relative_eq!(row.sum(), 1.0, max_relative = 1e-5);
    }
    // An identity "augmentation" averages identical views: the same probabilities.
    let same = predict_tta(&mut m, &batch, &Compose::<f32>::new(), 4, 0).unwrap();
    assert_eq!(same.classes, p.classes);
    // Flipped digits are other images: the average moves, and the same seed repeats it.
    let flip = Compose::new().then(RandomHorizontalFlip::new(1.0).unwrap());
    let a = predict_tta(&mut m, &batch, &flip, 2, 5).unwrap();
    let b = predict_tta(&mut m, &batch, &flip, 2, 5).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.probabilities, p.probabilities);
    assert!(predict_tta(&mut m, &batch, &flip, 0, 5).is_err());
    // Loaders over other samples are refused rather than averaged.
    let shuffled = DataLoader::new(Arc::new(test), 100, 0).unwrap();
    assert!(evaluate_tta(&mut m, &loader, &shuffled, 2).is_err());
}
