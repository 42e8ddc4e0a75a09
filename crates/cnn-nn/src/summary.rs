//! A model summary table, as torchinfo prints.

use std::fmt::Write as _;

use cnn_tensor::{join_key, ArrayD, Float, IxDyn, Layer, Mode, Result};

use crate::{count_params, Residual, Shortcut};

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
/// (containers and their children, residual blocks' branches included) with
/// its output shape and parameter count, then the totals. Returns the rows and
/// the table as text. It takes `&mut` because output shapes come from running
/// the model, as torchinfo's do; [`crate::count_params`] and
/// [`crate::save_state_dict`] only read it.
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

/// The children of a container that applies them in order, each walked on
/// the previous one's output.
fn walk_chain<T: Float>(
    layer: &mut dyn Layer<T>,
    key: &str,
    x: ArrayD<T>,
    rows: &mut Vec<SummaryRow>,
) -> Result<ArrayD<T>> {
    let mut y = x;
    for (name, child) in layer.children_mut() {
        y = walk(child, &join_key(key, &name), y, rows)?;
    }
    Ok(y)
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
    let y = if let Some(block) = layer.as_any_mut().and_then(|a| a.downcast_mut::<Residual<T>>()) {
        // Both branches from the block's input, their rows under the block;
        // the block's own output from its forward.
        walk_chain(&mut block.main, key, x.clone(), rows)?;
        if let Shortcut::Projection(ds) = &mut block.shortcut {
            walk(ds, &join_key(key, "downsample"), x.clone(), rows)?;
        }
        layer.forward(x, Mode::Eval)?
    } else if layer.children_mut().is_empty() {
        layer.forward(x, Mode::Eval)?
    } else {
        walk_chain(layer, key, x, rows)?
    };
    rows[at].output_shape = y.shape().to_vec();
    Ok(y)
}
