//! Whole networks: a CIFAR ResNet-20 train step at batch 128 (forward,
//! cross-entropy, backward, SGD step) and a ResNet-18 eval forward at batch 8
//! on 3×224×224, in images per second (criterion's "elem/s"); each again in
//! bf16 mixed precision (`_bf16` rows: products with bf16 inputs, f32 sums).
//! PyTorch's figures (benches/torch/torch_resnet.py) are in docs/benchmarks.md.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::time::Duration;

mod common;

/// A caching allocator, as a training program would use (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnn::models::{cifar_resnet, resnet18, CifarResNetConfig};
use cnn::optim::{Optimizer, Rule};
use cnn::tensor::random::{normal, seeded_rng};
use cnn::tensor::{cross_entropy, with_precision, ArrayD, Layer, Mode, Precision};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn train_step(c: &mut Criterion) {
    let mut rng = seeded_rng(0);
    let mut net = cifar_resnet::<f32, _>(&CifarResNetConfig::new(20), &mut rng).expect("model");
    let mut opt = Optimizer::new(Rule::sgd(0.9), 0.1, 0.0).expect("optimizer");
    let x: ArrayD<f32> = normal(&[128, 3, 32, 32], 0.0, 1.0, &mut rng);
    let targets: Vec<usize> = (0..128).map(|i| i % 10).collect();
    let mut group = c.benchmark_group("resnet20_cifar_train_step");
    group.throughput(Throughput::Elements(128));
    for (name, precision) in [("b128", Precision::F32), ("b128_bf16", Precision::Bf16)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                with_precision(precision, || {
                    opt.zero_grad(&mut net);
                    let logits = net.forward(x.clone(), Mode::Train).expect("forward");
                    let (_loss, dlogits) = cross_entropy(&logits, &targets, 0.0).expect("loss");
                    net.backward(dlogits).expect("backward");
                    opt.step(&mut net).expect("step");
                })
            })
        });
    }
    group.finish();
}

/// torchvision's ResNet-18 in eval mode at batch 1 (latency), 8 and 32.
fn resnet18_eval(c: &mut Criterion) {
    let mut rng = seeded_rng(1);
    let mut net = resnet18::<f32, _>(1000, &mut rng).expect("model");
    let mut group = c.benchmark_group("resnet18_eval_forward");
    for batch in [1usize, 8, 32] {
        let x: ArrayD<f32> = normal(&[batch, 3, 224, 224], 0.0, 1.0, &mut rng);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("b{batch}_224"), |b| {
            b.iter(|| net.forward(x.clone(), Mode::Eval).expect("forward"))
        });
        group.bench_function(format!("b{batch}_224_bf16"), |b| {
            b.iter(|| with_precision(Precision::Bf16, || net.forward(x.clone(), Mode::Eval)))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    common::keep_freed_pages();
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! { name = benches; config = config(); targets = train_step, resnet18_eval }
criterion_main!(benches);
