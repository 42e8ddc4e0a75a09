//! ONNX export's errors and walk, without a runtime (tract runs the files in
//! cnn-models' tests): a layer with no mapping is named and nothing is
//! written; a user's chaining container is walked through its children.
#![allow(clippy::unwrap_used)]

use cnn_act::Act;
use cnn_conv::{Conv2d, Conv2dConfig};
use cnn_nn::{export_onnx, onnx_model, Flatten, OnnxConfig, Sequential};
use cnn_tensor::{random, ArrayD, Layer, Mode, Param, Result, Wiring};

/// A user's own layer: squares its input. Export cannot know it.
struct Square;

impl Layer<f32> for Square {
    fn forward(&mut self, x: ArrayD<f32>, _: Mode) -> Result<ArrayD<f32>> {
        Ok(x.mapv(|v| v * v))
    }
    fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        Ok(dy)
    }
    fn visit(&self, _: &str, _: &mut dyn FnMut(&str, &Param<f32>)) {}
    fn visit_mut(&mut self, _: &str, _: &mut dyn FnMut(&str, &mut Param<f32>)) {}
}

/// A user's container that chains two layers and says so.
struct Pair {
    first: Conv2d<f32>,
    second: Act<f32>,
}

impl Layer<f32> for Pair {
    fn forward(&mut self, x: ArrayD<f32>, mode: Mode) -> Result<ArrayD<f32>> {
        let h = self.first.forward(x, mode)?;
        self.second.forward(h, mode)
    }
    fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let d = self.second.backward(dy)?;
        self.first.backward(d)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<f32>)) {
        self.first.visit(&cnn_tensor::join_key(prefix, "first"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<f32>)) {
        self.first.visit_mut(&cnn_tensor::join_key(prefix, "first"), f);
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<f32>)> {
        vec![("first".into(), &mut self.first), ("second".into(), &mut self.second)]
    }
    fn children(&self) -> Vec<(String, &dyn Layer<f32>)> {
        vec![("first".into(), &self.first), ("second".into(), &self.second)]
    }
    fn wiring(&self) -> Wiring {
        Wiring::Chain
    }
}

fn conv(c_in: usize, c_out: usize) -> Conv2d<f32> {
    Conv2d::new(Conv2dConfig::new(c_in, c_out, 3).with_padding(1), &mut random::seeded_rng(0))
        .unwrap()
}

#[test]
fn a_layer_without_a_mapping_is_named_and_no_file_is_left() {
    let net = Sequential::<f32>::new()
        .push_named("stem", conv(3, 4))
        .push_named("head", Sequential::new().push_named("square", Square));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let err = export_onnx(&net, &[1, 3, 8, 8], &path).unwrap_err().to_string();
    assert!(err.contains("head.square: Square has no ONNX mapping"), "{err}");
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file left");
}

#[test]
fn a_users_chaining_container_is_walked_through_its_children() {
    let net = Sequential::<f32>::new()
        .push_named("pair", Pair { first: conv(3, 4), second: Act::relu() })
        .push_named("flatten", Flatten::new());
    let model = onnx_model(&net, &[2, 3, 8, 8], &OnnxConfig::default()).unwrap();
    let graph = model.graph.unwrap();
    let nodes: Vec<(String, String)> =
        graph.node.iter().map(|n| (n.name.clone().unwrap(), n.op_type.clone().unwrap())).collect();
    let expected = [("pair.first", "Conv"), ("pair.second", "Relu"), ("flatten", "Flatten")];
    assert_eq!(nodes, expected.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(graph.node[2].output, ["logits"]);
}

#[test]
fn bad_input_shapes_are_errors() {
    let net = Sequential::<f32>::new().push_named("conv", conv(3, 4));
    for shape in [&[3usize][..], &[1, 3, 0, 8], &[1, 3, 8]] {
        let err = onnx_model(&net, shape, &OnnxConfig::default()).unwrap_err().to_string();
        assert!(err.contains("export_onnx"), "{shape:?}: {err}");
    }
}
