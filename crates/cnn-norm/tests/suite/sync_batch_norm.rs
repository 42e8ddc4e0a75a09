//! Synced BatchNorm: the ranks of a group, each with a share of the batch,
//! compute what one BatchNorm computes on the whole batch (outputs, dx, the
//! summed dγ/dβ, the running statistics); one rank alone is bitwise the plain layer.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::collective::{Collective, LocalGroup};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{ArrayD, Layer, Mode, Param};
use cnn_test_support::{max_abs_diff, proptest_config as config};
use ndarray::{Axis, Slice};
use proptest::prelude::*;

/// Everything one layer produced: output, dx, then every parameter's grad and every value.
struct Outcome {
    y: ArrayD<f64>,
    dx: ArrayD<f64>,
    grads: Vec<ArrayD<f64>>,
    values: Vec<ArrayD<f64>>,
}

fn layer(c: usize, affine: bool) -> BatchNorm<f64> {
    let mut bn = BatchNorm::new_2d(BatchNormConfig::new(c).with_affine(affine)).unwrap();
    let mut rng = seeded_rng(7);
    bn.visit_mut("", &mut |key, p: &mut Param<f64>| {
        if key == "weight" || key == "bias" {
            let new_value = normal(p.value().shape(), 0.5, 1.0, &mut rng);
            p.set_value(new_value);
        }
    });
    bn
}

/// Two train steps (so the running statistics move twice), then backward of the second.
fn run(bn: &mut BatchNorm<f64>, x: &ArrayD<f64>, dy: &ArrayD<f64>) -> Outcome {
    bn.forward(x.mapv(|v| v * 0.5 + 1.0), Mode::Train).unwrap();
    bn.zero_grad();
    let y = bn.forward(x.clone(), Mode::Train).unwrap();
    let dx = bn.backward(dy.clone()).unwrap();
    let (mut grads, mut values) = (Vec::new(), Vec::new());
    bn.visit("", &mut |_, p| {
        grads.push(p.grad.clone());
        values.push(p.value().clone());
    });
    Outcome { y, dx, grads, values }
}

fn rows(a: &ArrayD<f64>, r: std::ops::Range<usize>) -> ArrayD<f64> {
    a.slice_axis(Axis(0), Slice::from(r)).to_owned()
}

/// The batch split over `ranks` threads as the trainer splits it (sizes differ by at most one).
fn synced(ranks: usize, c: usize, affine: bool, x: &ArrayD<f64>, dy: &ArrayD<f64>) -> Vec<Outcome> {
    let n = x.shape()[0];
    std::thread::scope(|s| {
        let handles: Vec<_> = LocalGroup::new(ranks)
            .into_iter()
            .map(|g| {
                s.spawn(move || {
                    let r = g.rank();
                    let share = r * n / ranks..(r + 1) * n / ranks;
                    let mut bn = layer(c, affine);
                    bn.sync_batch_norm(Some(Arc::new(g) as Arc<dyn Collective>));
                    run(&mut bn, &rows(x, share.clone()), &rows(dy, share))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn ranks_with_shares_of_the_batch_compute_the_whole_batch(
        ranks in 2usize..5, extra in 0usize..5, c in 1usize..4, hw in 1usize..4,
        affine: bool, seed in 0u64..1000,
    ) {
        let n = ranks + extra;
        let mut rng = seeded_rng(seed);
        let x: ArrayD<f64> = normal(&[n, c, hw, hw + 1], 2.0, 3.0, &mut rng);
        let dy: ArrayD<f64> = normal(&[n, c, hw, hw + 1], 0.0, 1.0, &mut rng);
        let whole = run(&mut layer(c, affine), &x, &dy);
        let parts = synced(ranks, c, affine, &x, &dy);
        let cat = |f: &dyn Fn(&Outcome) -> &ArrayD<f64>| {
            let views: Vec<_> = parts.iter().map(|p| f(p).view()).collect();
            ndarray::concatenate(Axis(0), &views).unwrap()
        };
        prop_assert!(max_abs_diff(&cat(&|o| &o.y), &whole.y) < 1e-12);
        prop_assert!(max_abs_diff(&cat(&|o| &o.dx), &whole.dx) < 1e-12);
        for (i, g) in whole.grads.iter().enumerate() {
            // γ and β gradients are per-rank sums; the trainer adds them across ranks.
            let total = parts.iter().fold(ArrayD::zeros(g.raw_dim()), |acc, p| acc + &p.grads[i]);
            prop_assert!(max_abs_diff(&total, g) < 1e-11, "grad {i}");
        }
        for p in &parts {
            // Running statistics: the global ones, on every rank.
            for (v, w) in p.values.iter().zip(&whole.values) {
                prop_assert!(max_abs_diff(v, w) < 1e-12);
            }
        }
    }
}

#[test]
fn one_rank_is_bitwise_the_plain_layer() {
    let mut rng = seeded_rng(3);
    let x: ArrayD<f64> = normal(&[5, 3, 4, 4], 1.0, 2.0, &mut rng);
    let dy: ArrayD<f64> = normal(&[5, 3, 4, 4], 0.0, 1.0, &mut rng);
    let plain = run(&mut layer(3, true), &x, &dy);
    let one = synced(1, 3, true, &x, &dy).pop().unwrap();
    assert_eq!(one.y, plain.y);
    assert_eq!(one.dx, plain.dx);
    assert_eq!(one.grads, plain.grads);
    assert_eq!(one.values, plain.values);
}

#[test]
fn one_value_per_channel_over_all_ranks_is_refused() {
    let e = std::thread::scope(|s| {
        let h: Vec<_> = LocalGroup::new(1)
            .into_iter()
            .map(|g| {
                s.spawn(move || {
                    let mut bn = layer(2, true);
                    bn.sync_batch_norm(Some(Arc::new(g) as Arc<dyn Collective>));
                    bn.forward(ArrayD::zeros(ndarray::IxDyn(&[1, 2, 1, 1])), Mode::Train)
                        .unwrap_err()
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).next().unwrap()
    });
    assert_eq!(
        e.to_string(),
        "batch_norm2d: expected more than 1 value per channel over all ranks when training, got input [1, 2, 1, 1] on each"
    );
}

#[test]
fn eval_mode_uses_the_running_statistics_without_talking() {
    // A group of two where only one rank runs eval: it must not wait for the other.
    let mut group = LocalGroup::new(2);
    let g = group.remove(0);
    let mut bn = layer(2, true);
    bn.sync_batch_norm(Some(Arc::new(g) as Arc<dyn Collective>));
    let y = bn.forward(ArrayD::ones(ndarray::IxDyn(&[3, 2, 2, 2])), Mode::Eval).unwrap();
    assert_eq!(y.shape(), &[3, 2, 2, 2]);
}
