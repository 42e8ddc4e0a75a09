//! A model summary table, as torchinfo prints.

use std::fmt::Write as _;

use cnn_tensor::{join_key, ArrayD, Float, IxDyn, Layer, Mode, Result};

use crate::count_params;

/// One row of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// The `state_dict` prefix (`layer1.0`), nesting shown by the dots.
    pub key: String,
    /// The layer type, without its module path (`Conv2d`, `BasicBlock`).
    pub kind: String,
    /// The output shape for the given input.
    pub output_shape: Vec<usize>,
    /// Parameters of this layer and its children (buffers excluded).
    pub params: usize,
}

/// Runs `model` in eval mode on zeros of `input_shape` and lists every layer
/// (containers and their children) with its output shape and parameter count,
/// then the totals. Returns the rows and the table as text.
///
/// # Errors
/// Whatever the model's forward returns for that input.
pub fn summary<T: Float>(
    model: &mut dyn Layer<T>,
    input_shape: &[usize],
) -> Result<(Vec<SummaryRow>, String)> {
    let mut rows = Vec::new();
    walk(model, "", ArrayD::zeros(IxDyn(input_shape)), &mut rows)?;
    let (total, trainable) = count_params(model);
    let width = rows.iter().map(|r| r.key.len() + r.kind.len() + 3).max().unwrap_or(10).max(20);
    let mut out = format!("{:<width$} {:>20} {:>12}\n", "Layer (type)", "Output shape", "Param #");
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<width$} {:>20} {:>12}",
            format!("{} ({})", r.key, r.kind),
            format!("{:?}", r.output_shape),
            r.params
        );
    }
    let _ = write!(
        out,
        "Total params: {total}\nTrainable params: {trainable}\nNon-trainable params: {}\n",
        total - trainable
    );
    Ok((rows, out))
}

fn short(type_name: &str) -> String {
    let base = type_name.split('<').next().unwrap_or(type_name);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

fn walk<T: Float>(
    layer: &mut dyn Layer<T>,
    key: &str,
    x: ArrayD<T>,
    rows: &mut Vec<SummaryRow>,
) -> Result<ArrayD<T>> {
    let kind = short(layer.type_name());
    let params = count_params(layer).0;
    let at = rows.len();
    rows.push(SummaryRow {
        key: if key.is_empty() { "(model)".into() } else { key.to_string() },
        kind,
        output_shape: Vec::new(),
        params,
    });
    let children = layer.children_mut();
    let y = if children.is_empty() {
        layer.forward(x, Mode::Eval)?
    } else {
        let mut y = x;
        for (name, child) in children {
            y = walk(child, &join_key(key, &name), y, rows)?;
        }
        y
    };
    rows[at].output_shape = y.shape().to_vec();
    Ok(y)
}
