//! Transfer learning: load pretrained weights (torchvision's and timm's
//! safetensors as they are) into a network with a new head, then choose what
//! trains: a linear probe, fine-tuning, or named parts.

use std::fmt;
use std::path::Path;

use cnn_nn::{freeze, unfreeze, StateDict};
use cnn_nn::{Linear, LinearConfig};
use cnn_tensor::{random::seeded_rng, Error, Layer, Result};

/// What trains after the pretrained weights are loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferMode {
    /// Only the new head: a linear classifier on the pretrained features.
    LinearProbe,
    /// Every layer, the backbone at a smaller lr ([`crate::TransferConfig::backbone_lr_mult`]).
    Finetune,
    /// The parts under these key prefixes (`["layer4", "fc"]`), the rest frozen.
    Partial(Vec<String>),
}

/// How to read a checkpoint found in the wild.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PretrainedOptions {
    /// A key prefix to strip (`"module."`). Default `None`: a prefix that every
    /// key of the file shares and no key of the model has is detected and stripped.
    pub strip_prefix: Option<String>,
    /// Key renames applied first, as [`StateDict::rename`] takes them.
    pub rename: Vec<(String, String)>,
    /// Seed of the new head's initialization. Default 0.
    pub seed: u64,
}

impl PretrainedOptions {
    /// Sets [`PretrainedOptions::strip_prefix`].
    pub fn with_strip_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.strip_prefix = Some(prefix.into());
        self
    }
    /// Sets [`PretrainedOptions::rename`].
    pub fn with_rename(mut self, rename: Vec<(String, String)>) -> Self {
        self.rename = rename;
        self
    }
    cnn_tensor::setters! {
        /// Sets [`PretrainedOptions::seed`].
        with_seed: seed: u64;
    }
}

/// What [`load_pretrained`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// The head's path in the model (`"fc"`, `"classifier.6"`).
    pub head: String,
    /// Tensors loaded into the backbone.
    pub loaded: usize,
    /// `(key, why)` for each tensor of the file left out.
    pub skipped: Vec<(String, String)>,
    /// The prefix stripped from the file's keys, and whether it was detected (not forced).
    pub stripped_prefix: Option<(String, bool)>,
    /// Keys renamed by the rename map.
    pub renamed: usize,
    /// Dtypes converted on load, with counts (`[("F16", 62)]`).
    pub converted: Vec<(String, usize)>,
}

impl fmt::Display for TransferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "loaded {} pretrained tensors into the backbone", self.loaded)?;
        if let Some((p, detected)) = &self.stripped_prefix {
            let how = if *detected { "every key had it" } else { "as asked" };
            writeln!(f, "stripped the key prefix {p:?} ({how})")?;
        }
        if self.renamed > 0 {
            writeln!(f, "renamed {} keys by the rename map", self.renamed)?;
        }
        for (dtype, n) in &self.converted {
            writeln!(f, "converted {n} {dtype} tensors to f32")?;
        }
        for (key, why) in &self.skipped {
            writeln!(f, "skipped {key}: {why}")?;
        }
        Ok(())
    }
}

/// The path of the model's head: the layer that owns the last parameter
/// (`"fc"` in a ResNet, `"classifier.6"` in VGG), found from the keys.
///
/// # Errors
/// [`Error::Config`] for a model without parameters, or whose last layer is
/// not a linear layer (a `weight` of rank 2 and a `bias`).
pub fn head_path(model: &dyn Layer<f32>) -> Result<(String, [usize; 2])> {
    let mut last = None;
    model.visit("", &mut |key, p| {
        if !p.buffer {
            last = Some((key.to_string(), p.value().shape().to_vec()));
        }
    });
    let (key, _) = last.ok_or_else(|| Error::config("transfer", "the model has no parameters"))?;
    let path = key.rsplit_once('.').map_or("", |(p, _)| p).to_string();
    let mut weight = None;
    model.visit("", &mut |k, p| {
        if k == format!("{path}.weight") {
            weight = Some(p.value().shape().to_vec());
        }
    });
    match weight.as_deref() {
        Some(&[out, inp]) if !path.is_empty() => Ok((path, [out, inp])),
        _ => Err(Error::config(
            "transfer",
            format!(
                "the last layer ({key}) is not a linear head with a [classes, features] weight"
            ),
        )),
    }
}

fn under(key: &str, prefix: &str) -> bool {
    key == prefix || key.starts_with(&format!("{prefix}."))
}

/// Replaces the model's head ([`head_path`]) by a freshly initialized linear
/// layer for `classes` classes, as PyTorch's `Linear` initializes one.
/// Returns the head's path.
///
/// # Errors
/// As [`head_path`]; [`Error::Config`] for zero classes.
pub fn replace_head(model: &mut dyn Layer<f32>, classes: usize, seed: u64) -> Result<String> {
    let (head, [_, features]) = head_path(model)?;
    let linear = Linear::<f32>::new(LinearConfig::new(features, classes), &mut seeded_rng(seed))?;
    model.replace_child(&head, Box::new(linear))?;
    Ok(head)
}

/// Loads pretrained weights into `model` for a task of `classes` classes.
///
/// The file's keys are renamed (`options.rename`), a wrapper prefix is
/// stripped (given, or detected: `module.` from DataParallel and the like),
/// f16/bf16 tensors are converted; then every key of the backbone must be in
/// the file with its shape (strict: a missing or unexpected key or a shape
/// mismatch is an error naming them), while the head is replaced by a new
/// one for `classes` classes and the file's head tensors are skipped, each
/// named in the report with the reason.
///
/// # Errors
/// [`Error::Io`] / [`Error::Format`] for an unreadable file or one that does
/// not match the backbone; as [`head_path`].
pub fn load_pretrained(
    model: &mut dyn Layer<f32>,
    path: &Path,
    classes: usize,
    options: &PretrainedOptions,
) -> Result<TransferReport> {
    let mut dict = StateDict::read(path)?;
    let mut report = TransferReport {
        renamed: dict.rename(&options.rename),
        converted: dict.converted_dtypes(),
        ..TransferReport::default()
    };
    let mut keys = Vec::new();
    model.visit("", &mut |k, _| keys.push(k.to_string()));
    let prefix = match &options.strip_prefix {
        Some(p) => Some((p.clone(), false)),
        None => dict.common_prefix(&keys).map(|p| (p, true)),
    };
    if let Some((p, _)) = &prefix {
        if dict.strip_prefix(p) == 0 {
            return Err(Error::config(
                "transfer",
                format!("no key of {} starts with the prefix {p:?}", path.display()),
            ));
        }
    }
    report.stripped_prefix = prefix;
    let (head, [_, features]) = head_path(model)?;
    for (key, (shape, _)) in dict.tensors.iter().filter(|(k, _)| under(k, &head)) {
        let why = if key.ends_with("weight") && shape.as_slice() != [classes, features] {
            format!(
                "the file's head is {shape:?} ({} classes); the new head is [{classes}, {features}], initialized afresh",
                shape.first().copied().unwrap_or(0)
            )
        } else {
            format!("the head is replaced and initialized afresh for {classes} classes")
        };
        report.skipped.push((key.clone(), why));
    }
    let skip = |k: &str| under(k, &head);
    report.loaded = dict.load_into(model, cnn_nn::LoadMode::Strict, &skip)?.loaded;
    replace_head(model, classes, options.seed)?;
    report.head = head;
    Ok(report)
}

/// Sets what trains for `mode` (freezing the rest) and returns the head
/// prefixes for [`crate::TransferConfig::head`].
///
/// # Errors
/// [`Error::Config`] when a prefix of [`TransferMode::Partial`] matches no parameter.
pub fn set_transfer_mode(
    model: &mut dyn Layer<f32>,
    mode: &TransferMode,
    head: &str,
) -> Result<Vec<String>> {
    match mode {
        TransferMode::Finetune => {
            unfreeze(model, "");
        }
        TransferMode::LinearProbe => {
            freeze(model, "");
            unfreeze(model, head);
        }
        TransferMode::Partial(prefixes) => {
            freeze(model, "");
            for p in prefixes {
                if unfreeze(model, p) == 0 {
                    // Name the parts beside the one asked for: the children of its parent.
                    let parent = p.rsplit_once('.').map_or("", |(a, _)| a);
                    let mut parts: Vec<String> = Vec::new();
                    model.visit("", &mut |k, _| {
                        let rest = if parent.is_empty() {
                            Some(k)
                        } else {
                            k.strip_prefix(&format!("{parent}."))
                        };
                        if let Some(rest) = rest {
                            let child = rest.split('.').next().unwrap_or(rest);
                            let part = if parent.is_empty() {
                                child.to_string()
                            } else {
                                format!("{parent}.{child}")
                            };
                            if !parts.contains(&part) {
                                parts.push(part);
                            }
                        }
                    });
                    let at = if parent.is_empty() {
                        String::new()
                    } else {
                        format!(" under {parent:?}")
                    };
                    return Err(Error::config(
                        "transfer",
                        format!(
                            "no parameter is under {p:?}; the parts{at} are {}",
                            parts.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(vec![head.to_string()])
}
