//! The DataLoader with a CIFAR-style pipeline (random crop with padding 4,
//! horizontal flip, color jitter, normalize) on 3×32×32 images, batch 128,
//! in images per second (criterion's "elem/s"). docs/benchmarks.md compares
//! it with the ResNet-20 train step.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::sync::Arc;
use std::time::Duration;

/// A caching allocator, as a training program would use (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnn::augment::{
    normalize, ColorJitter, Compose, PadMode, RandomCrop, RandomHorizontalFlip, Transform,
};
use cnn::data::{DataLoader, Dataset};
use cnn::tensor::Result;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::Array3;
use rand::RngCore;

/// Synthetic CIFAR-sized images (the loader's cost does not depend on the pixels).
struct Synthetic {
    classes: Vec<String>,
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        50_000
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        Ok((
            Array3::from_shape_fn((3, 32, 32), |(c, i, j)| {
                ((index + c * 31 + i * 7 + j) % 256) as f32 / 255.0
            }),
            index % 10,
        ))
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
}

/// `normalize` as a pipeline step.
struct Normalize;

impl Transform<f32> for Normalize {
    fn apply(&self, img: Array3<f32>, _rng: &mut dyn RngCore) -> Result<Array3<f32>> {
        normalize(img.view(), &[0.4914, 0.4822, 0.4465], &[0.247, 0.2435, 0.2616])
    }
}

fn loader(c: &mut Criterion) {
    let pipeline = Compose::new()
        .then(RandomCrop::new([32, 32], 4, PadMode::Constant(0.0)).expect("crop"))
        .then(RandomHorizontalFlip::new(0.5).expect("flip"))
        .then(ColorJitter::new(0.4, 0.4, 0.4, 0.0).expect("jitter"))
        .then(Normalize);
    let data = Arc::new(Synthetic { classes: (0..10).map(|i| i.to_string()).collect() });
    let loader = DataLoader::new(data, 128, 0).expect("loader").with_transform(Arc::new(pipeline));
    let mut group = c.benchmark_group("loader_cifar_pipeline");
    group.throughput(Throughput::Elements(128));
    let mut b_idx = 0;
    group.bench_function("b128", |b| {
        b.iter(|| {
            b_idx = (b_idx + 1) % loader.batches_per_epoch();
            loader.batch(0, b_idx).expect("batch")
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = loader }
criterion_main!(benches);
