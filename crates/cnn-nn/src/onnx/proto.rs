//! The messages of the ONNX format that an exported model is made of, as
//! prost messages: the subset of the official `onnx.proto` (IR version 8 and
//! later, proto2) that [`crate::export_onnx`] writes, with its field numbers
//! and types. prost encodes and decodes them; a field left out here is one
//! the exporter never sets (a reader skips unknown fields, so a model read
//! back through these types loses only those).

/// A whole model file: the graph, the operator sets it uses, and metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// The IR version of the format (8 for opset 17's ONNX 1.12).
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    /// The operator sets the graph's nodes come from.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// The tool that wrote the file (`cnn`).
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    /// Its version.
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    /// A reverse-DNS domain for the model; unset.
    #[prost(string, optional, tag = "4")]
    pub domain: Option<String>,
    /// The model's own version.
    #[prost(int64, optional, tag = "5")]
    pub model_version: Option<i64>,
    /// Free text about the model.
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    /// The computation.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Named strings: how inputs are normalized, the class names.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// An operator set and its version (`""` is the default ONNX domain).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// The domain; `""` for ONNX's own operators.
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    /// The opset version (17).
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

/// One key and value of metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// The key.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// The value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// A graph: nodes in topological order, its inputs, outputs and constants.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// The nodes, each after the nodes whose outputs it reads.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// The graph's name.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// Constant tensors (the weights), each named as the value nodes read.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Free text.
    #[prost(string, optional, tag = "10")]
    pub doc_string: Option<String>,
    /// The inputs (`input`).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// The outputs (`logits`).
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types and shapes of values between nodes.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// One operator applied to named values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// The names of the values it reads, in the operator's order.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// The names of the values it makes.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// The node's name (our state-dict key: `layer1.0.conv1`).
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    /// The operator (`Conv`, `Relu`).
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    /// The operator's domain; unset for ONNX's own.
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
    /// The operator's attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Free text.
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
}

/// The type tags of an [`AttributeProto`] (its `type` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    /// Not set.
    Undefined = 0,
    /// One float, in `f`.
    Float = 1,
    /// One integer, in `i`.
    Int = 2,
    /// One string, in `s`.
    String = 3,
    /// One tensor, in `t`.
    Tensor = 4,
    /// A list of floats, in `floats`.
    Floats = 6,
    /// A list of integers, in `ints`.
    Ints = 7,
}

/// A named attribute of a node; `type` says which field holds its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// The attribute's name (`strides`).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Which of the fields below holds the value.
    #[prost(enumeration = "AttributeType", optional, tag = "20")]
    pub r#type: Option<i32>,
    /// A float value.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// An integer value.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// A string value, UTF-8.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    /// A tensor value.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// A list of floats.
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    /// A list of integers.
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
}

/// The element types of [`TensorProto::data_type`] used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// Not set.
    Undefined = 0,
    /// 32-bit IEEE float.
    Float = 1,
    /// 64-bit signed integer.
    Int64 = 7,
}

/// A constant tensor: dims, element type and data (little-endian in `raw_data`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// The shape.
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// The element type ([`DataType`]).
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    /// Float elements, when not in `raw_data`.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// Integer elements, when not in `raw_data`.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// The name nodes read it by (our state-dict key: `fc.weight`).
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    /// The elements as little-endian bytes, row-major.
    #[prost(bytes = "vec", optional, tag = "9")]
    pub raw_data: Option<Vec<u8>>,
    /// Free text.
    #[prost(string, optional, tag = "12")]
    pub doc_string: Option<String>,
}

/// A value's name and type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// The value's name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Its type and shape.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Free text.
    #[prost(string, optional, tag = "3")]
    pub doc_string: Option<String>,
}

/// A value's type: here always a tensor type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// The tensor type (the `value` oneof's `tensor_type`).
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`: an element type and a shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    /// The element type ([`DataType`]).
    #[prost(int32, optional, tag = "1")]
    pub elem_type: Option<i32>,
    /// The shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// A shape: one entry per axis.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// The axes.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One axis: a fixed size or a named, free one (`batch`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// The size.
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

/// The size of a [`Dimension`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    /// A fixed size.
    #[prost(int64, tag = "1")]
    DimValue(i64),
    /// A named size the runtime chooses (`batch`).
    #[prost(string, tag = "2")]
    DimParam(String),
}
