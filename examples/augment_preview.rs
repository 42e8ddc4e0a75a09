//! Writes `augment_preview.png`: six digits, each raw and under five draws of
//! a pipeline (random crop with padding 1, horizontal flip, cutout).
//!
//! `cargo run --release --example augment_preview`

use cnn::augment::{Compose, Cutout, PadMode, RandomCrop, RandomHorizontalFlip};
use cnn::data::{preview_grid, Dataset, Digits};

fn main() -> Result<(), cnn::tensor::Error> {
    let digits = Digits::load()?;
    let samples = (0..6).map(|i| digits.get(i * 37).map(|s| s.0)).collect::<Result<Vec<_>, _>>()?;
    let pipeline = Compose::new()
        .then(RandomCrop::new([8, 8], 1, PadMode::Constant(0.0))?)
        .then(RandomHorizontalFlip::new(0.5)?)
        .then(Cutout::new(3)?);
    let path = std::path::Path::new("augment_preview.png");
    preview_grid(&samples, &pipeline, 5, 0, 8, path)?;
    println!("wrote {}", path.display());
    Ok(())
}
