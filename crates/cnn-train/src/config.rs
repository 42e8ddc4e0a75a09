//! The training configuration: every knob with a documented default, `with_*` builders.

use cnn_optim::{Optimizer, ParamGroup, Rule, Schedule};
use cnn_tensor::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which optimizer (PyTorch's names and update rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` with [`TrainConfig::momentum`] and [`TrainConfig::nesterov`].
    Sgd,
    /// `torch.optim.Adam` (L2 decay added to the gradient).
    Adam,
    /// `torch.optim.AdamW` (decoupled weight decay).
    AdamW,
}

/// Which learning-rate schedule, stepped once per iteration over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The base lr throughout.
    Constant,
    /// ×0.1 after each third of the run (`StepLR`).
    Step,
    /// Cosine from the base lr to 0 over the run (`CosineAnnealingLR`).
    Cosine,
    /// Linear warmup from 0.1× over [`TrainConfig::warmup_epochs`], then cosine to 0.
    WarmupCosine,
    /// `OneCycleLR` with PyTorch's defaults (30% rising, from lr/25 to lr/2.5e5).
    OneCycle,
}

/// What [`crate::Trainer`] does, every field with a default (PyTorch's where it has one).
///
/// The batch size belongs to the [`cnn_data::DataLoader`]; everything here is
/// saved in each checkpoint's `trainer.json`, so a resumed run rebuilds
/// exactly the same optimizer and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set. Default 30.
    pub epochs: usize,
    /// Base (for one-cycle: peak) learning rate. Default 0.1.
    pub lr: f64,
    /// The update rule. Default SGD.
    pub optimizer: OptimizerKind,
    /// SGD momentum μ. Default 0.9.
    pub momentum: f64,
    /// Nesterov momentum for SGD. Default true.
    pub nesterov: bool,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW). Default 5e-4.
    pub weight_decay: f64,
    /// Exempt every parameter of one dimension (biases, norm weights, layer
    /// scales) from weight decay (timm's habit). Default false (PyTorch's:
    /// decay on everything).
    pub no_decay_norms_biases: bool,
    /// The schedule. Default one-cycle.
    pub schedule: ScheduleKind,
    /// Epochs of linear warmup for [`ScheduleKind::WarmupCosine`]. Default 1.
    pub warmup_epochs: f64,
    /// Cross-entropy label smoothing ε in [0, 1]. Default 0.
    pub label_smoothing: f64,
    /// Seed of the per-step random layers (dropout). Default 0. The data
    /// order and augmentation come from the loader's own seed.
    pub seed: u64,
    /// The divergence guard trips when the loss exceeds this multiple of the
    /// first step's loss ... Default 4.
    pub divergence_factor: f64,
    /// ... for this many steps in a row (a non-finite loss trips it at once). Default 3.
    pub divergence_patience: usize,
    /// Key prefixes of the head (`["fc"]`): with [`TrainConfig::backbone_lr_mult`]
    /// they train at the full lr and the rest (the pretrained backbone) at the
    /// smaller one. Default empty (one lr for all).
    #[serde(default)]
    pub head: Vec<String>,
    /// The backbone's lr as a multiple of [`TrainConfig::lr`] when
    /// [`TrainConfig::head`] is set (fine-tuning: 0.1). Default 1.
    #[serde(default = "one")]
    pub backbone_lr_mult: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            lr: 0.1,
            optimizer: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            no_decay_norms_biases: false,
            schedule: ScheduleKind::OneCycle,
            warmup_epochs: 1.0,
            label_smoothing: 0.0,
            seed: 0,
            divergence_factor: 4.0,
            divergence_patience: 3,
            head: Vec::new(),
            backbone_lr_mult: 1.0,
        }
    }
}

macro_rules! with {
    ($($(#[$doc:meta])* $name:ident: $field:ident: $ty:ty;)*) => {
        $($(#[$doc])* pub fn $name(mut self, $field: $ty) -> Self {
            self.$field = $field;
            self
        })*
    };
}

impl TrainConfig {
    with! {
        /// Sets [`TrainConfig::epochs`].
        with_epochs: epochs: usize;
        /// Sets [`TrainConfig::lr`].
        with_lr: lr: f64;
        /// Sets [`TrainConfig::optimizer`].
        with_optimizer: optimizer: OptimizerKind;
        /// Sets [`TrainConfig::momentum`].
        with_momentum: momentum: f64;
        /// Sets [`TrainConfig::nesterov`].
        with_nesterov: nesterov: bool;
        /// Sets [`TrainConfig::weight_decay`].
        with_weight_decay: weight_decay: f64;
        /// Sets [`TrainConfig::no_decay_norms_biases`].
        with_no_decay_norms_biases: no_decay_norms_biases: bool;
        /// Sets [`TrainConfig::schedule`].
        with_schedule: schedule: ScheduleKind;
        /// Sets [`TrainConfig::warmup_epochs`].
        with_warmup_epochs: warmup_epochs: f64;
        /// Sets [`TrainConfig::label_smoothing`].
        with_label_smoothing: label_smoothing: f64;
        /// Sets [`TrainConfig::seed`].
        with_seed: seed: u64;
        /// Sets [`TrainConfig::divergence_factor`].
        with_divergence_factor: divergence_factor: f64;
        /// Sets [`TrainConfig::divergence_patience`].
        with_divergence_patience: divergence_patience: usize;
        /// Sets [`TrainConfig::head`].
        with_head: head: Vec<String>;
        /// Sets [`TrainConfig::backbone_lr_mult`].
        with_backbone_lr_mult: backbone_lr_mult: f64;
    }

    /// timm's recipe for ConvNeXt and friends: AdamW at `lr` with decoupled
    /// weight decay `weight_decay` on weights only (none on biases, norms and
    /// layer scales), one epoch of warmup then cosine decay.
    pub fn timm_adamw(lr: f64, weight_decay: f64) -> Self {
        TrainConfig::default()
            .with_optimizer(OptimizerKind::AdamW)
            .with_lr(lr)
            .with_weight_decay(weight_decay)
            .with_no_decay_norms_biases(true)
            .with_schedule(ScheduleKind::WarmupCosine)
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting: zero epochs, a negative or
    /// non-finite lr, momentum or weight decay, Nesterov without momentum,
    /// label smoothing outside [0, 1], a divergence factor not above 1.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config("train", msg));
        let nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be positive and finite, got {}", self.lr));
        }
        if !nonneg(self.momentum) || !nonneg(self.weight_decay) {
            return bad(format!(
                "momentum and weight_decay must be >= 0, got {} and {}",
                self.momentum, self.weight_decay
            ));
        }
        if self.optimizer == OptimizerKind::Sgd && self.nesterov && self.momentum == 0.0 {
            return bad("nesterov needs momentum > 0 (set nesterov false or a momentum)".into());
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return bad(format!("label_smoothing must be in [0, 1], got {}", self.label_smoothing));
        }
        if !nonneg(self.warmup_epochs) {
            return bad(format!("warmup_epochs must be >= 0, got {}", self.warmup_epochs));
        }
        if self.divergence_factor.is_nan()
            || self.divergence_factor <= 1.0
            || self.divergence_patience == 0
        {
            return bad(format!(
                "divergence_factor must be > 1 and divergence_patience >= 1, got {} and {}",
                self.divergence_factor, self.divergence_patience
            ));
        }
        if !(self.backbone_lr_mult.is_finite() && self.backbone_lr_mult > 0.0) {
            return bad(format!(
                "backbone_lr_mult must be positive and finite, got {}",
                self.backbone_lr_mult
            ));
        }
        Ok(())
    }

    /// The optimizer this config describes, with its parameter groups.
    ///
    /// # Errors
    /// [`Error::Config`] for settings the optimizer refuses.
    pub fn build_optimizer(&self) -> Result<Optimizer<f32>> {
        let rule = match self.optimizer {
            OptimizerKind::Sgd => {
                Rule::Sgd { momentum: self.momentum, dampening: 0.0, nesterov: self.nesterov }
            }
            OptimizerKind::Adam => Rule::adam(),
            OptimizerKind::AdamW => Rule::adamw(),
        };
        // The head's group comes first (groups match in order), so the
        // default group is the backbone at its smaller lr.
        let split = !self.head.is_empty() && self.backbone_lr_mult != 1.0;
        let backbone_lr = if split { self.lr * self.backbone_lr_mult } else { self.lr };
        let mut opt = Optimizer::new(rule, backbone_lr, self.weight_decay)?;
        if split {
            let head = self.head.clone();
            opt =
                opt.with_group(ParamGroup::new("head", self.lr, self.weight_decay, move |key| {
                    head.iter().any(|p| key == p || key.starts_with(&format!("{p}.")))
                }))?;
        }
        if self.no_decay_norms_biases {
            opt = opt.with_group(ParamGroup::no_weight_decay(backbone_lr))?;
        }
        Ok(opt)
    }

    /// The schedule over a run of `steps_per_epoch × epochs` iterations.
    ///
    /// # Errors
    /// [`Error::Config`] when the run is too short for the schedule (one-cycle
    /// needs 2 steps; warmup must end before the run does).
    pub fn build_schedule(&self, steps_per_epoch: usize) -> Result<Schedule> {
        let total = steps_per_epoch * self.epochs;
        if total < 2 && self.schedule != ScheduleKind::Constant {
            return Err(Error::config(
                "train",
                format!(
                    "the {:?} schedule needs at least 2 steps, this run has {total} ({} epochs of {steps_per_epoch} batches): \
                     raise the epochs, lower the batch size, or use the constant schedule",
                    self.schedule, self.epochs
                ),
            ));
        }
        let schedule = match self.schedule {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Step => {
                Schedule::Step { step_size: total.div_ceil(3).max(1), gamma: 0.1 }
            }
            ScheduleKind::Cosine => Schedule::Cosine { t_max: total.max(1), eta_min: 0.0 },
            ScheduleKind::WarmupCosine => Schedule::WarmupCosine {
                warmup_steps: ((self.warmup_epochs * steps_per_epoch as f64).round() as usize)
                    .min(total.saturating_sub(1)),
                start_factor: 0.1,
                total_steps: total,
                min_lr: 0.0,
            },
            ScheduleKind::OneCycle => Schedule::OneCycle {
                max_lr: self.lr,
                total_steps: total,
                pct_start: 0.3,
                div_factor: 25.0,
                final_div_factor: 1e4,
            },
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_build() {
        let c = TrainConfig::default();
        c.validate().unwrap();
        c.build_optimizer().unwrap();
        assert!(matches!(
            c.build_schedule(23).unwrap(),
            Schedule::OneCycle { total_steps: 690, .. }
        ));
    }

    #[test]
    fn bad_settings_name_themselves() {
        let e = TrainConfig::default().with_lr(-1.0).validate().unwrap_err().to_string();
        assert_eq!(e, "train: invalid setting: lr must be positive and finite, got -1");
        assert!(TrainConfig::default().with_epochs(0).validate().is_err());
        assert!(TrainConfig::default().with_label_smoothing(1.5).validate().is_err());
        assert!(TrainConfig::default().with_momentum(0.0).validate().is_err());
        assert!(TrainConfig::default().with_divergence_factor(1.0).validate().is_err());
    }

    #[test]
    fn the_backbone_trains_at_its_multiple_of_the_lr() {
        let c = TrainConfig::default()
            .with_lr(0.01)
            .with_head(vec!["fc".into()])
            .with_backbone_lr_mult(0.1);
        let opt = c.build_optimizer().unwrap();
        let lrs: Vec<(String, f64)> = opt.groups().map(|g| (g.name.clone(), g.base_lr)).collect();
        assert_eq!(lrs, [("head".to_string(), 0.01), ("default".to_string(), 0.01 * 0.1)]);
        let head = opt.groups().next().unwrap();
        assert!((head.matches)("fc.weight") && !(head.matches)("fc2.weight"));
        assert!(c.clone().with_backbone_lr_mult(0.0).validate().is_err());
        // An old trainer.json without the new fields still reads.
        let mut v = serde_json::to_value(TrainConfig::default()).unwrap();
        v.as_object_mut().unwrap().remove("head");
        v.as_object_mut().unwrap().remove("backbone_lr_mult");
        assert_eq!(serde_json::from_value::<TrainConfig>(v).unwrap(), TrainConfig::default());
    }

    #[test]
    fn timm_adamw_leaves_one_dimensional_parameters_undecayed() {
        let opt = TrainConfig::timm_adamw(4e-3, 0.05).build_optimizer().unwrap();
        let group = |key: &str, rank: usize| {
            opt.groups().find(|g| g.contains(key, rank)).map(|g| g.weight_decay).unwrap()
        };
        for (key, rank) in
            [("stem.1.weight", 1), ("stages.0.blocks.0.gamma", 1), ("head.fc.bias", 1)]
        {
            assert_eq!(group(key, rank), 0.0, "{key}");
        }
        for (key, rank) in
            [("stem.0.weight", 4), ("stages.0.blocks.0.mlp.fc1.weight", 2), ("head.fc.weight", 2)]
        {
            assert_eq!(group(key, rank), 0.05, "{key}");
        }
    }

    #[test]
    fn json_round_trip_is_exact() {
        let c = TrainConfig::default().with_lr(0.1 + 0.2).with_schedule(ScheduleKind::WarmupCosine);
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
