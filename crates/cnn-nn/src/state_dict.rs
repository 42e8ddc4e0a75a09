//! `state_dict` files in safetensors, with PyTorch's keys, layouts and dtypes.

use std::collections::HashMap;
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
    model: &mut dyn Layer<T>,
    path: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    model.visit("", &mut |key, p| {
        let shape = p.value.shape().to_vec();
        let (dt, bytes): (Dtype, Vec<u8>) = if is_counter(key) {
            (Dtype::I64, p.value.iter().flat_map(|v| (v.as_f64() as i64).to_le_bytes()).collect())
        } else {
            match dtype {
                SaveDtype::F32 => (
                    Dtype::F32,
                    p.value.iter().flat_map(|v| (v.as_f64() as f32).to_le_bytes()).collect(),
                ),
                SaveDtype::F64 => {
                    (Dtype::F64, p.value.iter().flat_map(|v| v.as_f64().to_le_bytes()).collect())
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
        .map_err(|e| Error::Format { context: path.display().to_string(), msg: e.to_string() })?;
    let data = safetensors::serialize(views, None)
        .map_err(|e| Error::Format { context: path.display().to_string(), msg: e.to_string() })?;
    write_atomic(path, &data)
}

fn to_floats<T: Float>(
    view: &safetensors::tensor::TensorView<'_>,
    key: &str,
    context: &str,
) -> Result<Vec<T>> {
    let bytes = view.data();
    let bad = |msg: String| Error::Format { context: context.to_string(), msg };
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| T::of(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| T::of(f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])))
            .collect(),
        Dtype::I64 if is_counter(key) => bytes
            .chunks_exact(8)
            .map(|b| {
                T::of(i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64)
            })
            .collect(),
        other => {
            return Err(bad(format!(
                "{key}: dtype {other:?} is not supported (F32, F64; I64 for num_batches_tracked)"
            )))
        }
    })
}

/// Loads a safetensors `state_dict` (ours, or PyTorch's via
/// `safetensors.torch.save_file`) into `model` by key.
///
/// With `strict`, any missing or unexpected key or shape mismatch is an error
/// that lists them all, and nothing is loaded; otherwise the matching tensors
/// are loaded and the report says what did not match.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Format`] when it is
/// not a valid safetensors file (truncated, corrupt) or holds an unsupported
/// dtype, and, when `strict`, when the keys or shapes do not match.
pub fn load_state_dict<T: Float>(
    model: &mut dyn Layer<T>,
    path: &Path,
    strict: bool,
) -> Result<LoadReport> {
    let context = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io { context: format!("read {context}"), source: e })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Format { context: context.clone(), msg: e.to_string() })?;
    let mut file: HashMap<String, (Vec<usize>, Vec<T>)> = HashMap::new();
    for (name, view) in st.tensors() {
        let values = to_floats::<T>(&view, &name, &context)?;
        file.insert(name, (view.shape().to_vec(), values));
    }
    let mut report = LoadReport::default();
    let mut model_keys = Vec::new();
    model.visit("", &mut |key, p| {
        model_keys.push(key.to_string());
        match file.get(key) {
            None => report.missing.push(key.to_string()),
            Some((shape, _)) if shape.as_slice() != p.value.shape() => {
                report.shape_mismatches.push((
                    key.to_string(),
                    p.value.shape().to_vec(),
                    shape.clone(),
                ));
            }
            Some(_) => {}
        }
    });
    report.unexpected = file.keys().filter(|k| !model_keys.contains(k)).cloned().collect();
    report.unexpected.sort();
    if strict && !report.is_exact() {
        return Err(Error::Format {
            context,
            msg: format!("state dict does not match the model: {report}"),
        });
    }
    model.visit("", &mut |key, p| {
        if let Some((shape, values)) = file.get(key) {
            if shape.as_slice() == p.value.shape() {
                if let Ok(a) = ArrayD::from_shape_vec(IxDyn(shape), values.clone()) {
                    p.value = a;
                    report.loaded += 1;
                }
            }
        }
    });
    Ok(report)
}
