//! `--augment` specs and the transform pipelines of a run.

use std::sync::Arc;

use cnn_augment::{
    ColorJitter, Compose, Cutout, GrayToRgb, Normalize, PadMode, RandomCrop, RandomHorizontalFlip,
    Transform,
};
use cnn_tensor::{Error, Result};

use crate::data::DataSpec;

/// One augmentation of `--augment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aug {
    /// Random horizontal flip (p = 0.5).
    Flip,
    /// Random crop back to the image size after zero padding of size/8 (at least 1) pixels.
    Crop,
    /// Color jitter: brightness, contrast 0.2 (and saturation 0.2, hue 0.05 in color).
    Jitter,
    /// Cutout of a square half the image's side.
    Cutout,
}

/// The augmentations `default` means for a data set: digits and MNIST are
/// not mirror-symmetric (crop only); CIFAR and image folders get crop and flip.
pub fn default_augment(spec: &DataSpec) -> &'static str {
    match spec {
        DataSpec::Digits | DataSpec::Mnist(_) => "crop",
        _ => "crop,flip",
    }
}

/// Parses `none`, `default` or a comma list of `flip`, `crop`, `jitter`, `cutout`.
///
/// # Errors
/// [`Error::Config`] naming an unknown item.
pub fn parse_augment(spec: &str, data: &DataSpec) -> Result<Vec<Aug>> {
    let spec = if spec == "default" { default_augment(data) } else { spec };
    if spec == "none" {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|s| match s.trim() {
            "flip" => Ok(Aug::Flip),
            "crop" => Ok(Aug::Crop),
            "jitter" => Ok(Aug::Jitter),
            "cutout" => Ok(Aug::Cutout),
            other => Err(Error::config(
                "augment",
                format!("unknown augmentation {other:?}: expected none, default, or a comma list of flip, crop, jitter, cutout"),
            )),
        })
        .collect()
}

/// The random part of the training pipeline for images `[c, h, w]`, in a fixed order
/// (crop, flip, jitter, cutout) whatever the order given.
///
/// # Errors
/// [`Error::Config`] from a transform's settings.
pub fn augmentations(augs: &[Aug], [c, h, w]: [usize; 3]) -> Result<Compose<f32>> {
    let mut pipe = Compose::new();
    if augs.contains(&Aug::Crop) {
        pipe = pipe.then(RandomCrop::new([h, w], (h.min(w) / 8).max(1), PadMode::Constant(0.0))?);
    }
    if augs.contains(&Aug::Flip) {
        pipe = pipe.then(RandomHorizontalFlip::new(0.5)?);
    }
    if augs.contains(&Aug::Jitter) {
        let (sat, hue) = if c == 3 { (0.2, 0.05) } else { (0.0, 0.0) };
        pipe = pipe.then(ColorJitter::new(0.2, 0.2, sat, hue)?);
    }
    if augs.contains(&Aug::Cutout) {
        pipe = pipe.then(Cutout::new((h.min(w) / 2).max(1))?);
    }
    Ok(pipe)
}

/// The whole pipeline: `augs` (none for evaluation), normalization, and gray to RGB when the network wants it.
///
/// Gray images normalized with three channel statistics (ImageNet's, for a
/// pretrained network) are repeated into RGB first, then normalized per channel.
///
/// # Errors
/// [`Error::Config`] from a transform's settings.
pub fn pipeline(
    augs: &[Aug],
    image: [usize; 3],
    mean: &[f64],
    std: &[f64],
    rgb: bool,
) -> Result<Arc<dyn Transform<f32>>> {
    let normalize = Normalize::new(mean.to_vec(), std.to_vec())?;
    let pipe = augmentations(augs, image)?;
    let pipe = match (rgb, image[0] == 1 && mean.len() == 3) {
        (true, true) => pipe.then(GrayToRgb).then(normalize),
        (true, false) => pipe.then(normalize).then(GrayToRgb),
        (false, _) => pipe.then(normalize),
    };
    Ok(Arc::new(pipe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse_augment("default", &DataSpec::Digits).unwrap(), vec![Aug::Crop]);
        assert_eq!(parse_augment("none", &DataSpec::Digits).unwrap(), vec![]);
        assert_eq!(
            parse_augment("flip, cutout", &DataSpec::Digits).unwrap(),
            vec![Aug::Flip, Aug::Cutout]
        );
        let e = parse_augment("flip,rotate", &DataSpec::Digits).unwrap_err().to_string();
        assert!(e.contains("unknown augmentation \"rotate\""), "{e}");
    }

    #[test]
    fn gray_images_take_rgb_statistics_after_becoming_rgb() {
        let gray = ndarray::Array3::from_elem((1, 2, 2), 0.5f32);
        let mut rng = cnn_tensor::random::seeded_rng(0);
        let pipe = pipeline(&[], [1, 2, 2], &[0.5, 0.25, 0.0], &[0.5, 0.25, 1.0], true).unwrap();
        let out = pipe.apply(gray.clone(), &mut rng).unwrap();
        assert_eq!(out.dim(), (3, 2, 2));
        let firsts: Vec<f32> = (0..3).map(|c| out[[c, 0, 0]]).collect();
        assert_eq!(firsts, [0.0, 1.0, 0.5]);
        let pipe = pipeline(&[], [1, 2, 2], &[0.25], &[0.5], true).unwrap();
        assert_eq!(pipe.apply(gray, &mut rng).unwrap()[[2, 1, 1]], 0.5);
    }
}
