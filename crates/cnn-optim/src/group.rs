//! Parameter groups: which parameters get which learning rate and weight decay.

use std::fmt;

/// Settings shared by the parameters of one group.
pub struct ParamGroup {
    /// A name for messages and state files.
    pub name: String,
    /// Which parameters (by `state_dict` key) belong here.
    pub matches: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// The learning rate before any schedule.
    pub base_lr: f64,
    /// The learning rate in force (a schedule sets it from `base_lr`).
    pub lr: f64,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// Only parameters of at most this many dimensions belong (`Some(1)`:
    /// biases, norm weights, layer scales); `None` for any.
    pub max_rank: Option<usize>,
}

impl fmt::Debug for ParamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParamGroup")
            .field("name", &self.name)
            .field("base_lr", &self.base_lr)
            .field("lr", &self.lr)
            .field("weight_decay", &self.weight_decay)
            .finish()
    }
}

impl ParamGroup {
    /// A group of the parameters whose keys satisfy `matches`.
    pub fn new(
        name: &str,
        lr: f64,
        weight_decay: f64,
        matches: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        ParamGroup {
            name: name.to_string(),
            matches: Box::new(matches),
            base_lr: lr,
            lr,
            weight_decay,
            max_rank: None,
        }
    }

    /// Whether the parameter under `key` with `rank` dimensions belongs here.
    pub fn contains(&self, key: &str, rank: usize) -> bool {
        (self.matches)(key) && self.max_rank.is_none_or(|r| rank <= r)
    }

    /// Every parameter of one dimension or none (biases, norm weights,
    /// ConvNeXt's layer scales), free of weight decay: timm's rule
    /// (`param.ndim <= 1`), which needs no knowledge of the key names.
    pub fn no_weight_decay(lr: f64) -> Self {
        let mut g = Self::new("no_weight_decay", lr, 0.0, |_| true);
        g.max_rank = Some(1);
        g
    }

    /// A group of the parameters whose keys start with `prefix` (`"layer4"`, `"fc"`).
    pub fn prefix(prefix: &str, lr: f64, weight_decay: f64) -> Self {
        let p = prefix.to_string();
        Self::new(prefix, lr, weight_decay, move |key| {
            key == p || key.starts_with(&format!("{p}."))
        })
    }

    /// Biases and norm weights (1-D parameters by convention: keys ending in
    /// `bias`, or containing `bn`/`norm`/`downsample.1`), usually kept free of weight decay.
    pub fn norms_and_biases(lr: f64) -> Self {
        Self::new("norms_and_biases", lr, 0.0, |key| {
            key.ends_with("bias")
                || key.contains("bn")
                || key.contains("norm")
                || key.contains("downsample.1")
        })
    }
}
