//! A model summary table, as torchinfo prints.

use std::fmt::Write as _;

use cnn_tensor::{join_key, ArrayD, Float, IxDyn, Layer, Mode, Result, Wiring};

use crate::count_params;

/// One row of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// The `state_dict` prefix (`layer1.0`), nesting shown by the dots.
    pub key: String,
    /// The layer type, without its module path (`Conv2d`, `BasicBlock`).
    pub kind: String,
    /// The output shape for the given input; empty (`-` in the table) for a
    /// child of a container whose wiring the summary cannot follow.
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
    walk(model, "", Some(ArrayD::zeros(IxDyn(input_shape))), &mut rows, false)?;
    let (total, trainable) = count_params(model);
    let width = rows.iter().map(|r| r.key.len() + r.kind.len() + 3).max().unwrap_or(10).max(20);
    let mut out = format!("{:<width$} {:>20} {:>12}\n", "Layer (type)", "Output shape", "Param #");
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<width$} {:>20} {:>12}",
            format!("{} ({})", r.key, r.kind),
            if r.output_shape.is_empty() {
                "-".to_string()
            } else {
                format!("{:?}", r.output_shape)
            },
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

/// A Rust type name without its module path and generics (`Conv2d`).
pub(crate) fn short(type_name: &str) -> String {
    let base = type_name.split('<').next().unwrap_or(type_name);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// Adds `layer`'s row under `key` (none for a transparent child, key `""`
/// below the root) and its children's, and returns its output on `x` when
/// it has one: the children of a [`Wiring::Chain`] run on each other's
/// outputs, those of [`Wiring::Branches`] on the container's input, and
/// those of any other container are listed without shapes (its forward
/// alone says what it gives).
fn walk<T: Float>(
    layer: &mut dyn Layer<T>,
    key: &str,
    x: Option<ArrayD<T>>,
    rows: &mut Vec<SummaryRow>,
    transparent: bool,
) -> Result<Option<ArrayD<T>>> {
    let at = (!transparent).then(|| {
        rows.push(SummaryRow {
            key: if key.is_empty() { "(model)".into() } else { key.to_string() },
            kind: short(layer.type_name()),
            output_shape: Vec::new(),
            params: count_params(layer).0,
        });
        rows.len() - 1
    });
    let wiring = layer.wiring();
    let mut chained = x.clone();
    let mut children = layer.children_mut();
    let leaf = children.is_empty();
    for (name, child) in &mut children {
        let input = match wiring {
            Wiring::Chain => chained.take(),
            Wiring::Branches => x.clone(),
            Wiring::Other => None,
        };
        chained = walk(*child, &join_key(key, name), input, rows, name.is_empty())?;
    }
    drop(children);
    let y = match (wiring, x) {
        (Wiring::Chain, Some(_)) if !leaf => chained,
        (_, Some(x)) => Some(layer.forward(x, Mode::Eval)?),
        (_, None) => None,
    };
    if let (Some(at), Some(y)) = (at, &y) {
        rows[at].output_shape = y.shape().to_vec();
    }
    Ok(y)
}
