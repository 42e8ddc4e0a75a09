//! ONNX export: an eval-mode network as an ONNX model (opset 17) that
//! ONNX Runtime, OpenVINO, TensorRT or tract run, with our state-dict keys as
//! the names of its nodes and weights.
//!
//! The walk reads the tree through [`Layer::children`] and recognises the
//! layer types of this workspace through [`Layer::as_any`]; a layer it does
//! not know (a user's own) is an error naming its key, and nothing is
//! written. Shapes are propagated as the graph is built, so a model that does
//! not fit the input shape fails here, not in the runtime, and every value
//! carries its shape for viewers such as Netron.
//!
//! The mapping, layer by layer (eval mode):
//!
//! | layer | ONNX |
//! | --- | --- |
//! | `Conv2d` | `Conv` (stride, padding, dilation, groups); a `BatchNorm` after it is folded in by default |
//! | `BatchNorm` | `BatchNormalization` (running statistics) when not folded |
//! | `Act` | `Relu`, `LeakyRelu`, `Sigmoid`, `Tanh`; GELU as `x·½·(1 + Erf(x/√2))` (opset 17 has no `Gelu`), its tanh form likewise |
//! | `MaxPool2d`, `AvgPool2d`, `GlobalAvgPool2d` | `MaxPool`, `AveragePool`, `GlobalAveragePool` |
//! | `AdaptiveAvgPool2d` | `GlobalAveragePool`, `AveragePool` when the input divides evenly, `Tile` from 1×1, `Reshape`, `Tile`, `Reshape` when the output repeats the input |
//! | `Flatten`, `Linear` | `Flatten` (axis 1), `Gemm` (`transB`) |
//! | `LayerNorm2d` | `Transpose` to NHWC, `LayerNormalization` over the last axis, `Transpose` back |
//! | `LayerNorm` | `LayerNormalization` over its trailing axes |
//! | `GroupNorm` | `Reshape` to groups, `InstanceNormalization`, `Reshape` back, `Mul` and `Add` (opset 17 has no `GroupNormalization`) |
//! | `InstanceNorm2d` | `InstanceNormalization`; `BatchNormalization` on its running statistics when it keeps them |
//! | `PixelLinear` | a 1×1 `Conv` |
//! | `Residual` (BasicBlock, Bottleneck) | its branches, `Add`, the activation |
//! | `ConvNeXtBlock` | its layers, `Mul` by γ, `Add` |
//! | `Dropout`, `DropPath`, `Identity` | nothing (the identity in eval mode) |
//!
//! ```
//! use cnn_nn::{onnx_model, Flatten, Linear, LinearConfig, OnnxConfig, Sequential};
//! use cnn_conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d};
//! use cnn_tensor::random;
//!
//! let mut rng = random::seeded_rng(0);
//! let net = Sequential::<f32>::new()
//!     .push_named("conv", Conv2d::new(Conv2dConfig::new(3, 8, 3), &mut rng)?)
//!     .push_named("pool", GlobalAvgPool2d::new())
//!     .push_named("flatten", Flatten::new())
//!     .push_named("fc", Linear::new(LinearConfig::new(8, 10), &mut rng)?);
//! let model = onnx_model(&net, &[1, 3, 32, 32], &OnnxConfig::default())?;
//! let graph = model.graph.as_ref().unwrap();
//! let ops: Vec<_> = graph.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
//! assert_eq!(ops, ["Conv", "GlobalAveragePool", "Flatten", "Gemm"]);
//! assert_eq!(graph.initializer[0].name.as_deref(), Some("conv.weight"));
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod builder;
pub mod proto;
mod walk;

use std::path::Path;

use cnn_tensor::{Error, Float, Layer, Result};
use prost::Message;

use builder::{value_info, Builder, Value};
use proto::{GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto};

/// The ONNX operator set the export targets (17: `LayerNormalization` is native).
pub const ONNX_OPSET: i64 = 17;

/// The ONNX IR version written (8, that of ONNX 1.12, which brought opset 17).
pub const ONNX_IR_VERSION: i64 = 8;

/// The name of the exported graph's input.
pub const ONNX_INPUT: &str = "input";

/// The name of the exported graph's output.
pub const ONNX_OUTPUT: &str = "logits";

/// The settings of an export, with `with_*` builders.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxConfig {
    /// Fold each `BatchNorm` that directly follows a `Conv2d` into the conv's
    /// weight and bias (what PyTorch's exporter does with constant folding):
    /// the conv's weight and bias initializers then hold the folded values
    /// and the BatchNorm's keys are absent. Default `true`.
    pub fold_batch_norm: bool,
    /// Key-value strings stored in the model (`metadata_props`): how inputs
    /// are normalized, the image size, class names. Default none.
    pub metadata: Vec<(String, String)>,
    /// The model's description (`doc_string`). Default none.
    pub doc_string: Option<String>,
}

impl Default for OnnxConfig {
    fn default() -> Self {
        OnnxConfig { fold_batch_norm: true, metadata: Vec::new(), doc_string: None }
    }
}

impl OnnxConfig {
    cnn_tensor::setters! {
        /// Sets [`OnnxConfig::fold_batch_norm`].
        with_fold_batch_norm: fold_batch_norm: bool;
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Sets [`OnnxConfig::doc_string`].
    pub fn with_doc_string(mut self, doc: impl Into<String>) -> Self {
        self.doc_string = Some(doc.into());
        self
    }
}

/// What [`export_onnx`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnnxExport {
    /// Nodes of the graph.
    pub nodes: usize,
    /// Constant tensors (weights and the few constants the mapping needs).
    pub initializers: usize,
    /// Size of the file.
    pub bytes: usize,
}

/// Writes `model` in eval mode as an ONNX file at `path` (atomically: a
/// failed export leaves no file), for inputs of `input_shape`
/// (`[N, C, H, W]`; the batch axis is free in the file), with the default
/// [`OnnxConfig`].
///
/// # Errors
/// As [`onnx_model`], and [`Error::Io`] when the file cannot be written.
pub fn export_onnx<T: Float>(
    model: &dyn Layer<T>,
    input_shape: &[usize],
    path: &Path,
) -> Result<OnnxExport> {
    export_onnx_with(model, input_shape, path, &OnnxConfig::default())
}

/// [`export_onnx`] with settings.
///
/// # Errors
/// As [`export_onnx`].
pub fn export_onnx_with<T: Float>(
    model: &dyn Layer<T>,
    input_shape: &[usize],
    path: &Path,
    config: &OnnxConfig,
) -> Result<OnnxExport> {
    let proto = onnx_model(model, input_shape, config)?;
    let bytes = proto.encode_to_vec();
    cnn_tensor::write_atomic(path, &bytes)?;
    let graph = proto.graph.unwrap_or_default();
    Ok(OnnxExport {
        nodes: graph.node.len(),
        initializers: graph.initializer.len(),
        bytes: bytes.len(),
    })
}

/// Reads an ONNX file back (its graph, weights and metadata).
///
/// # Errors
/// [`Error::Io`] when it cannot be read, [`Error::Format`] when it is not an
/// ONNX model.
pub fn read_onnx(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::format(path.display(), format!("not an ONNX model: {e}")))
}

/// The ONNX model of `model` in eval mode, for inputs of `input_shape`.
///
/// # Errors
/// [`Error::Config`] naming the key of a layer with no ONNX mapping (or
/// settings it cannot express); [`Error::Shape`] when the layers do not fit
/// the input shape.
pub fn onnx_model<T: Float>(
    model: &dyn Layer<T>,
    input_shape: &[usize],
    config: &OnnxConfig,
) -> Result<ModelProto> {
    if input_shape.len() < 2 || input_shape.contains(&0) {
        return Err(Error::shape(
            "export_onnx",
            format!("the input shape needs a batch axis and sizes > 0, got {input_shape:?}"),
        ));
    }
    let mut exporter = walk::Exporter { b: Builder::default(), fold: config.fold_batch_norm };
    exporter.b.reserve(ONNX_INPUT);
    exporter.b.reserve(ONNX_OUTPUT);
    let input = Value { name: ONNX_INPUT.into(), shape: input_shape.to_vec() };
    let out = exporter.layer(model, "", input)?;
    let mut b = exporter.b;
    if !b.rename_last_output(&out.name, ONNX_OUTPUT) {
        b.nodes.push(proto::NodeProto {
            input: vec![out.name.clone()],
            output: vec![ONNX_OUTPUT.into()],
            name: Some(ONNX_OUTPUT.into()),
            op_type: Some("Identity".into()),
            ..Default::default()
        });
    }
    let graph = GraphProto {
        node: b.nodes,
        name: Some("cnn".into()),
        initializer: b.initializers,
        doc_string: None,
        input: vec![value_info(ONNX_INPUT, input_shape)],
        output: vec![value_info(ONNX_OUTPUT, &out.shape)],
        value_info: b.value_info,
    };
    Ok(ModelProto {
        ir_version: Some(ONNX_IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(ONNX_OPSET),
        }],
        producer_name: Some("cnn".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: config.doc_string.clone(),
        graph: Some(graph),
        metadata_props: config
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
            .collect(),
    })
}
