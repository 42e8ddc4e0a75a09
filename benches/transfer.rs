//! Transfer learning's cost per step: a ResNet-18 (3×112×112, batch 16)
//! trained as a linear probe (the frozen backbone runs in eval mode and
//! backward stops at the head), the same frozen network with backward run
//! through the whole backbone (what freezing alone gives in PyTorch), and
//! full fine-tuning. Images per second; figures in docs/benchmarks.md.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::time::Duration;

/// A caching allocator, as a training program would use (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnn::models::resnet18;
use cnn::nn::{freeze, unfreeze};
use cnn::tensor::random::{normal, seeded_rng};
use cnn::tensor::{cross_entropy_backward, ArrayD, Layer, Mode};
use cnn::train::compute_gradients;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::Ix2;

const BATCH: usize = 16;

fn transfer_step(c: &mut Criterion) {
    let mut rng = seeded_rng(0);
    let x: ArrayD<f32> = normal(&[BATCH, 3, 112, 112], 0.0, 1.0, &mut rng);
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    let mut group = c.benchmark_group("transfer_step_resnet18_112");
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut probe = resnet18::<f32, _>(10, &mut rng).expect("model");
    freeze(&mut probe, "");
    unfreeze(&mut probe, "fc");
    group.bench_function("linear_probe", |b| {
        b.iter(|| {
            compute_gradients(
                &mut probe,
                x.clone(),
                &labels,
                &cnn::train::CrossEntropy::default(),
                0,
                0,
            )
            .expect("step")
        })
    });
    // The same frozen network stepped as before this issue: train-mode
    // forward everywhere and backward through every frozen layer.
    group.bench_function("frozen_full_backward", |b| {
        b.iter(|| {
            probe.zero_grad();
            let logits = probe.forward(x.clone(), Mode::Train).expect("forward");
            let logits = logits.into_dimensionality::<Ix2>().expect("2-D");
            let d = cross_entropy_backward(logits.view(), &labels, 0.0, 1.0).expect("dloss");
            probe.backward(d.into_dyn()).expect("backward")
        })
    });
    unfreeze(&mut probe, "");
    group.bench_function("finetune", |b| {
        b.iter(|| {
            compute_gradients(
                &mut probe,
                x.clone(),
                &labels,
                &cnn::train::CrossEntropy::default(),
                0,
                0,
            )
            .expect("step")
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
}

criterion_group! { name = benches; config = config(); targets = transfer_step }
criterion_main!(benches);
