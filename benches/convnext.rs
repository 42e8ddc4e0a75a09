//! timm's `convnext_atto`: a train step at batch 32 on 3×64×64 (forward,
//! cross-entropy, backward, AdamW step) and an eval forward at batch 8 on
//! 3×224×224, in images per second, each again in bf16 mixed precision
//! (`_bf16` rows). PyTorch's figures
//! (benches/torch/torch_convnext.py, timm's own model) are in docs/benchmarks.md.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::time::Duration;

mod common;

/// A caching allocator, as a training program would use (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnn::models::convnext_atto;
use cnn::tensor::random::{normal, seeded_rng};
use cnn::tensor::{with_precision, ArrayD, Layer, Mode, Precision};
use cnn::train::{apply_gradients, compute_gradients, TrainConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn train_step(c: &mut Criterion) {
    let mut rng = seeded_rng(0);
    let mut net = convnext_atto::<f32, _>(10, &mut rng).expect("model");
    let config = TrainConfig::timm_adamw(4e-3, 0.05).with_epochs(1000);
    let mut opt = config.build_optimizer().expect("optimizer");
    let schedule = config.build_schedule(10).expect("schedule");
    let x: ArrayD<f32> = normal(&[32, 3, 64, 64], 0.0, 1.0, &mut rng);
    let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();
    let mut group = c.benchmark_group("convnext_atto_train_step");
    group.throughput(Throughput::Elements(32));
    let mut step = 0;
    for (name, precision) in [("b32_64", Precision::F32), ("b32_64_bf16", Precision::Bf16)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                with_precision(precision, || {
                    let loss = cnn::train::CrossEntropy::default();
                    compute_gradients(&mut net, x.clone(), &labels, &loss, 0, step).expect("step");
                    apply_gradients(&mut opt, &schedule, &mut net, step).expect("update");
                });
                step += 1;
            })
        });
    }
    group.finish();
}

fn eval_forward(c: &mut Criterion) {
    let mut rng = seeded_rng(1);
    let mut net = convnext_atto::<f32, _>(1000, &mut rng).expect("model");
    let x: ArrayD<f32> = normal(&[8, 3, 224, 224], 0.0, 1.0, &mut rng);
    let mut group = c.benchmark_group("convnext_atto_eval_forward");
    group.throughput(Throughput::Elements(8));
    group.bench_function("b8_224", |b| {
        b.iter(|| net.forward(x.clone(), Mode::Eval).expect("forward"))
    });
    group.bench_function("b8_224_bf16", |b| {
        b.iter(|| with_precision(Precision::Bf16, || net.forward(x.clone(), Mode::Eval)))
    });
    group.finish();
}

fn config() -> Criterion {
    // 8.5% of this bench's train step was page zeroing before this.
    common::keep_freed_pages();
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
}

criterion_group! { name = benches; config = config(); targets = train_step, eval_forward }
criterion_main!(benches);
