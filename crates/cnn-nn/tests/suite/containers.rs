//! A user's own container gets every tree walk (re-seeding, synced
//! BatchNorm, the summary, replacing a child, fusion discovery) by
//! implementing `children_mut` alone.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cnn_act::Dropout;
use cnn_nn::{fusable, summary, Linear, LinearConfig, Sequential};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::collective::Collective;
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{join_key, ArrayD, Layer, Mode, Param, Result};

/// `left(x) + right(x)`: two branches, written as a user would, with no
/// walk of its own but `children_mut`.
struct TwoBranch {
    left: Sequential<f32>,
    right: BatchNorm<f32>,
}

impl Layer<f32> for TwoBranch {
    fn forward(&mut self, x: ArrayD<f32>, mode: Mode) -> Result<ArrayD<f32>> {
        let l = self.left.forward(x.clone(), mode)?;
        Ok(l + self.right.forward(x, mode)?)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let dl = self.left.backward(dy.clone())?;
        Ok(dl + self.right.backward(dy)?)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<f32>)) {
        self.left.visit(&join_key(prefix, "left"), f);
        self.right.visit(&join_key(prefix, "right"), f);
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<f32>)) {
        self.left.visit_mut(&join_key(prefix, "left"), f);
        self.right.visit_mut(&join_key(prefix, "right"), f);
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<f32>)> {
        vec![("left".into(), &mut self.left), ("right".into(), &mut self.right)]
    }

    fn children(&self) -> Vec<(String, &dyn Layer<f32>)> {
        vec![("left".into(), &self.left), ("right".into(), &self.right)]
    }
}

fn two_branch() -> TwoBranch {
    let left = Sequential::new().push(Dropout::new(0.5, 0).unwrap());
    let right = BatchNorm::new_1d(BatchNormConfig::new(4)).unwrap();
    TwoBranch { left, right }
}

#[test]
fn reseeding_reaches_a_users_container_children() {
    let mut net = two_branch();
    let x = ArrayD::<f32>::ones(ndarray::IxDyn(&[8, 4]));
    let mut run = |seed| {
        net.reseed(seed);
        net.forward(x.clone(), Mode::Train).unwrap()
    };
    let (a, b, c) = (run(1), run(1), run(2));
    // Without the default walk the dropout draws on from its stream: a ≠ b.
    assert_eq!(a, b, "the same seed gives the same masks");
    assert_ne!(a, c, "another seed gives other masks");
}

/// A collective of one rank that counts its sums.
#[derive(Debug, Default)]
struct Counting(AtomicUsize);

impl Collective for Counting {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

#[test]
fn synced_batch_norm_reaches_a_users_container_children() {
    let mut net = two_branch();
    let group = Arc::new(Counting::default());
    net.sync_batch_norm(Some(group.clone() as Arc<dyn Collective>));
    let x = normal(&[8, 4], 0.0, 1.0, &mut seeded_rng(0));
    net.forward(x, Mode::Train).unwrap();
    assert!(group.0.load(Ordering::SeqCst) > 0, "the BatchNorm never summed over the group");
}

#[test]
fn a_users_container_gets_a_summary_and_child_replacement() {
    let mut outer = Sequential::new()
        .push(two_branch())
        .push(Linear::<f32>::new(LinearConfig::new(4, 3), &mut seeded_rng(0)).unwrap());
    let (rows, table) = summary(&mut outer, &[2, 4]).unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["(model)", "0", "0.left", "0.left.0", "0.right", "1"], "{table}");
    // The container's own output is known from its forward; its children's
    // are not (its wiring is its own), and the table says so with `-`.
    assert_eq!(rows[1].output_shape, [2, 4]);
    assert!(rows[4].output_shape.is_empty() && table.contains(" -"), "{table}");
    assert_eq!(rows[5].output_shape, [2, 3]);

    // Replacing a child goes through it to the Sequential that owns the box.
    let old = outer.replace_child("0.left.0", Box::new(Dropout::new(0.0, 0).unwrap())).unwrap();
    assert!(old.type_name().contains("Dropout"));
    let err = outer.replace_child("0.right", Box::new(Dropout::new(0.0, 0).unwrap()));
    assert!(err.err().unwrap().to_string().contains("holds \"right\" inline"));
    let err = outer.replace_child("0.middle", Box::new(Dropout::new(0.0, 0).unwrap()));
    assert!(err.err().unwrap().to_string().contains("no child \"middle\""));
    // No conv in it: nothing to fuse, found through the same walk.
    assert_eq!(fusable(&mut outer).convs, 0);
}

#[test]
fn a_residual_blocks_summary_shows_both_branches_shapes_under_its_keys() {
    let block = cnn_nn::BasicBlock::new::<f32, _>(4, 6, 2, &mut seeded_rng(0)).unwrap();
    let mut net = Sequential::new().push(block);
    let (rows, table) = summary(&mut net, &[1, 4, 8, 8]).unwrap();
    let shape = |key: &str| rows.iter().find(|r| r.key == key).map(|r| r.output_shape.clone());
    // The main branch is transparent: no `0.main` row, its layers under `0`.
    assert_eq!(shape("0.main"), None, "{table}");
    assert_eq!(shape("0.conv1"), Some(vec![1, 6, 4, 4]), "{table}");
    assert_eq!(shape("0.bn2"), Some(vec![1, 6, 4, 4]), "{table}");
    // The projection runs on the block's input, not on the main branch's output.
    assert_eq!(shape("0.downsample.0"), Some(vec![1, 6, 4, 4]), "{table}");
    assert_eq!(shape("0"), Some(vec![1, 6, 4, 4]), "{table}");
}
