//! Trains a network of your own on the embedded digits with `Trainer`, then
//! evaluates it: the Rust side of `cnn train`.
//!
//! `cargo run --release --example train_digits`

use std::sync::Arc;

use cnn::augment::{Compose, Normalize, PadMode, RandomCrop};
use cnn::prelude::*;

fn main() -> Result<()> {
    // Any Layer<f32> that maps [n, 1, 8, 8] images to [n, 10] logits.
    let rng = &mut seeded_rng(0);
    let block = |c_in, c_out, rng: &mut _| -> Result<Sequential<f32>> {
        Ok(Sequential::new()
            .push(Conv2d::new(
                Conv2dConfig::new(c_in, c_out, 3).with_padding(1).with_bias(false),
                rng,
            )?)
            .push(BatchNorm::new_2d(BatchNormConfig::new(c_out))?)
            .push(Act::relu()))
    };
    let mut model = Sequential::new()
        .push(block(1, 32, rng)?)
        .push(MaxPool2d::new(Pool2dOptions::new(2)))
        .push(block(32, 64, rng)?)
        .push(GlobalAvgPool2d::new())
        .push(Flatten::new())
        .push(Linear::new(LinearConfig::new(64, 10), rng)?);

    // Data: the stratified 80/20 split, a random crop for training, normalization for both.
    let (train, test) = Digits::load()?.split(0.2, 0)?;
    let norm = || Normalize::new(vec![0.3057], vec![0.3762]);
    let augment =
        Compose::new().then(RandomCrop::new([8, 8], 1, PadMode::Constant(0.0))?).then(norm()?);
    let train = DataLoader::new(Arc::new(train), 64, 0)?.with_transform(Arc::new(augment));
    let test = DataLoader::new(Arc::new(test), 256, 0)?
        .with_shuffle(false)
        .with_transform(Arc::new(Compose::new().then(norm()?)));

    // Ten lines of training: the config, the trainer, the result.
    let config = TrainConfig::default().with_epochs(15).with_lr(0.1);
    let report =
        Trainer::new(config).with_out_dir("runs/example").fit(&mut model, &train, Some(&test))?;
    let result = evaluate(&mut model, &test)?;
    print!("{}", result.table());
    println!(
        "test accuracy {:.2}% after {} steps in {:.1} s; curves in runs/example/curves.png",
        100.0 * result.accuracy,
        report.global_step,
        report.seconds
    );
    Ok(())
}
