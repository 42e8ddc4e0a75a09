//! Builds an ONNX graph node by node: unique value names, attributes,
//! constant tensors, and the shape of every value (the batch axis named
//! `batch`, free).

use std::collections::HashSet;

use super::proto::{
    AttributeProto, AttributeType, DataType, Dimension, DimensionValue, NodeProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};

/// The name of the free batch axis of every value.
pub(crate) const BATCH: &str = "batch";

/// A value of the graph: its name and shape (axis 0 is the free batch axis;
/// the size kept there is the one exported with, for checks only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Value {
    pub name: String,
    pub shape: Vec<usize>,
}

/// A graph in the making.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub value_info: Vec<ValueInfoProto>,
    names: HashSet<String>,
}

impl Builder {
    /// `base`, or `base_1`, `base_2`, … when a value or constant has it already.
    pub fn unique(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "value" } else { base };
        let mut name = base.to_string();
        let mut i = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Reserves a name given from outside (the graph's input).
    pub fn reserve(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    /// Appends a node `op(inputs)` named `name` (made unique) whose one
    /// output, named as the node, has `shape`.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        shape: Vec<usize>,
    ) -> Value {
        let name = self.unique(name);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            name: Some(name.clone()),
            op_type: Some(op.to_string()),
            attribute: attributes,
            ..Default::default()
        });
        self.value_info.push(value_info(&name, &shape));
        Value { name, shape }
    }

    /// Adds an f32 constant named `name` (made unique) and returns its name.
    pub fn constant(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let name = self.unique(name);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.clone()),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// Adds an int64 constant (a shape for `Reshape`) and returns its name.
    pub fn constant_i64(&mut self, name: &str, data: &[i64]) -> String {
        let name = self.unique(name);
        self.initializers.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.clone()),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// Renames the last node's output to `name` (the graph's `logits`).
    pub fn rename_last_output(&mut self, from: &str, to: &str) -> bool {
        let Some(node) = self.nodes.last_mut() else { return false };
        if node.output.first().map(String::as_str) != Some(from) {
            return false;
        }
        node.output[0] = to.to_string();
        self.value_info.retain(|v| v.name.as_deref() != Some(from));
        true
    }
}

/// The type of an f32 tensor value of `shape`, axis 0 free (`batch`).
pub(crate) fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| Dimension {
            value: Some(if i == 0 {
                DimensionValue::DimParam(BATCH.to_string())
            } else {
                DimensionValue::DimValue(d as i64)
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: None,
    }
}

/// An integer attribute.
pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

/// A float attribute.
pub(crate) fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

/// A list-of-integers attribute.
pub(crate) fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}
