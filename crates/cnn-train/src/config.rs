//! The training configuration: every knob with a documented default, `with_*` builders.

use cnn_optim::{Optimizer, ParamGroup, Rule, Schedule};
use cnn_tensor::{Error, Precision, Result};
use serde::{Deserialize, Serialize};

/// Which optimizer (PyTorch's names and update rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` with [`OptimizerConfig::momentum`] and [`OptimizerConfig::nesterov`].
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
    /// Linear warmup from 0.1× over [`ScheduleConfig::warmup_epochs`], then cosine to 0.
    WarmupCosine,
    /// `OneCycleLR` with PyTorch's defaults (30% rising, from lr/25 to lr/2.5e5).
    OneCycle,
}

/// What [`crate::Trainer`] does, every field with a default (PyTorch's where it has one),
/// in four parts: the optimizer, the schedule, the divergence guard and transfer.
///
/// The batch size belongs to the [`cnn_data::DataLoader`]; everything here is
/// saved in each checkpoint's `trainer.json`, so a resumed run rebuilds
/// exactly the same optimizer and schedule. `trainer.json` files written
/// before the grouping (every setting at the top level) still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct TrainConfig {
    /// Passes over the training set. Default 30.
    pub epochs: usize,
    /// Seed of the per-step random layers (dropout). Default 0. The data
    /// order and augmentation come from the loader's own seed.
    pub seed: u64,
    /// Cross-entropy label smoothing ε in [0, 1] (the default loss's). Default 0.
    pub label_smoothing: f64,
    /// The update rule and its settings.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// When a run counts as diverged.
    pub guard: GuardConfig,
    /// Training a pretrained backbone more gently than a new head.
    pub transfer: TransferConfig,
    /// The precision of the products of every step and validation
    /// ([`cnn_tensor::with_precision`] around them): `Bf16` is mixed
    /// precision (bf16 inputs, f32 sums; weights, gradients, optimizer state
    /// and checkpoints stay f32). Default `F32`. Saved in `trainer.json`, so
    /// a resumed run keeps it.
    #[serde(with = "precision_name")]
    pub precision: Precision,
}

/// [`Precision`] in `trainer.json`: its name, `"f32"` or `"bf16"`.
mod precision_name {
    use cnn_tensor::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &Precision, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precision, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The optimizer of a [`TrainConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// The update rule. Default SGD.
    pub kind: OptimizerKind,
    /// Base (for one-cycle: peak) learning rate. Default 0.1.
    pub lr: f64,
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
}

/// The learning-rate schedule of a [`TrainConfig`], stepped once per iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The schedule. Default one-cycle.
    pub kind: ScheduleKind,
    /// Epochs of linear warmup for [`ScheduleKind::WarmupCosine`]. Default 1.
    pub warmup_epochs: f64,
}

/// The divergence guard of a [`TrainConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The guard trips when the loss exceeds this multiple of the first
    /// step's loss ... Default 4.
    pub divergence_factor: f64,
    /// ... for this many steps in a row (a non-finite loss trips it at once). Default 3.
    pub divergence_patience: usize,
}

/// Transfer settings of a [`TrainConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Key prefixes of the head (`["fc"]`): with [`TransferConfig::backbone_lr_mult`]
    /// they train at the full lr and the rest (the pretrained backbone) at the
    /// smaller one. Default empty (one lr for all).
    pub head: Vec<String>,
    /// The backbone's lr as a multiple of [`OptimizerConfig::lr`] when
    /// [`TransferConfig::head`] is set (fine-tuning: 0.1). Default 1.
    pub backbone_lr_mult: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            seed: 0,
            label_smoothing: 0.0,
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            guard: GuardConfig::default(),
            transfer: TransferConfig::default(),
            precision: Precision::F32,
        }
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            no_decay_norms_biases: false,
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { kind: ScheduleKind::OneCycle, warmup_epochs: 1.0 }
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig { divergence_factor: 4.0, divergence_patience: 3 }
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig { head: Vec::new(), backbone_lr_mult: 1.0 }
    }
}

/// [`TrainConfig`] as written to `trainer.json` now: in parts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupedFile {
    epochs: usize,
    seed: u64,
    label_smoothing: f64,
    optimizer: OptimizerConfig,
    schedule: ScheduleConfig,
    guard: GuardConfig,
    #[serde(default)]
    transfer: TransferConfig,
    /// Absent in runs written before bf16: f32.
    #[serde(default, with = "precision_name")]
    precision: Precision,
}

/// [`TrainConfig`] as `trainer.json` held it before the parts: every
/// setting at the top (`head` and `backbone_lr_mult` came later still).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatFile {
    epochs: usize,
    lr: f64,
    optimizer: OptimizerKind,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    no_decay_norms_biases: bool,
    schedule: ScheduleKind,
    warmup_epochs: f64,
    label_smoothing: f64,
    seed: u64,
    divergence_factor: f64,
    divergence_patience: usize,
    #[serde(default)]
    head: Vec<String>,
    #[serde(default = "one")]
    backbone_lr_mult: f64,
}

fn one() -> f64 {
    1.0
}

impl TryFrom<serde_json::Value> for TrainConfig {
    type Error = serde_json::Error;

    /// The grouped form when `optimizer` is an object, else the flat one;
    /// either's own error (a missing or unknown field, named) when it does not fit.
    fn try_from(v: serde_json::Value) -> std::result::Result<Self, Self::Error> {
        if v.get("optimizer").is_some_and(serde_json::Value::is_object) {
            let g: GroupedFile = serde_json::from_value(v)?;
            return Ok(TrainConfig {
                epochs: g.epochs,
                seed: g.seed,
                label_smoothing: g.label_smoothing,
                optimizer: g.optimizer,
                schedule: g.schedule,
                guard: g.guard,
                transfer: g.transfer,
                precision: g.precision,
            });
        }
        let f: FlatFile = serde_json::from_value(v)?;
        Ok(TrainConfig {
            epochs: f.epochs,
            seed: f.seed,
            label_smoothing: f.label_smoothing,
            optimizer: OptimizerConfig {
                kind: f.optimizer,
                lr: f.lr,
                momentum: f.momentum,
                nesterov: f.nesterov,
                weight_decay: f.weight_decay,
                no_decay_norms_biases: f.no_decay_norms_biases,
            },
            schedule: ScheduleConfig { kind: f.schedule, warmup_epochs: f.warmup_epochs },
            guard: GuardConfig {
                divergence_factor: f.divergence_factor,
                divergence_patience: f.divergence_patience,
            },
            transfer: TransferConfig { head: f.head, backbone_lr_mult: f.backbone_lr_mult },
            precision: Precision::F32,
        })
    }
}

impl TrainConfig {
    cnn_tensor::setters! {
        /// Sets [`TrainConfig::epochs`].
        with_epochs: epochs: usize;
        /// Sets [`TrainConfig::seed`].
        with_seed: seed: u64;
        /// Sets [`TrainConfig::label_smoothing`].
        with_label_smoothing: label_smoothing: f64;
        /// Sets [`OptimizerConfig::lr`].
        with_lr: optimizer.lr: f64;
        /// Sets [`OptimizerConfig::kind`].
        with_optimizer: optimizer.kind: OptimizerKind;
        /// Sets [`OptimizerConfig::momentum`].
        with_momentum: optimizer.momentum: f64;
        /// Sets [`OptimizerConfig::nesterov`].
        with_nesterov: optimizer.nesterov: bool;
        /// Sets [`OptimizerConfig::weight_decay`].
        with_weight_decay: optimizer.weight_decay: f64;
        /// Sets [`OptimizerConfig::no_decay_norms_biases`].
        with_no_decay_norms_biases: optimizer.no_decay_norms_biases: bool;
        /// Sets [`ScheduleConfig::kind`].
        with_schedule: schedule.kind: ScheduleKind;
        /// Sets [`ScheduleConfig::warmup_epochs`].
        with_warmup_epochs: schedule.warmup_epochs: f64;
        /// Sets [`GuardConfig::divergence_factor`].
        with_divergence_factor: guard.divergence_factor: f64;
        /// Sets [`GuardConfig::divergence_patience`].
        with_divergence_patience: guard.divergence_patience: usize;
        /// Sets [`TransferConfig::head`].
        with_head: transfer.head: Vec<String>;
        /// Sets [`TransferConfig::backbone_lr_mult`].
        with_backbone_lr_mult: transfer.backbone_lr_mult: f64;
        /// Sets [`TrainConfig::precision`].
        with_precision: precision: Precision;
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
        let (o, sch, g, t) = (&self.optimizer, &self.schedule, &self.guard, &self.transfer);
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(format!("lr must be positive and finite, got {}", o.lr));
        }
        if !nonneg(o.momentum) || !nonneg(o.weight_decay) {
            return bad(format!(
                "momentum and weight_decay must be >= 0, got {} and {}",
                o.momentum, o.weight_decay
            ));
        }
        if o.kind == OptimizerKind::Sgd && o.nesterov && o.momentum == 0.0 {
            return bad("nesterov needs momentum > 0 (set nesterov false or a momentum)".into());
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return bad(format!("label_smoothing must be in [0, 1], got {}", self.label_smoothing));
        }
        if !nonneg(sch.warmup_epochs) {
            return bad(format!("warmup_epochs must be >= 0, got {}", sch.warmup_epochs));
        }
        if g.divergence_factor.is_nan() || g.divergence_factor <= 1.0 || g.divergence_patience == 0
        {
            return bad(format!(
                "divergence_factor must be > 1 and divergence_patience >= 1, got {} and {}",
                g.divergence_factor, g.divergence_patience
            ));
        }
        if !(t.backbone_lr_mult.is_finite() && t.backbone_lr_mult > 0.0) {
            return bad(format!(
                "backbone_lr_mult must be positive and finite, got {}",
                t.backbone_lr_mult
            ));
        }
        Ok(())
    }

    /// The optimizer this config describes, with its parameter groups.
    ///
    /// # Errors
    /// [`Error::Config`] for settings the optimizer refuses.
    pub fn build_optimizer<T: cnn_tensor::Float>(&self) -> Result<Optimizer<T>> {
        let (o, t) = (&self.optimizer, &self.transfer);
        let rule = match o.kind {
            OptimizerKind::Sgd => {
                Rule::Sgd { momentum: o.momentum, dampening: 0.0, nesterov: o.nesterov }
            }
            OptimizerKind::Adam => Rule::adam(),
            OptimizerKind::AdamW => Rule::adamw(),
        };
        // The head's group comes first (groups match in order), so the
        // default group is the backbone at its smaller lr.
        let split = !t.head.is_empty() && t.backbone_lr_mult != 1.0;
        let backbone_lr = if split { o.lr * t.backbone_lr_mult } else { o.lr };
        let mut opt = Optimizer::new(rule, backbone_lr, o.weight_decay)?;
        if split {
            let head = t.head.clone();
            opt = opt.with_group(ParamGroup::new("head", o.lr, o.weight_decay, move |key| {
                head.iter().any(|p| key == p || key.starts_with(&format!("{p}.")))
            }))?;
        }
        if o.no_decay_norms_biases {
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
        let (kind, lr) = (self.schedule.kind, self.optimizer.lr);
        if total < 2 && kind != ScheduleKind::Constant {
            return Err(Error::config(
                "train",
                format!(
                    "the {:?} schedule needs at least 2 steps, this run has {total} ({} epochs of {steps_per_epoch} batches): \
                     raise the epochs, lower the batch size, or use the constant schedule",
                    kind, self.epochs
                ),
            ));
        }
        let schedule = match kind {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Step => {
                Schedule::Step { step_size: total.div_ceil(3).max(1), gamma: 0.1 }
            }
            ScheduleKind::Cosine => Schedule::Cosine { t_max: total.max(1), eta_min: 0.0 },
            ScheduleKind::WarmupCosine => Schedule::WarmupCosine {
                warmup_steps: ((self.schedule.warmup_epochs * steps_per_epoch as f64).round()
                    as usize)
                    .min(total.saturating_sub(1)),
                start_factor: 0.1,
                total_steps: total,
                min_lr: 0.0,
            },
            ScheduleKind::OneCycle => Schedule::OneCycle {
                max_lr: lr,
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
        c.build_optimizer::<f32>().unwrap();
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
        let opt = c.build_optimizer::<f32>().unwrap();
        let lrs: Vec<(String, f64)> = opt.groups().map(|g| (g.name.clone(), g.base_lr)).collect();
        assert_eq!(lrs, [("head".to_string(), 0.01), ("default".to_string(), 0.01 * 0.1)]);
        let head = opt.groups().next().unwrap();
        assert!((head.matches)("fc.weight") && !(head.matches)("fc2.weight"));
        assert!(c.clone().with_backbone_lr_mult(0.0).validate().is_err());
        // A grouped trainer.json without the transfer part still reads.
        let mut v = serde_json::to_value(TrainConfig::default()).unwrap();
        v.as_object_mut().unwrap().remove("transfer");
        assert_eq!(serde_json::from_value::<TrainConfig>(v).unwrap(), TrainConfig::default());
    }

    /// The precision is saved by name, read back, absent means f32 (a run
    /// written before bf16), and a name that is not one is an error.
    #[test]
    fn precision_is_saved_by_name_and_defaults_to_f32() {
        let bf16 = TrainConfig::default().with_precision(Precision::Bf16);
        let v = serde_json::to_value(&bf16).unwrap();
        assert_eq!(v["precision"], "bf16");
        assert_eq!(serde_json::from_value::<TrainConfig>(v.clone()).unwrap(), bf16);
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("precision");
        assert_eq!(serde_json::from_value::<TrainConfig>(old).unwrap().precision, Precision::F32);
        let mut bad = v;
        bad["precision"] = "fp16".into();
        let e = serde_json::from_value::<TrainConfig>(bad).unwrap_err().to_string();
        assert!(e.contains("not a precision"), "{e}");
    }

    #[test]
    fn timm_adamw_leaves_one_dimensional_parameters_undecayed() {
        let opt = TrainConfig::timm_adamw(4e-3, 0.05).build_optimizer::<f32>().unwrap();
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

    /// The `config` of a trainer.json written before the parts, verbatim.
    const FLAT: &str = r#"{"epochs":12,"lr":0.05,"optimizer":"adamw","momentum":0.9,
        "nesterov":false,"weight_decay":0.01,"no_decay_norms_biases":true,
        "schedule":"warmup-cosine","warmup_epochs":2.0,"label_smoothing":0.1,"seed":7,
        "divergence_factor":5.0,"divergence_patience":2,"head":["fc"],"backbone_lr_mult":0.1}"#;

    #[test]
    fn a_trainer_json_from_before_the_parts_reads_into_them() {
        let old: TrainConfig = serde_json::from_str(FLAT).unwrap();
        let want = TrainConfig::default()
            .with_epochs(12)
            .with_lr(0.05)
            .with_optimizer(OptimizerKind::AdamW)
            .with_nesterov(false)
            .with_weight_decay(0.01)
            .with_no_decay_norms_biases(true)
            .with_schedule(ScheduleKind::WarmupCosine)
            .with_warmup_epochs(2.0)
            .with_label_smoothing(0.1)
            .with_seed(7)
            .with_divergence_factor(5.0)
            .with_divergence_patience(2)
            .with_head(vec!["fc".into()])
            .with_backbone_lr_mult(0.1);
        assert_eq!(old, want);
        // Written back, it takes the grouped form, and reads back the same.
        let json = serde_json::to_value(&old).unwrap();
        assert_eq!(json["optimizer"]["kind"], "adamw");
        assert_eq!(json["transfer"]["backbone_lr_mult"], 0.1);
        assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap(), want);
        // Older still: without head and backbone_lr_mult.
        let mut v: serde_json::Value = serde_json::from_str(FLAT).unwrap();
        v.as_object_mut().unwrap().remove("head");
        v.as_object_mut().unwrap().remove("backbone_lr_mult");
        let older: TrainConfig = serde_json::from_value(v).unwrap();
        assert_eq!(older.transfer, TransferConfig::default());
    }

    #[test]
    fn a_misspelt_setting_is_named_in_either_form() {
        let mut flat: serde_json::Value = serde_json::from_str(FLAT).unwrap();
        flat["lrr"] = 0.1.into();
        let e = serde_json::from_value::<TrainConfig>(flat).unwrap_err().to_string();
        assert!(e.contains("unknown field `lrr`"), "{e}");
        let mut grouped = serde_json::to_value(TrainConfig::default()).unwrap();
        grouped["optimizer"]["momentun"] = 0.9.into();
        let e = serde_json::from_value::<TrainConfig>(grouped).unwrap_err().to_string();
        assert!(e.contains("unknown field `momentun`"), "{e}");
    }
}
