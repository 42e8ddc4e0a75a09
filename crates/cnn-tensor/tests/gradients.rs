//! The linear op and cross-entropy backward against central differences, through
//! the public gradient checker, on random shapes.

#![allow(clippy::unwrap_used)]

use cnn_tensor::gradcheck::{check_fn, GradCheckConfig};
use cnn_tensor::{
    cross_entropy_backward, cross_entropy_forward, linear_backward, linear_forward, random, ArrayD,
};
use cnn_test_support::proptest_config as config;
use ndarray::{Ix1, Ix2};
use proptest::prelude::*;

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn linear_kernel_gradients(n in 1..6usize, fin in 1..8usize, fout in 1..6usize, seed in 0u64..1000) {
        let mut rng = random::seeded_rng(seed);
        let inputs = [
            random::normal(&[n, fin], 0.0, 1.0, &mut rng),
            random::normal(&[fout, fin], 0.0, 1.0, &mut rng),
            random::normal(&[fout], 0.0, 1.0, &mut rng),
        ];
        let report = check_fn(
            |t| {
                let b = t[2].view().into_dimensionality::<Ix1>().unwrap();
                Ok(linear_forward(two(&t[0]).view(), two(&t[1]).view(), Some(b))?.into_dyn())
            },
            |t, dy| {
                let g = linear_backward(two(&t[0]).view(), two(&t[1]).view(), two(dy).view())?;
                Ok(vec![g.dx.into_dyn(), g.dw.into_dyn(), g.db.into_dyn()])
            },
            &inputs, seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }

    #[test]
    fn cross_entropy_gradients(n in 1..6usize, classes in 2..8usize, smoothing in 0.0..1.0f64, seed in 0u64..1000) {
        let mut rng = random::seeded_rng(seed);
        let logits = random::normal(&[n, classes], 0.0, 3.0, &mut rng);
        let targets: Vec<usize> = (0..n).map(|i| (i * 7 + seed as usize) % classes).collect();
        let report = check_fn(
            |t| Ok(ArrayD::from_elem(vec![1], cross_entropy_forward(two(&t[0]).view(), &targets, smoothing)?)),
            |t, dy| Ok(vec![cross_entropy_backward(two(&t[0]).view(), &targets, smoothing, dy[[0]])?.into_dyn()]),
            &[logits], seed, &GradCheckConfig::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }
}

fn two(a: &ArrayD<f64>) -> ndarray::Array2<f64> {
    a.view().into_dimensionality::<Ix2>().unwrap().to_owned()
}
