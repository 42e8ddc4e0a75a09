//! Optimizer state in a safetensors file, for exact resume.

use std::collections::HashMap;
use std::path::Path;

use cnn_tensor::{write_atomic, ArrayD, Error, Float, IxDyn, Result};
use safetensors::{Dtype, SafeTensors};

use crate::{Optimizer, ParamState};

impl<T: Float> Optimizer<T> {
    /// Writes every parameter's state atomically: `<key>.step` (int64),
    /// `<key>.first` and `<key>.second` (f64, bit-exact for f32 and f64).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save_state(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.state_bytes(&path.display().to_string())?)
    }

    /// The bytes [`Optimizer::save_state`] writes (a safetensors file), for
    /// sending the state to other processes; `context` names it in errors.
    ///
    /// # Errors
    /// [`Error::Format`] when the state cannot be serialized.
    pub fn state_bytes(&self, context: &str) -> Result<Vec<u8>> {
        let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (key, st) in self.states() {
            entries.push((
                format!("{key}.step"),
                Dtype::I64,
                vec![],
                (st.step as i64).to_le_bytes().to_vec(),
            ));
            for (name, buf) in [("first", &st.first), ("second", &st.second)] {
                if let Some(b) = buf {
                    let bytes = b.iter().flat_map(|v| v.as_f64().to_le_bytes()).collect();
                    entries.push((format!("{key}.{name}"), Dtype::F64, b.shape().to_vec(), bytes));
                }
            }
        }
        let format = |e: safetensors::SafeTensorError| Error::format(context, e.to_string());
        let views = entries
            .iter()
            .map(|(k, dt, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(format)?;
        safetensors::serialize(views, None).map_err(format)
    }

    /// Reads a file written by [`Optimizer::save_state`] and replaces the state.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::Format`] when it is
    /// not a valid state file (truncated, corrupt, unexpected names or dtypes).
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let context = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        self.load_state_bytes(&bytes, &context)
    }

    /// As [`Optimizer::load_state`], from the bytes of such a file; `context` names it in errors.
    ///
    /// # Errors
    /// [`Error::Format`] when the bytes are not a valid state file.
    pub fn load_state_bytes(&mut self, bytes: &[u8], context: &str) -> Result<()> {
        // The safetensors parser runs on a file's bytes: a panic in it is contained.
        cnn_tensor::untrusted::contain_panic(context, "the safetensors parser", || {
            self.load_state_bytes_unguarded(bytes, context)
        })
    }

    fn load_state_bytes_unguarded(&mut self, bytes: &[u8], context: &str) -> Result<()> {
        let bad = |msg: String| Error::format(context, msg);
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let mut state: HashMap<String, ParamState<T>> = HashMap::new();
        for (name, view) in st.tensors() {
            let (key, field) =
                name.rsplit_once('.').ok_or_else(|| bad(format!("unexpected tensor {name}")))?;
            let entry = state.entry(key.to_string()).or_insert(ParamState {
                step: 0,
                first: None,
                second: None,
            });
            let data = view.data();
            match (field, view.dtype()) {
                ("step", Dtype::I64) if data.len() == 8 => {
                    let step = i64::from_le_bytes(
                        data.try_into().map_err(|_| bad(format!("{name}: bad length")))?,
                    );
                    entry.step =
                        u64::try_from(step).map_err(|_| bad(format!("{name}: negative step")))?;
                }
                ("first" | "second", Dtype::F64) => {
                    let values: Vec<T> = data
                        .chunks_exact(8)
                        .map(|b| {
                            T::of(f64::from_le_bytes([
                                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                            ]))
                        })
                        .collect();
                    let a = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
                        .map_err(|e| bad(format!("{name}: {e}")))?;
                    if field == "first" {
                        entry.first = Some(a);
                    } else {
                        entry.second = Some(a);
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unexpected tensor {name} of dtype {:?}",
                        view.dtype()
                    )))
                }
            }
        }
        self.set_states(state);
        Ok(())
    }
}
