//! Random transforms: shapes, ranges, sampling bounds, p = 0 and 1, seeds.

#![allow(clippy::unwrap_used)]

use cnn_augment::{
    ColorJitter, Compose, Cutout, PadMode, RandomCrop, RandomErasing, RandomHorizontalFlip,
    RandomResizedCrop, Transform,
};
use cnn_tensor::random::seeded_rng;
use ndarray::Array3;

fn image() -> Array3<f32> {
    Array3::from_shape_fn((3, 32, 32), |(c, i, j)| ((c * 7 + i * 3 + j) % 17) as f32 / 16.0)
}

#[test]
fn pipeline_keeps_shape_and_range_and_is_seeded() {
    let pipeline = Compose::new()
        .then(RandomCrop::new([32, 32], 4, PadMode::Constant(0.0)).unwrap())
        .then(RandomHorizontalFlip::new(0.5).unwrap())
        .then(ColorJitter::new(0.4, 0.4, 0.4, 0.1).unwrap())
        .then(RandomErasing::new(0.5).unwrap())
        .then(Cutout::new(8).unwrap());
    for seed in 0..20 {
        let a = pipeline.apply(image(), &mut seeded_rng(seed)).unwrap();
        let b = pipeline.apply(image(), &mut seeded_rng(seed)).unwrap();
        assert_eq!(a, b, "same seed, same image");
        assert_eq!(a.dim(), (3, 32, 32));
        assert!(a.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
    let a = pipeline.apply(image(), &mut seeded_rng(1)).unwrap();
    let b = pipeline.apply(image(), &mut seeded_rng(2)).unwrap();
    assert_ne!(a, b);
}

#[test]
fn probabilities_zero_and_one() {
    let img = image();
    let never = RandomHorizontalFlip::new(0.0).unwrap();
    let always = RandomHorizontalFlip::new(1.0).unwrap();
    let mut rng = seeded_rng(3);
    assert_eq!(never.apply(img.clone(), &mut rng).unwrap(), img);
    assert_eq!(always.apply(img.clone(), &mut rng).unwrap(), cnn_augment::hflip(img.view()));
    assert_eq!(RandomErasing::new(0.0).unwrap().apply(img.clone(), &mut rng).unwrap(), img);
    assert_ne!(RandomErasing::new(1.0).unwrap().apply(img.clone(), &mut rng).unwrap(), img);
    assert!(RandomHorizontalFlip::new(1.5).is_err());
}

#[test]
fn random_resized_crop_samples_within_its_bounds() {
    let rrc = RandomResizedCrop::new([16, 16]).unwrap();
    let mut rng = seeded_rng(4);
    let (h, w) = (100, 120);
    let mut areas = Vec::new();
    for _ in 0..2000 {
        let (top, left, ch, cw) = rrc.sample(h, w, &mut rng);
        assert!(top + ch <= h && left + cw <= w && ch > 0 && cw > 0);
        let frac = (ch * cw) as f64 / (h * w) as f64;
        let ratio = cw as f64 / ch as f64;
        // Rounding to whole pixels widens the bounds slightly; the fallback is a full-height crop.
        assert!((0.07..=1.0).contains(&frac), "area {frac}");
        assert!((0.70..=1.45).contains(&ratio), "ratio {ratio}");
        areas.push(frac);
    }
    let mean = areas.iter().sum::<f64>() / areas.len() as f64;
    // Uniform area fractions on [0.08, 1] (tries that do not fit are redrawn) average near 0.5.
    assert!((0.4..0.6).contains(&mean), "mean area {mean}");
    let out = rrc.apply(image(), &mut rng).unwrap();
    assert_eq!(out.dim(), (3, 16, 16));
    let smooth = rrc.with_antialias(true).apply(image(), &mut rng).unwrap();
    assert_eq!(smooth.dim(), (3, 16, 16));
    assert!(smooth.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)));
}
