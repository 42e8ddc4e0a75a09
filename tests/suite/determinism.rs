//! Same seed, same numbers, whatever the thread count: one whole training
//! step (forward, loss, backward, SGD) of every kind of network we ship, in
//! pools of 1, 2, 3 and 16 threads, gives the same bits. The kernel tests
//! pin each kernel alone; this pins what they add up to: convolutions by
//! im2col (cut into row and column blocks at small batches) and Winograd,
//! depthwise convs, BatchNorm and LayerNorm, max, average and global pools,
//! ReLU and GELU, dropout and drop path, linear layers.

#![allow(clippy::unwrap_used)]

use cnn::models::{cifar_resnet, convnext, small_cnn, CifarResNetConfig, ConvNeXtConfig};
use cnn::nn::Sequential;
use cnn::tensor::random::{normal, seeded_rng};
use cnn::tensor::{ArrayD, Layer};
use cnn::train::{apply_gradients, compute_gradients, CrossEntropy, TrainConfig};

/// One training step on `threads` threads: the loss, then every parameter,
/// buffer and gradient after the update, as bits.
fn step_bits(
    build: &(dyn Fn() -> Sequential<f32> + Sync),
    x: &ArrayD<f32>,
    threads: usize,
) -> Vec<u64> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut model = build();
        let config = TrainConfig::default().with_lr(0.05);
        let mut optimizer = config.build_optimizer().unwrap();
        let schedule = config.build_schedule(10).unwrap();
        let labels: Vec<usize> = (0..x.shape()[0]).map(|i| i % 10).collect();
        let loss = CrossEntropy::new(0.1);
        let mut bits = Vec::new();
        for step in 0..2 {
            let stats = compute_gradients(&mut model, x.clone(), &labels, &loss, 7, step).unwrap();
            bits.push(stats.loss.to_bits());
            apply_gradients(&mut optimizer, &schedule, &mut model, step).unwrap();
        }
        model.visit("", &mut |_, p| {
            bits.extend(p.value().iter().map(|v| u64::from(v.to_bits())));
            bits.extend(p.grad.iter().map(|v| u64::from(v.to_bits())));
        });
        bits
    })
}

#[test]
fn a_whole_train_step_is_bitwise_the_same_on_1_2_3_and_16_threads() {
    type Build = Box<dyn Fn() -> Sequential<f32> + Sync>;
    let cases: Vec<(&str, Build, Vec<usize>)> = vec![
        // Batch 8: stage 3's 3×3 convs (64 channels, 2×2 tiles × 8) take
        // Winograd F(4×4) by the shape rule, the others im2col.
        (
            "cifar_resnet20, batch 8",
            Box::new(|| cifar_resnet(&CifarResNetConfig::new(20), &mut seeded_rng(0)).unwrap()),
            vec![8, 3, 32, 32],
        ),
        // Batch 1: too few sample blocks, so the GEMMs are cut into row and column blocks.
        (
            "cifar_resnet20, batch 1",
            Box::new(|| cifar_resnet(&CifarResNetConfig::new(20), &mut seeded_rng(0)).unwrap()),
            vec![1, 3, 32, 32],
        ),
        // Max pools between the conv stages.
        (
            "small_cnn",
            Box::new(|| small_cnn(3, [32, 32], 10, &mut seeded_rng(0)).unwrap()),
            vec![4, 3, 32, 32],
        ),
        // Depthwise 7×7 convs, LayerNorm2d, GELU, drop path.
        (
            "convnext_atto",
            Box::new(|| {
                let cfg = ConvNeXtConfig::named("atto")
                    .unwrap()
                    .with_num_classes(10)
                    .with_drop_path_rate(0.1);
                convnext(&cfg, &mut seeded_rng(0)).unwrap()
            }),
            vec![2, 3, 32, 32],
        ),
    ];
    for (name, build, shape) in &cases {
        let x: ArrayD<f32> = normal(shape, 0.0, 1.0, &mut seeded_rng(1));
        let one = step_bits(build.as_ref(), &x, 1);
        for threads in [2, 3, 16] {
            let other = step_bits(build.as_ref(), &x, threads);
            let first = one.iter().zip(&other).position(|(a, b)| a != b);
            assert!(
                first.is_none() && one.len() == other.len(),
                "{name}: {threads} threads differ from 1 at value {first:?} of {}",
                one.len()
            );
        }
    }
}
