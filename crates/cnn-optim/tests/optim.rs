//! Optimizers: frozen parameters and buffers, groups, schedules, errors.
//! (PyTorch's exact update rules are checked by the parity test.)

#![allow(clippy::unwrap_used)]

use cnn_optim::{Optimizer, ParamGroup, Rule, Schedule};
use cnn_tensor::{join_key, ArrayD, Error, Layer, Mode, Param, Result};

/// Two parameters and a buffer under PyTorch-like keys.
struct Toy {
    weight: Param<f64>,
    bias: Param<f64>,
    running_mean: Param<f64>,
}

impl Toy {
    fn new() -> Self {
        let mut t = Toy {
            weight: Param::new(ArrayD::from_elem(vec![3], 1.0)),
            bias: Param::new(ArrayD::from_elem(vec![3], 1.0)),
            running_mean: Param::buffer(ArrayD::from_elem(vec![3], 1.0)),
        };
        for p in [&mut t.weight, &mut t.bias, &mut t.running_mean] {
            p.grad.fill(0.5);
        }
        t
    }
}

impl Layer<f64> for Toy {
    fn forward(&mut self, x: ArrayD<f64>, _mode: Mode) -> Result<ArrayD<f64>> {
        Ok(x)
    }
    fn backward(&mut self, dy: ArrayD<f64>) -> Result<ArrayD<f64>> {
        Ok(dy)
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<f64>)) {
        f(&join_key(prefix, "fc.weight"), &mut self.weight);
        f(&join_key(prefix, "fc.bias"), &mut self.bias);
        f(&join_key(prefix, "bn.running_mean"), &mut self.running_mean);
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<f64>)) {
        f(&join_key(prefix, "fc.weight"), &self.weight);
        f(&join_key(prefix, "fc.bias"), &self.bias);
        f(&join_key(prefix, "bn.running_mean"), &self.running_mean);
    }
}

#[test]
fn frozen_parameters_and_buffers_are_untouched() {
    for rule in [Rule::sgd(0.9), Rule::adam(), Rule::adamw()] {
        let mut toy = Toy::new();
        toy.bias.trainable = false;
        let mut opt = Optimizer::new(rule, 0.1, 0.01).unwrap();
        for _ in 0..3 {
            opt.step(&mut toy).unwrap();
        }
        assert!(toy.weight.value().iter().all(|&v| v != 1.0), "{rule:?} trains the weight");
        assert!(
            toy.bias.value().iter().all(|&v| v.to_bits() == 1.0f64.to_bits()),
            "{rule:?} froze the bias"
        );
        assert!(toy.running_mean.value().iter().all(|&v| v == 1.0), "{rule:?} leaves buffers");
        assert!(opt.state("fc.bias").is_none() && opt.state("bn.running_mean").is_none());
    }
}

#[test]
fn groups_set_lr_and_decay_per_parameter() {
    let mut toy = Toy::new();
    let mut opt = Optimizer::new(Rule::sgd(0.0), 0.1, 0.5)
        .unwrap()
        .with_group(ParamGroup::norms_and_biases(1.0))
        .unwrap();
    opt.step(&mut toy).unwrap();
    // weight: 1 − 0.1·(0.5 + 0.5·1) = 0.9; bias (lr 1, no decay): 1 − 1·0.5 = 0.5.
    assert!((toy.weight.value()[0] - 0.9).abs() < 1e-15);
    assert!((toy.bias.value()[0] - 0.5).abs() < 1e-15);
    let mut opt = Optimizer::<f64>::new(Rule::adam(), 1e-3, 0.0)
        .unwrap()
        .with_group(ParamGroup::prefix("fc", 1e-4, 0.0))
        .unwrap();
    opt.schedule(&Schedule::Exponential { gamma: 0.5 }, 2);
    let lrs: Vec<f64> = opt.groups().map(|g| g.lr).collect();
    assert_eq!(lrs, vec![2.5e-5, 2.5e-4]);
}

#[test]
fn schedules_follow_pytorch() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * b.abs().max(1.0);
    let step = Schedule::Step { step_size: 3, gamma: 0.1 };
    assert!(
        close(step.lr(2, 1.0), 1.0) && close(step.lr(3, 1.0), 0.1) && close(step.lr(6, 1.0), 0.01)
    );
    let multi = Schedule::MultiStep { milestones: vec![2, 5], gamma: 0.5 };
    assert!(
        close(multi.lr(1, 1.0), 1.0)
            && close(multi.lr(2, 1.0), 0.5)
            && close(multi.lr(7, 1.0), 0.25)
    );
    let cos = Schedule::Cosine { t_max: 10, eta_min: 0.1 };
    assert!(
        close(cos.lr(0, 1.0), 1.0) && close(cos.lr(5, 1.0), 0.55) && close(cos.lr(10, 1.0), 0.1)
    );
    let one = Schedule::OneCycle {
        max_lr: 1.0,
        total_steps: 100,
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
    };
    assert!(close(one.lr(0, 0.0), 0.04));
    assert!(close(one.lr(29, 0.0), 1.0));
    assert!(close(one.lr(99, 0.0), 0.04 / 1e4));
    let warm =
        Schedule::WarmupCosine { warmup_steps: 5, start_factor: 0.1, total_steps: 30, min_lr: 0.0 };
    assert!(close(warm.lr(0, 1.0), 0.1) && close(warm.lr(5, 1.0), 1.0));
    assert!(Schedule::Step { step_size: 0, gamma: 0.1 }.validate().is_err());
    assert!(Schedule::WarmupCosine {
        warmup_steps: 30,
        start_factor: 0.1,
        total_steps: 30,
        min_lr: 0.0
    }
    .validate()
    .is_err());
}

#[test]
fn bad_settings_and_shapes_are_errors() {
    assert!(Optimizer::<f32>::new(Rule::sgd(0.9), -0.1, 0.0).is_err());
    assert!(Optimizer::<f32>::new(
        Rule::Sgd { momentum: 0.0, dampening: 0.0, nesterov: true },
        0.1,
        0.0
    )
    .is_err());
    assert!(Optimizer::<f32>::new(Rule::Adam { beta1: 1.0, beta2: 0.999, eps: 1e-8 }, 0.1, 0.0)
        .is_err());
    let mut opt = Optimizer::<f64>::new(Rule::sgd(0.9), 0.1, 0.0).unwrap();
    let mut p = Param::new(ArrayD::zeros(vec![2]));
    p.grad = ArrayD::zeros(vec![3]);
    let e = opt.update("w", &mut p).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // A state saved for another shape is refused, not silently broadcast.
    let mut p = Param::new(ArrayD::zeros(vec![2]));
    opt.update("w", &mut p).unwrap();
    let mut q = Param::new(ArrayD::zeros(vec![4]));
    assert!(opt.update("w", &mut q).is_err());
}

#[test]
fn state_round_trips_for_exact_resume() {
    let run = |resume_at: Option<usize>| {
        let mut toy = Toy::new();
        let mut opt = Optimizer::new(Rule::adamw(), 0.01, 0.1).unwrap();
        for i in 0..6 {
            if Some(i) == resume_at {
                let saved = opt.states().clone();
                opt = Optimizer::new(Rule::adamw(), 0.01, 0.1).unwrap();
                opt.set_states(saved);
            }
            opt.step(&mut toy).unwrap();
        }
        toy.weight.into_value()
    };
    assert_eq!(run(None), run(Some(3)));
}

#[test]
fn state_files_resume_exactly_and_refuse_bad_bytes() {
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let path = dir.join("opt.safetensors");
    let run = |resume_at: Option<usize>| {
        let mut toy = Toy::new();
        let mut opt = Optimizer::new(Rule::adamw(), 0.01, 0.1).unwrap();
        for i in 0..6 {
            if Some(i) == resume_at {
                opt.save_state(&path).unwrap();
                opt = Optimizer::new(Rule::adamw(), 0.01, 0.1).unwrap();
                opt.load_state(&path).unwrap();
            }
            opt.step(&mut toy).unwrap();
        }
        toy.weight.into_value()
    };
    assert_eq!(run(None), run(Some(2)));
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let mut opt = Optimizer::<f64>::new(Rule::sgd(0.9), 0.1, 0.0).unwrap();
    assert!(matches!(opt.load_state(&bad), Err(Error::Format { .. })));
    assert!(matches!(opt.load_state(&dir.join("absent")), Err(Error::Io { .. })));
}
