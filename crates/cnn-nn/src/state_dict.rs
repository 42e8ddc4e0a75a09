//! `state_dict` files in safetensors, with PyTorch's keys, layouts and dtypes.

use std::fmt;
use std::path::Path;

use cnn_tensor::{write_atomic, ArrayD, Error, Float, IxDyn, Layer, Result};
use safetensors::{Dtype, SafeTensors};

/// The float type parameters are written in (`num_batches_tracked` is always int64, as PyTorch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveDtype {
    /// 4-byte floats (PyTorch's default).
    #[default]
    F32,
    /// 8-byte floats.
    F64,
}

/// What a load found besides the matching tensors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys the model has and the file lacks.
    pub missing: Vec<String>,
    /// Keys the file has and the model lacks.
    pub unexpected: Vec<String>,
    /// `(key, model shape, file shape)` for each shape that differs.
    pub shape_mismatches: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Tensors loaded.
    pub loaded: usize,
    /// `num_batches_tracked` counters the file lacks, left as they were: many
    /// published checkpoints drop them, and PyTorch fills them in on load too.
    pub defaulted: Vec<String>,
}

impl LoadReport {
    /// Whether every key matched in name and shape.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loaded {} tensors", self.loaded)?;
        if !self.missing.is_empty() {
            write!(f, "; missing keys: {}", self.missing.join(", "))?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "; unexpected keys: {}", self.unexpected.join(", "))?;
        }
        for (k, model, file) in &self.shape_mismatches {
            write!(f, "; {k}: model {model:?}, file {file:?}")?;
        }
        if !self.defaulted.is_empty() {
            write!(f, "; {} num_batches_tracked counters absent, kept", self.defaulted.len())?;
        }
        Ok(())
    }
}

fn is_counter(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// Writes every parameter and buffer of `model` under its key, atomically:
/// a temporary file beside `path`, flushed to disk, then renamed over it, so a
/// crash never leaves a half-written file.
///
/// # Errors
/// [`Error::Io`] naming the path when it cannot be written.
pub fn save_state_dict<T: Float>(
    model: &dyn Layer<T>,
    path: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    model.visit("", &mut |key, p| {
        let shape = p.value().shape().to_vec();
        let (dt, bytes): (Dtype, Vec<u8>) = if is_counter(key) {
            (Dtype::I64, p.value().iter().flat_map(|v| (v.as_f64() as i64).to_le_bytes()).collect())
        } else {
            match dtype {
                SaveDtype::F32 => (
                    Dtype::F32,
                    p.value().iter().flat_map(|v| (v.as_f64() as f32).to_le_bytes()).collect(),
                ),
                SaveDtype::F64 => {
                    (Dtype::F64, p.value().iter().flat_map(|v| v.as_f64().to_le_bytes()).collect())
                }
            }
        };
        tensors.push((key.to_string(), dt, shape, bytes));
    });
    let views = tensors
        .iter()
        .map(|(k, dt, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::format(path.display(), e.to_string()))?;
    let data = safetensors::serialize(views, None)
        .map_err(|e| Error::format(path.display(), e.to_string()))?;
    write_atomic(path, &data)
}

/// IEEE binary16 bits to f32 (exact: every f16 is an f32).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exp = u32::from((bits >> 10) & 0x1f);
    let frac = u32::from(bits & 0x3ff);
    let magnitude = match (exp, frac) {
        (0, 0) => 0,
        // Subnormal: frac · 2⁻²⁴, renormalized into an f32 normal.
        (0, _) => {
            let shift = frac.leading_zeros() - 21;
            let frac = (frac << shift) & 0x3ff;
            ((127 - 15 + 1 - shift) << 23) | (frac << 13)
        }
        (0x1f, _) => (0xff << 23) | (frac << 13),
        _ => ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// bfloat16 bits to f32 (exact: bf16 is the top half of an f32).
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// The values of one tensor as f64, converting f16 and bf16 (checkpoints as
/// found in the wild) and integer counters.
fn to_f64(
    view: &safetensors::tensor::TensorView<'_>,
    key: &str,
    context: &str,
) -> Result<Vec<f64>> {
    let bytes = view.data();
    let u16s = || bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        Dtype::F16 => u16s().map(|b| f64::from(f16_to_f32(b))).collect(),
        Dtype::BF16 => u16s().map(|b| f64::from(bf16_to_f32(b))).collect(),
        Dtype::I64 if is_counter(key) => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64)
            .collect(),
        other => {
            return Err(Error::format(context, format!(
                    "{key}: dtype {other:?} is not supported (F32, F64, F16, BF16; I64 for num_batches_tracked)"
                )))
        }
    })
}

/// A `state_dict` read from a safetensors file: tensors by key, as f64, with
/// the dtype each had in the file. Reading it apart from loading it lets a
/// caller fix its keys first ([`StateDict::strip_prefix`],
/// [`StateDict::rename`]) or leave some out ([`StateDict::load_into`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    /// `key → (shape, values)`, in key order.
    pub tensors: std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    /// `key → dtype name in the file` (`F32`, `F16`, `BF16`, …).
    pub dtypes: std::collections::BTreeMap<String, String>,
    /// The file it came from, for messages.
    pub source: String,
}

impl StateDict {
    /// Reads every tensor of a safetensors file.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, [`Error::Format`] when it is
    /// not a valid safetensors file or holds an unsupported dtype.
    pub fn read(path: &Path) -> Result<StateDict> {
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        // The safetensors parser runs on the user's bytes: a panic in it is contained.
        cnn_tensor::untrusted::contain_panic(&source, "the safetensors parser", || {
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| Error::format(&source, e.to_string()))?;
            let mut dict = StateDict { source: source.clone(), ..StateDict::default() };
            for (name, view) in st.tensors() {
                let values = to_f64(&view, &name, &dict.source)?;
                dict.dtypes.insert(name.clone(), format!("{:?}", view.dtype()));
                dict.tensors.insert(name, (view.shape().to_vec(), values));
            }
            Ok(dict)
        })
    }

    /// The dtypes in the file other than F32/F64/I64 with how many tensors
    /// had each (`[("F16", 102)]`): what loading converted.
    pub fn converted_dtypes(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for d in self.dtypes.values().filter(|d| !matches!(d.as_str(), "F32" | "F64" | "I64")) {
            *counts.entry(d.clone()).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// The prefix every key shares up to a dot (`"module."` from DataParallel,
    /// `"model."`, `"backbone."`), if there is one and it is not a key of
    /// `expected` itself: the usual wrapper prefixes of checkpoints in the wild.
    pub fn common_prefix(&self, expected: &[String]) -> Option<String> {
        let first = self.tensors.keys().next()?;
        let (head, _) = first.split_once('.')?;
        let prefix = format!("{head}.");
        let all = self.tensors.keys().all(|k| k.starts_with(&prefix));
        let ours = expected.iter().any(|k| k.starts_with(&prefix));
        (all && !ours).then_some(prefix)
    }

    /// Removes `prefix` from every key that starts with it; returns how many it changed.
    pub fn strip_prefix(&mut self, prefix: &str) -> usize {
        let (hit, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.tensors).into_iter().partition(|(k, _)| k.starts_with(prefix));
        let n = hit.len();
        self.tensors = keep.into_iter().collect();
        for (k, v) in hit {
            let new = k[prefix.len()..].to_string();
            if let Some(d) = self.dtypes.remove(&k) {
                self.dtypes.insert(new.clone(), d);
            }
            self.tensors.insert(new, v);
        }
        n
    }

    /// Renames keys by `(from, to)` pairs: a pair whose `from` ends in `.` (or is
    /// empty) renames that key prefix, any other renames one whole key. Returns
    /// how many keys changed.
    pub fn rename(&mut self, pairs: &[(String, String)]) -> usize {
        let keys: Vec<String> = self.tensors.keys().cloned().collect();
        let mut n = 0;
        for k in keys {
            let new = pairs.iter().find_map(|(from, to)| {
                if from.ends_with('.') {
                    k.strip_prefix(from.as_str()).map(|rest| format!("{to}{rest}"))
                } else {
                    (k == *from).then(|| to.clone())
                }
            });
            if let Some(new) = new.filter(|new| *new != k) {
                if let Some(v) = self.tensors.remove(&k) {
                    self.tensors.insert(new.clone(), v);
                }
                if let Some(d) = self.dtypes.remove(&k) {
                    self.dtypes.insert(new, d);
                }
                n += 1;
            }
        }
        n
    }

    /// Loads the tensors into `model` by key, leaving out the model's keys for
    /// which `skip` is true (and the file's keys under them).
    ///
    /// With [`LoadMode::Strict`], any missing or unexpected key or shape
    /// mismatch among the rest is an error that lists them all, and nothing is
    /// loaded; with [`LoadMode::Lenient`] the matching tensors are loaded and
    /// the report says what did not match.
    ///
    /// # Errors
    /// [`Error::Format`] naming the file and every mismatch, when strict.
    pub fn load_into<T: Float>(
        &self,
        model: &mut dyn Layer<T>,
        mode: LoadMode,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let mut model_keys = std::collections::HashSet::new();
        model.visit_mut("", &mut |key, p| {
            model_keys.insert(key.to_string());
            if skip(key) {
                return;
            }
            match self.tensors.get(key) {
                None if is_counter(key) => report.defaulted.push(key.to_string()),
                None => report.missing.push(key.to_string()),
                Some((shape, _)) if shape.as_slice() != p.value().shape() => {
                    report.shape_mismatches.push((
                        key.to_string(),
                        p.value().shape().to_vec(),
                        shape.clone(),
                    ));
                }
                Some(_) => {}
            }
        });
        report.unexpected =
            self.tensors.keys().filter(|k| !model_keys.contains(*k) && !skip(k)).cloned().collect();
        if mode == LoadMode::Strict && !report.is_exact() {
            // A wrapper prefix on every key (DataParallel's `module.`) would
            // list every key twice; say what to strip instead.
            let ours: Vec<String> = model_keys.iter().cloned().collect();
            if let Some(prefix) = self.common_prefix(&ours) {
                let fits = ours
                    .iter()
                    .filter(|k| !skip(k))
                    .all(|k| self.tensors.contains_key(&format!("{prefix}{k}")));
                if fits {
                    return Err(Error::format(self.source.clone(), format!(
                            "every key starts with {prefix:?} (a wrapper such as DataParallel's); strip it: StateDict::strip_prefix, or cnn finetune --strip-prefix {prefix}"
                        )));
                }
            }
            return Err(Error::format(
                self.source.clone(),
                format!("state dict does not match the model: {report}"),
            ));
        }
        model.visit_mut("", &mut |key, p| {
            if skip(key) {
                return;
            }
            if let Some((shape, values)) = self.tensors.get(key) {
                if shape.as_slice() == p.value().shape() {
                    let values = values.iter().map(|&v| T::of(v)).collect();
                    if let Ok(a) = ArrayD::from_shape_vec(IxDyn(shape), values) {
                        p.set_value(a);
                        report.loaded += 1;
                    }
                }
            }
        });
        Ok(report)
    }
}

/// How a state dict must match the model it loads into (PyTorch's `strict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LoadMode {
    /// Every key and shape must match, or nothing is loaded (`strict=True`).
    #[default]
    Strict,
    /// What matches is loaded; the report lists the rest (`strict=False`).
    Lenient,
}

/// Loads a safetensors `state_dict` (ours, or PyTorch's via
/// `safetensors.torch.save_file`; f16 and bf16 tensors are converted) into
/// `model` by key.
///
/// With [`LoadMode::Strict`] (PyTorch's `strict=True`), any missing or
/// unexpected key or shape mismatch is an error that lists them all, and
/// nothing is loaded; with [`LoadMode::Lenient`] the matching tensors are
/// loaded and the report says what did not match.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Format`] when it is
/// not a valid safetensors file (truncated, corrupt) or holds an unsupported
/// dtype, and, when strict, when the keys or shapes do not match.
pub fn load_state_dict<T: Float>(
    model: &mut dyn Layer<T>,
    path: &Path,
    mode: LoadMode,
) -> Result<LoadReport> {
    StateDict::read(path)?.load_into(model, mode, &|_| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        // 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), 2^-14 (smallest normal), inf.
        let cases = [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0400, 6.103_515_6e-5),
            (0x0200, 3.051_757_8e-5),
            (0x7c00, f32::INFINITY),
            (0x3555, 0.333_251_95),
        ];
        for (bits, want) in cases {
            assert_eq!(f16_to_f32(bits), want, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc049), -3.140_625);
    }
}
