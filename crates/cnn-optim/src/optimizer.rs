//! SGD, Adam and AdamW with PyTorch's update rules.

use std::collections::HashMap;

use cnn_tensor::{ArrayD, Error, Float, Layer, Param, Result};

use crate::{ParamGroup, Schedule};

/// Which update rule, with its settings (PyTorch's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `torch.optim.SGD`: `g = grad + wd·p`; with momentum `b = μ·b + (1 − dampening)·g`
    /// (`b = g` on the first step), then `g = g + μ·b` (Nesterov) or `g = b`; `p −= lr·g`.
    Sgd {
        /// μ (0: plain SGD).
        momentum: f64,
        /// Dampening of the momentum's new gradient.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// `torch.optim.Adam`: L2 decay added to the gradient, then Adam.
    Adam {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
    },
    /// `torch.optim.AdamW`: `p −= lr·wd·p` (decoupled), then Adam without decay.
    AdamW {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
    },
}

impl Rule {
    /// SGD with momentum μ (dampening 0, no Nesterov).
    pub fn sgd(momentum: f64) -> Self {
        Rule::Sgd { momentum, dampening: 0.0, nesterov: false }
    }
    /// Adam with PyTorch's defaults β = (0.9, 0.999), ε = 1e-8.
    pub fn adam() -> Self {
        Rule::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
    /// AdamW with PyTorch's defaults β = (0.9, 0.999), ε = 1e-8.
    pub fn adamw() -> Self {
        Rule::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config("optimizer", msg));
        match *self {
            Rule::Sgd { momentum, dampening, nesterov } => {
                if !(momentum >= 0.0 && dampening.is_finite()) {
                    return bad(format!("momentum must be >= 0, got {momentum}"));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return bad("nesterov needs momentum > 0 and zero dampening".into());
                }
            }
            Rule::Adam { beta1, beta2, eps } | Rule::AdamW { beta1, beta2, eps } => {
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps >= 0.0) {
                    return bad(format!(
                        "betas must be in [0, 1) and eps >= 0, got ({beta1}, {beta2}), {eps}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Per-parameter state: step count and moment buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState<T: Float> {
    /// Updates applied to this parameter.
    pub step: u64,
    /// SGD's momentum buffer, or Adam's first moment.
    pub first: Option<ArrayD<T>>,
    /// Adam's second moment.
    pub second: Option<ArrayD<T>>,
}

/// An optimizer: a rule, parameter groups, and per-parameter state by key.
///
/// Parameters are visited through [`Layer::visit`]; those not trainable
/// (frozen) and buffers (running statistics) are never touched. A parameter
/// belongs to the first group whose rule matches its key, else to the default.
#[derive(Debug)]
pub struct Optimizer<T: Float> {
    rule: Rule,
    default: ParamGroup,
    groups: Vec<ParamGroup>,
    state: HashMap<String, ParamState<T>>,
}

impl<T: Float> Optimizer<T> {
    /// An optimizer with one default group.
    ///
    /// # Errors
    /// [`Error::Config`] for a negative or non-finite lr or weight decay, or bad rule settings.
    pub fn new(rule: Rule, lr: f64, weight_decay: f64) -> Result<Self> {
        rule.check()?;
        check_group(lr, weight_decay)?;
        let default = ParamGroup::new("default", lr, weight_decay, |_| true);
        Ok(Optimizer { rule, default, groups: Vec::new(), state: HashMap::new() })
    }

    /// Adds a group; earlier groups take precedence.
    ///
    /// # Errors
    /// [`Error::Config`] for a negative or non-finite lr or weight decay.
    pub fn with_group(mut self, group: ParamGroup) -> Result<Self> {
        check_group(group.lr, group.weight_decay)?;
        self.groups.push(group);
        Ok(self)
    }

    /// The groups, default last.
    pub fn groups(&self) -> impl Iterator<Item = &ParamGroup> {
        self.groups.iter().chain(std::iter::once(&self.default))
    }

    /// Sets every group's lr from its base lr and the schedule at `step`.
    pub fn schedule(&mut self, schedule: &Schedule, step: usize) {
        for g in self.groups.iter_mut().chain(std::iter::once(&mut self.default)) {
            g.lr = schedule.lr(step, g.base_lr);
        }
    }

    /// The state of a parameter by key (None before its first step).
    pub fn state(&self, key: &str) -> Option<&ParamState<T>> {
        self.state.get(key)
    }

    /// All per-parameter state, for saving and exact resume.
    pub fn states(&self) -> &HashMap<String, ParamState<T>> {
        &self.state
    }

    /// Replaces the per-parameter state (as saved by [`Optimizer::states`]).
    pub fn set_states(&mut self, state: HashMap<String, ParamState<T>>) {
        self.state = state;
    }

    /// One update of every trainable parameter of `model` from its gradient.
    ///
    /// # Errors
    /// [`Error::Shape`] when a parameter's gradient or saved state has another shape than its value.
    pub fn step(&mut self, model: &mut dyn Layer<T>) -> Result<()> {
        let mut result = Ok(());
        model.visit_mut("", &mut |key, p| {
            if result.is_ok() {
                result = self.update(key, p);
            }
        });
        result
    }

    /// Sets every gradient of `model` to zero.
    pub fn zero_grad(&self, model: &mut dyn Layer<T>) {
        model.zero_grad();
    }

    /// One update of a single parameter under `key` (what [`Optimizer::step`] does for each).
    ///
    /// # Errors
    /// As [`Optimizer::step`].
    pub fn update(&mut self, key: &str, p: &mut Param<T>) -> Result<()> {
        if !p.trainable || p.buffer {
            return Ok(());
        }
        if p.grad.shape() != p.value().shape() {
            return Err(Error::shape(
                "optimizer",
                format!("{key}: grad {:?} for value {:?}", p.grad.shape(), p.value().shape()),
            ));
        }
        let rank = p.value().ndim();
        let group = self.groups.iter().find(|g| g.contains(key, rank)).unwrap_or(&self.default);
        let (lr, wd) = (T::of(group.lr), T::of(group.weight_decay));
        let state = self.state.entry(key.to_string()).or_insert(ParamState {
            step: 0,
            first: None,
            second: None,
        });
        for buf in [&state.first, &state.second].into_iter().flatten() {
            if buf.shape() != p.value().shape() {
                return Err(Error::shape(
                    "optimizer",
                    format!(
                        "{key}: saved state {:?} for value {:?}",
                        buf.shape(),
                        p.value().shape()
                    ),
                ));
            }
        }
        state.step += 1;
        match self.rule {
            Rule::Sgd { momentum, dampening, nesterov } => {
                let mut g = p.grad.clone();
                if wd != T::zero() {
                    g.zip_mut_with(p.value(), |g, &v| *g += wd * v);
                }
                if momentum != 0.0 {
                    let mu = T::of(momentum);
                    let buf = match state.first.take() {
                        None => g.clone(),
                        Some(mut b) => {
                            let keep = T::one() - T::of(dampening);
                            b.zip_mut_with(&g, |b, &g| *b = mu * *b + keep * g);
                            b
                        }
                    };
                    if nesterov {
                        g.zip_mut_with(&buf, |g, &b| *g += mu * b);
                    } else {
                        g.assign(&buf);
                    }
                    state.first = Some(buf);
                }
                p.value_mut().zip_mut_with(&g, |v, &g| *v -= lr * g);
            }
            Rule::Adam { beta1, beta2, eps } | Rule::AdamW { beta1, beta2, eps } => {
                let decoupled = matches!(self.rule, Rule::AdamW { .. });
                if decoupled && wd != T::zero() {
                    p.value_mut().mapv_inplace(|v| v * (T::one() - lr * wd));
                }
                let mut g = p.grad.clone();
                if !decoupled && wd != T::zero() {
                    g.zip_mut_with(p.value(), |g, &v| *g += wd * v);
                }
                let (b1, b2) = (T::of(beta1), T::of(beta2));
                let m = state.first.get_or_insert_with(|| ArrayD::zeros(p.value().raw_dim()));
                m.zip_mut_with(&g, |m, &g| *m = b1 * *m + (T::one() - b1) * g);
                let v = state.second.get_or_insert_with(|| ArrayD::zeros(p.value().raw_dim()));
                v.zip_mut_with(&g, |v, &g| *v = b2 * *v + (T::one() - b2) * g * g);
                // PyTorch's form: step = lr / (1 − β₁ᵗ), denom = √v / √(1 − β₂ᵗ) + ε.
                let t = state.step as i32;
                let bc1 = T::one() - b1.powi(t);
                let bc2_sqrt = (T::one() - b2.powi(t)).sqrt();
                let step_size = lr / bc1;
                let eps = T::of(eps);
                let (m, v) = (&*m, &*v);
                ndarray::Zip::from(p.value_mut()).and(m).and(v).for_each(|p, &m, &v| {
                    *p -= step_size * m / (v.sqrt() / bc2_sqrt + eps);
                });
            }
        }
        Ok(())
    }
}

fn check_group(lr: f64, weight_decay: f64) -> Result<()> {
    if !(lr >= 0.0 && lr.is_finite() && weight_decay >= 0.0 && weight_decay.is_finite()) {
        return Err(Error::config(
            "optimizer",
            format!("lr and weight_decay must be finite and >= 0, got {lr}, {weight_decay}"),
        ));
    }
    Ok(())
}
