//! The walk of [`super::onnx_model`]: one method per layer type, each
//! adding its nodes and returning the value it makes, shapes checked.

use std::collections::HashMap;

use cnn_act::{Act, Activation, DropPath, Dropout};
use cnn_conv::{
    pool_out_len, AdaptiveAvgPool2d, AvgPool2d, Conv2d, ConvGeometry, GlobalAvgPool2d, MaxPool2d,
    Pool2dOptions,
};
use cnn_norm::{BatchNorm, GroupNorm, InstanceNorm2d, LayerNorm, LayerNorm2d};
use cnn_tensor::{join_key, Error, Float, Layer, Result, Wiring};

use super::builder::{float, int, ints, Builder, Value};
use crate::{
    ConvNeXtBlock, Flatten, Identity, Linear, PixelLinear, Residual, Sequential, Shortcut,
};

/// The parameters and buffers of one layer, by local key, as f32.
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn tensors<T: Float>(layer: &dyn Layer<T>) -> Tensors {
    let mut out = HashMap::new();
    layer.visit("", &mut |key, p| {
        let v = p.value();
        out.insert(
            key.to_string(),
            (v.shape().to_vec(), v.iter().map(|x| x.to_f32().unwrap_or(f32::NAN)).collect()),
        );
    });
    out
}

/// The node name for a layer at `key`: the key, or the operator at the root.
fn at(key: &str, op: &str) -> String {
    if key.is_empty() {
        op.to_lowercase()
    } else {
        key.to_string()
    }
}

/// `key` for messages, `(the model)` at the root.
fn shown(key: &str) -> &str {
    if key.is_empty() {
        "(the model)"
    } else {
        key
    }
}

fn shape_err(key: &str, msg: impl std::fmt::Display) -> Error {
    Error::shape("export_onnx", format!("{}: {msg}", shown(key)))
}

fn config_err(key: &str, msg: impl std::fmt::Display) -> Error {
    Error::config("export_onnx", format!("{}: {msg}", shown(key)))
}

fn rank4(key: &str, x: &Value, what: &str) -> Result<[usize; 4]> {
    match x.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(shape_err(key, format!("{what} takes [N, C, H, W], got {:?}", x.shape))),
    }
}

/// The walk: one method per layer type, each adding its nodes and returning
/// the value it makes.
pub(super) struct Exporter {
    pub(super) b: Builder,
    pub(super) fold: bool,
}

impl Exporter {
    pub(super) fn layer<T: Float>(
        &mut self,
        layer: &dyn Layer<T>,
        key: &str,
        x: Value,
    ) -> Result<Value> {
        if let Some(any) = layer.as_any() {
            if let Some(seq) = any.downcast_ref::<Sequential<T>>() {
                return self.chain(seq.children(), key, x);
            }
            if let Some(block) = any.downcast_ref::<Residual<T>>() {
                return self.residual(block, key, x);
            }
            if let Some(block) = any.downcast_ref::<ConvNeXtBlock<T>>() {
                return self.convnext_block(block, key, x);
            }
            if let Some(conv) = any.downcast_ref::<Conv2d<T>>() {
                return self.conv(conv, key, x, None);
            }
            if let Some(bn) = any.downcast_ref::<BatchNorm<T>>() {
                return self.batch_norm(bn, key, x);
            }
            if let Some(act) = any.downcast_ref::<Act<T>>() {
                return self.activation(act.activation, &at(key, "act"), x);
            }
            if let Some(pool) = any.downcast_ref::<MaxPool2d>() {
                return self.pool("MaxPool", &pool.options, key, x);
            }
            if let Some(pool) = any.downcast_ref::<AvgPool2d>() {
                return self.pool("AveragePool", &pool.options, key, x);
            }
            if any.is::<GlobalAvgPool2d>() {
                let [n, c, _, _] = rank4(key, &x, "GlobalAvgPool2d")?;
                let name = at(key, "GlobalAveragePool");
                return Ok(self.b.node(
                    "GlobalAveragePool",
                    &name,
                    &[&x.name],
                    vec![],
                    vec![n, c, 1, 1],
                ));
            }
            if let Some(pool) = any.downcast_ref::<AdaptiveAvgPool2d>() {
                return self.adaptive_pool(pool.output_size(), key, x);
            }
            if any.is::<Flatten>() {
                if x.shape.len() < 2 {
                    return Err(shape_err(key, "Flatten needs a batch axis and one more"));
                }
                let shape = vec![x.shape[0], x.shape[1..].iter().product()];
                let name = at(key, "Flatten");
                return Ok(self.b.node("Flatten", &name, &[&x.name], vec![int("axis", 1)], shape));
            }
            if let Some(linear) = any.downcast_ref::<Linear<T>>() {
                return self.linear(linear, key, x);
            }
            if let Some(norm) = any.downcast_ref::<LayerNorm2d<T>>() {
                return self.layer_norm2d(norm, key, x);
            }
            if let Some(norm) = any.downcast_ref::<LayerNorm<T>>() {
                return self.layer_norm(norm, key, x);
            }
            if let Some(norm) = any.downcast_ref::<GroupNorm<T>>() {
                return self.group_norm(norm, key, x);
            }
            if let Some(norm) = any.downcast_ref::<InstanceNorm2d<T>>() {
                return self.instance_norm(norm, key, x);
            }
            if let Some(linear) = any.downcast_ref::<PixelLinear<T>>() {
                return self.pixel_linear(linear, key, x);
            }
            if any.is::<Dropout>() || any.is::<DropPath>() || any.is::<Identity>() {
                return Ok(x);
            }
        }
        let children = layer.children();
        if layer.wiring() == Wiring::Chain && !children.is_empty() {
            return self.chain(children, key, x);
        }
        Err(config_err(
            key,
            format!(
                "{} has no ONNX mapping (export knows this workspace's layers and containers that chain their children)",
                crate::summary::short(layer.type_name())
            ),
        ))
    }

    /// Children in order; a `Conv2d` then a `BatchNorm` become one folded conv.
    fn chain<T: Float>(
        &mut self,
        children: Vec<(String, &dyn Layer<T>)>,
        prefix: &str,
        mut x: Value,
    ) -> Result<Value> {
        let mut i = 0;
        while i < children.len() {
            let (name, child) = &children[i];
            let key = join_key(prefix, name);
            let conv = child.as_any().and_then(|a| a.downcast_ref::<Conv2d<T>>());
            let next_bn = children.get(i + 1).and_then(|(n, l)| {
                let bn = l.as_any().and_then(|a| a.downcast_ref::<BatchNorm<T>>())?;
                Some((join_key(prefix, n), bn))
            });
            if let (true, Some(conv), Some((bn_key, bn))) = (self.fold, conv, next_bn) {
                // What fused inference folds: a BatchNorm2d with running statistics.
                if bn.is_2d() && bn.eval_scale_shift().is_some() {
                    x = self.conv(conv, &key, x, Some((bn, &bn_key)))?;
                    i += 2;
                    continue;
                }
            }
            x = self.layer(*child, &key, x)?;
            i += 1;
        }
        Ok(x)
    }

    fn conv<T: Float>(
        &mut self,
        conv: &Conv2d<T>,
        key: &str,
        x: Value,
        bn: Option<(&BatchNorm<T>, &str)>,
    ) -> Result<Value> {
        let [_, c, _, _] = rank4(key, &x, "Conv2d")?;
        let p = tensors(conv);
        let (wshape, mut weight) = p.get("weight").cloned().unwrap_or_default();
        let o = conv.options;
        let per_group = wshape.get(1).copied().unwrap_or(0);
        if per_group * o.groups != c {
            return Err(shape_err(
                key,
                format!(
                    "expects {} input channels ({} groups), got {c}",
                    per_group * o.groups,
                    o.groups
                ),
            ));
        }
        // The conv's own checks and output size.
        let g = ConvGeometry::new(&x.shape, &wshape, &o).map_err(|e| shape_err(key, e))?;
        let (out_c, [kh, kw]) = (g.c_out, [g.kh, g.kw]);
        let mut bias = p.get("bias").map(|(_, b)| b.clone());
        let mut doc = None;
        if let Some((bn, bn_key)) = bn {
            // The map fused inference folds (`y = x·scale + shift`), in f64 here.
            let Some((scale, shift)) = bn.eval_scale_shift() else {
                return Err(config_err(bn_key, "no running statistics to fold"));
            };
            if scale.len() != out_c {
                return Err(shape_err(
                    bn_key,
                    format!("BatchNorm of {} channels after a conv of {out_c}", scale.len()),
                ));
            }
            let f = |v: T| v.to_f64().unwrap_or(f64::NAN);
            let per_out = weight.len() / out_c;
            for (oc, row) in weight.chunks_exact_mut(per_out).enumerate() {
                row.iter_mut().for_each(|v| *v = (f64::from(*v) * f(scale[oc])) as f32);
            }
            let b = bias.unwrap_or_else(|| vec![0.0; out_c]);
            bias = Some(
                (0..out_c)
                    .map(|oc| (f64::from(b[oc]) * f(scale[oc]) + f(shift[oc])) as f32)
                    .collect(),
            );
            doc = Some(format!("{key} with {bn_key} folded in"));
        }
        let wname = self.b.constant(&format!("{key}.weight"), &wshape, &weight);
        let mut inputs = vec![x.name.clone(), wname];
        if let Some(b) = bias {
            inputs.push(self.b.constant(&format!("{key}.bias"), &[out_c], &b));
        }
        let attrs = vec![
            ints("kernel_shape", &[kh, kw]),
            ints("strides", &o.stride),
            ints("pads", &[o.padding[0], o.padding[1], o.padding[0], o.padding[1]]),
            ints("dilations", &o.dilation),
            int("group", o.groups as i64),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.b.node("Conv", &at(key, "Conv"), &inputs, attrs, vec![g.n, out_c, g.ho, g.wo]);
        if let Some(node) = self.b.nodes.last_mut() {
            node.doc_string = doc;
        }
        Ok(y)
    }

    fn batch_norm<T: Float>(&mut self, bn: &BatchNorm<T>, key: &str, x: Value) -> Result<Value> {
        let c = bn.config.num_features;
        if x.shape.len() < 2 || x.shape[1] != c {
            return Err(shape_err(key, format!("BatchNorm of {c} channels got {:?}", x.shape)));
        }
        let p = tensors(bn);
        let (Some((_, mean)), Some((_, var))) = (p.get("running_mean"), p.get("running_var"))
        else {
            return Err(config_err(
                key,
                "a BatchNorm without running statistics normalizes with the batch's in eval mode; ONNX's BatchNormalization needs them",
            ));
        };
        let ones = vec![1.0; c];
        let zeros = vec![0.0; c];
        let gamma = p.get("weight").map_or(&ones, |(_, v)| v);
        let beta = p.get("bias").map_or(&zeros, |(_, v)| v);
        let names = [
            self.b.constant(&format!("{key}.weight"), &[c], gamma),
            self.b.constant(&format!("{key}.bias"), &[c], beta),
            self.b.constant(&format!("{key}.running_mean"), &[c], mean),
            self.b.constant(&format!("{key}.running_var"), &[c], var),
        ];
        let attrs = vec![float("epsilon", bn.config.eps as f32)];
        let shape = x.shape.clone();
        let inputs = [x.name.as_str(), &names[0], &names[1], &names[2], &names[3]];
        Ok(self.b.node("BatchNormalization", &at(key, "BatchNormalization"), &inputs, attrs, shape))
    }

    fn activation(&mut self, act: Activation, name: &str, x: Value) -> Result<Value> {
        let shape = x.shape.clone();
        let simple = |op| (op, vec![]);
        let (op, attrs) = match act {
            Activation::Relu => simple("Relu"),
            Activation::Sigmoid => simple("Sigmoid"),
            Activation::Tanh => simple("Tanh"),
            Activation::LeakyRelu(a) => ("LeakyRelu", vec![float("alpha", a as f32)]),
            Activation::Gelu => return Ok(self.gelu_erf(name, x)),
            Activation::GeluTanh => return Ok(self.gelu_tanh(name, x)),
        };
        Ok(self.b.node(op, name, &[&x.name], attrs, shape))
    }

    /// `x · ½ · (1 + erf(x / √2))`, PyTorch's exporter's decomposition below opset 20.
    fn gelu_erf(&mut self, name: &str, x: Value) -> Value {
        let s = x.shape.clone();
        let sqrt2 = self.b.constant(&format!("{name}/sqrt2"), &[], &[std::f32::consts::SQRT_2]);
        let one = self.b.constant(&format!("{name}/one"), &[], &[1.0]);
        let half = self.b.constant(&format!("{name}/half"), &[], &[0.5]);
        let d = self.b.node("Div", &format!("{name}/div"), &[&x.name, &sqrt2], vec![], s.clone());
        let e = self.b.node("Erf", &format!("{name}/erf"), &[&d.name], vec![], s.clone());
        let a = self.b.node("Add", &format!("{name}/add"), &[&e.name, &one], vec![], s.clone());
        let m = self.b.node("Mul", &format!("{name}/mul"), &[&x.name, &a.name], vec![], s.clone());
        self.b.node("Mul", name, &[&m.name, &half], vec![], s)
    }

    /// `½x · (1 + tanh(√(2/π) · (x + 0.044715·x³)))`.
    fn gelu_tanh(&mut self, name: &str, x: Value) -> Value {
        let s = x.shape.clone();
        let c = self.b.constant(&format!("{name}/c"), &[], &[0.044715]);
        let k = self.b.constant(
            &format!("{name}/k"),
            &[],
            &[(2.0 / std::f64::consts::PI).sqrt() as f32],
        );
        let one = self.b.constant(&format!("{name}/one"), &[], &[1.0]);
        let half = self.b.constant(&format!("{name}/half"), &[], &[0.5]);
        let node = |b: &mut Builder, op: &str, suffix: &str, inputs: &[&str]| {
            b.node(op, &format!("{name}/{suffix}"), inputs, vec![], s.clone())
        };
        let x2 = node(&mut self.b, "Mul", "x2", &[&x.name, &x.name]);
        let x3 = node(&mut self.b, "Mul", "x3", &[&x2.name, &x.name]);
        let cx3 = node(&mut self.b, "Mul", "cx3", &[&x3.name, &c]);
        let inner = node(&mut self.b, "Add", "inner", &[&x.name, &cx3.name]);
        let scaled = node(&mut self.b, "Mul", "scaled", &[&inner.name, &k]);
        let t = node(&mut self.b, "Tanh", "tanh", &[&scaled.name]);
        let t1 = node(&mut self.b, "Add", "add", &[&t.name, &one]);
        let hx = node(&mut self.b, "Mul", "half_x", &[&x.name, &half]);
        self.b.node("Mul", name, &[&hx.name, &t1.name], vec![], s.clone())
    }

    fn pool(&mut self, op: &str, o: &Pool2dOptions, key: &str, x: Value) -> Result<Value> {
        let [n, c, h, w] = rank4(key, &x, op)?;
        let [kh, kw] = o.kernel_size;
        let [sh, sw] = o.stride;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return Err(config_err(key, format!("{op} with a zero kernel or stride: {o:?}")));
        }
        let (Some(oh), Some(ow)) = (
            pool_out_len(h, kh, sh, o.padding[0], o.ceil_mode),
            pool_out_len(w, kw, sw, o.padding[1], o.ceil_mode),
        ) else {
            return Err(shape_err(
                key,
                format!("the {kh}×{kw} window does not fit an input of {h}×{w}"),
            ));
        };
        let mut attrs = vec![
            ints("kernel_shape", &o.kernel_size),
            ints("strides", &o.stride),
            ints("pads", &[o.padding[0], o.padding[1], o.padding[0], o.padding[1]]),
        ];
        if o.ceil_mode {
            attrs.push(int("ceil_mode", 1));
        }
        if op == "AveragePool" {
            attrs.push(int("count_include_pad", i64::from(o.count_include_pad)));
        }
        Ok(self.b.node(op, &at(key, op), &[&x.name], attrs, vec![n, c, oh, ow]))
    }

    /// PyTorch's adaptive average pool where ONNX can say it: one window
    /// (`GlobalAveragePool`), equal windows (`AveragePool`), or each input
    /// pixel repeated (`Reshape`, `Tile`, `Reshape`: the output size a
    /// multiple of the input's, as VGG's 7×7 pool after a 1×1 map).
    fn adaptive_pool(&mut self, out: [usize; 2], key: &str, x: Value) -> Result<Value> {
        let [n, c, h, w] = rank4(key, &x, "AdaptiveAvgPool2d")?;
        let [oh, ow] = out;
        if oh == 0 || ow == 0 {
            return Err(config_err(key, "an adaptive pool to a zero size"));
        }
        let name = at(key, "AveragePool");
        if [oh, ow] == [1, 1] {
            return Ok(self.b.node(
                "GlobalAveragePool",
                &name,
                &[&x.name],
                vec![],
                vec![n, c, 1, 1],
            ));
        }
        if h % oh == 0 && w % ow == 0 {
            let k = [h / oh, w / ow];
            let attrs = vec![ints("kernel_shape", &k), ints("strides", &k), ints("pads", &[0; 4])];
            return Ok(self.b.node("AveragePool", &name, &[&x.name], attrs, vec![n, c, oh, ow]));
        }
        if [h, w] == [1, 1] {
            // One pixel to many (VGG's 7×7 pool after a 1×1 map). `Tile`, not
            // `Expand`: tract 0.22's optimizer fails on a broadcast that a
            // Flatten feeds into a Gemm, and the copy costs nothing here.
            let reps =
                self.b.constant_i64(&format!("{name}/repeats"), &[1, 1, oh as i64, ow as i64]);
            let attrs = vec![];
            return Ok(self.b.node("Tile", &name, &[&x.name, &reps], attrs, vec![n, c, oh, ow]));
        }
        if oh % h == 0 && ow % w == 0 {
            let (rh, rw) = (oh / h, ow / w);
            let split = self
                .b
                .constant_i64(&format!("{name}/split_shape"), &[0, 0, h as i64, 1, w as i64, 1]);
            let spread = [1, 1, 1, rh, 1, rw].map(|v| v as i64);
            let spread = self.b.constant_i64(&format!("{name}/repeats"), &spread);
            let merged =
                self.b.constant_i64(&format!("{name}/out_shape"), &[0, 0, oh as i64, ow as i64]);
            let s = self.b.node(
                "Reshape",
                &format!("{name}/split"),
                &[&x.name, &split],
                vec![],
                vec![n, c, h, 1, w, 1],
            );
            let e = self.b.node(
                "Tile",
                &format!("{name}/repeat"),
                &[&s.name, &spread],
                vec![],
                vec![n, c, h, rh, w, rw],
            );
            return Ok(self.b.node(
                "Reshape",
                &name,
                &[&e.name, &merged],
                vec![],
                vec![n, c, oh, ow],
            ));
        }
        Err(config_err(
            key,
            format!(
                "an adaptive pool from {h}×{w} to {oh}×{ow} has windows of unequal sizes, which no ONNX operator computes; export at an input size where one divides the other"
            ),
        ))
    }

    fn linear<T: Float>(&mut self, linear: &Linear<T>, key: &str, x: Value) -> Result<Value> {
        let p = tensors(linear);
        let (wshape, weight) = p.get("weight").cloned().unwrap_or_default();
        let [out, inp] = wshape[..] else {
            return Err(shape_err(key, format!("the weight is {wshape:?}, not [out, in]")));
        };
        if x.shape.len() != 2 || x.shape[1] != inp {
            return Err(shape_err(
                key,
                format!("Linear({inp} → {out}) exports on [N, {inp}] inputs, got {:?}", x.shape),
            ));
        }
        let wname = self.b.constant(&format!("{key}.weight"), &wshape, &weight);
        let mut inputs = vec![x.name.clone(), wname];
        if let Some((_, b)) = p.get("bias") {
            inputs.push(self.b.constant(&format!("{key}.bias"), &[out], b));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = vec![int("transB", 1)];
        Ok(self.b.node("Gemm", &at(key, "Gemm"), &inputs, attrs, vec![x.shape[0], out]))
    }

    /// NCHW → NHWC, `LayerNormalization` over C, back: one native normalization
    /// (fused by runtimes) rather than the nine nodes of its decomposition over axis 1.
    fn layer_norm2d<T: Float>(
        &mut self,
        norm: &LayerNorm2d<T>,
        key: &str,
        x: Value,
    ) -> Result<Value> {
        let [n, c, h, w] = rank4(key, &x, "LayerNorm2d")?;
        let p = tensors(norm);
        let (Some((gs, g)), Some((_, beta))) = (p.get("weight"), p.get("bias")) else {
            return Err(config_err(key, "LayerNorm2d without weight and bias"));
        };
        if gs[..] != [c] {
            return Err(shape_err(key, format!("LayerNorm2d of {:?} channels got {c}", gs)));
        }
        let name = at(key, "LayerNormalization");
        let g = self.b.constant(&format!("{key}.weight"), &[c], g);
        let beta = self.b.constant(&format!("{key}.bias"), &[c], beta);
        let t = self.b.node(
            "Transpose",
            &format!("{name}/to_nhwc"),
            &[&x.name],
            vec![ints("perm", &[0, 2, 3, 1])],
            vec![n, h, w, c],
        );
        let attrs = vec![int("axis", -1), float("epsilon", norm.eps() as f32)];
        let y = self.b.node(
            "LayerNormalization",
            &name,
            &[&t.name, &g, &beta],
            attrs,
            vec![n, h, w, c],
        );
        Ok(self.b.node(
            "Transpose",
            &format!("{name}/to_nchw"),
            &[&y.name],
            vec![ints("perm", &[0, 3, 1, 2])],
            vec![n, c, h, w],
        ))
    }

    fn layer_norm<T: Float>(&mut self, norm: &LayerNorm<T>, key: &str, x: Value) -> Result<Value> {
        let shape = norm.normalized_shape();
        let k = shape.len();
        if x.shape.len() <= k || x.shape[x.shape.len() - k..] != *shape {
            return Err(shape_err(key, format!("LayerNorm over {shape:?} got {:?}", x.shape)));
        }
        let p = tensors(norm);
        let len = shape.iter().product();
        let (ones, zeros) = (vec![1.0; len], vec![0.0; len]);
        let g = p.get("weight").map_or(&ones, |(_, v)| v);
        let beta = p.get("bias").map_or(&zeros, |(_, v)| v);
        let g = self.b.constant(&format!("{key}.weight"), shape, g);
        let beta = self.b.constant(&format!("{key}.bias"), shape, beta);
        let axis = (x.shape.len() - k) as i64;
        let attrs = vec![int("axis", axis), float("epsilon", norm.eps() as f32)];
        let out = x.shape.clone();
        Ok(self.b.node(
            "LayerNormalization",
            &at(key, "LayerNormalization"),
            &[&x.name, &g, &beta],
            attrs,
            out,
        ))
    }

    /// GroupNorm as PyTorch's exporter writes it below opset 18's
    /// `GroupNormalization`: the groups as instances (`Reshape` to
    /// `[N, G, -1]`, `InstanceNormalization` without affine), back to the
    /// input's shape, then the per-channel affine (`Mul`, `Add`).
    fn group_norm<T: Float>(&mut self, norm: &GroupNorm<T>, key: &str, x: Value) -> Result<Value> {
        let g = norm.num_groups();
        let c = x.shape.get(1).copied().unwrap_or(0);
        if x.shape.len() < 3 || c % g != 0 {
            return Err(shape_err(key, format!("GroupNorm of {g} groups got {:?}", x.shape)));
        }
        let name = at(key, "GroupNorm");
        let grouped = self.b.constant_i64(&format!("{name}/grouped_shape"), &[0, g as i64, -1]);
        let mut back = vec![0i64];
        back.extend(x.shape[1..].iter().map(|&d| d as i64));
        let back = self.b.constant_i64(&format!("{name}/shape"), &back);
        let ones = self.b.constant(&format!("{name}/ones"), &[g], &vec![1.0; g]);
        let zeros = self.b.constant(&format!("{name}/zeros"), &[g], &vec![0.0; g]);
        let rest: usize = x.shape[1..].iter().product::<usize>() / g;
        let r = self.b.node(
            "Reshape",
            &format!("{name}/groups"),
            &[&x.name, &grouped],
            vec![],
            vec![x.shape[0], g, rest],
        );
        let attrs = vec![float("epsilon", norm.eps() as f32)];
        let n = self.b.node(
            "InstanceNormalization",
            &format!("{name}/normalize"),
            &[&r.name, &ones, &zeros],
            attrs,
            r.shape.clone(),
        );
        let shape = x.shape.clone();
        let p = tensors(norm);
        let (Some((_, w)), Some((_, b))) = (p.get("weight"), p.get("bias")) else {
            return Ok(self.b.node("Reshape", &name, &[&n.name, &back], vec![], shape));
        };
        let y = self.b.node(
            "Reshape",
            &format!("{name}/ungroup"),
            &[&n.name, &back],
            vec![],
            shape.clone(),
        );
        let mut dims = vec![c];
        dims.extend(std::iter::repeat_n(1, x.shape.len() - 2));
        let w = self.b.constant(&format!("{key}.weight"), &dims, w);
        let b = self.b.constant(&format!("{key}.bias"), &dims, b);
        let scaled =
            self.b.node("Mul", &format!("{name}/scale"), &[&y.name, &w], vec![], shape.clone());
        Ok(self.b.node("Add", &name, &[&scaled.name, &b], vec![], shape))
    }

    /// InstanceNorm2d: `InstanceNormalization`, or with running statistics
    /// (which eval mode then uses) `BatchNormalization` on them.
    fn instance_norm<T: Float>(
        &mut self,
        norm: &InstanceNorm2d<T>,
        key: &str,
        x: Value,
    ) -> Result<Value> {
        let [_, c, _, _] = rank4(key, &x, "InstanceNorm2d")?;
        let p = tensors(norm);
        let (ones, zeros) = (vec![1.0; c], vec![0.0; c]);
        let w = p.get("weight").map_or(&ones, |(_, v)| v);
        let b = p.get("bias").map_or(&zeros, |(_, v)| v);
        if w.len() != c {
            return Err(shape_err(key, format!("InstanceNorm2d of {} channels got {c}", w.len())));
        }
        let wname = self.b.constant(&format!("{key}.weight"), &[c], w);
        let bname = self.b.constant(&format!("{key}.bias"), &[c], b);
        let attrs = vec![float("epsilon", norm.eps() as f32)];
        let shape = x.shape.clone();
        if let (Some((_, mean)), Some((_, var))) = (p.get("running_mean"), p.get("running_var")) {
            let mean = self.b.constant(&format!("{key}.running_mean"), &[c], mean);
            let var = self.b.constant(&format!("{key}.running_var"), &[c], var);
            let inputs = [x.name.as_str(), &wname, &bname, &mean, &var];
            return Ok(self.b.node(
                "BatchNormalization",
                &at(key, "BatchNormalization"),
                &inputs,
                attrs,
                shape,
            ));
        }
        let inputs = [x.name.as_str(), &wname, &bname];
        Ok(self.b.node(
            "InstanceNormalization",
            &at(key, "InstanceNormalization"),
            &inputs,
            attrs,
            shape,
        ))
    }

    /// A per-pixel linear map of the channels: a 1×1 `Conv`, its weight
    /// `[out, in, 1, 1]` (the state dict's `[out, in]` reshaped).
    fn pixel_linear<T: Float>(
        &mut self,
        linear: &PixelLinear<T>,
        key: &str,
        x: Value,
    ) -> Result<Value> {
        let [n, c, h, w] = rank4(key, &x, "PixelLinear")?;
        let p = tensors(linear);
        let (ws, weight) = p.get("weight").cloned().unwrap_or_default();
        let (Some(&out), Some(&inp)) = (ws.first(), ws.get(1)) else {
            return Err(shape_err(key, format!("the weight is {ws:?}")));
        };
        if inp != c {
            return Err(shape_err(key, format!("PixelLinear({inp} → {out}) got {c} channels")));
        }
        let wname = self.b.constant(&format!("{key}.weight"), &[out, inp, 1, 1], &weight);
        let mut inputs = vec![x.name.clone(), wname];
        if let Some((_, b)) = p.get("bias") {
            inputs.push(self.b.constant(&format!("{key}.bias"), &[out], b));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = vec![ints("kernel_shape", &[1, 1])];
        Ok(self.b.node("Conv", &at(key, "Conv"), &inputs, attrs, vec![n, out, h, w]))
    }

    fn add(&mut self, name: &str, a: &Value, b: &Value) -> Result<Value> {
        if a.shape != b.shape {
            return Err(shape_err(
                name,
                format!("the sum's terms differ: {:?} and {:?}", a.shape, b.shape),
            ));
        }
        Ok(self.b.node("Add", name, &[&a.name, &b.name], vec![], a.shape.clone()))
    }

    fn residual<T: Float>(&mut self, block: &Residual<T>, key: &str, x: Value) -> Result<Value> {
        let main = self.layer(&block.main, key, x.clone())?;
        let sum_name = at(key, "Add");
        let sum = match &block.shortcut {
            Shortcut::Identity => self.add(&sum_name, &main, &x)?,
            Shortcut::Projection(ds) => {
                let s = self.layer(ds, &join_key(key, "downsample"), x)?;
                self.add(&sum_name, &main, &s)?
            }
            Shortcut::Off => main,
        };
        match &block.post {
            Some(post) => {
                let suffix = if post.activation == Activation::Relu { "relu" } else { "act" };
                self.activation(post.activation, &join_key(key, suffix), sum)
            }
            None => Ok(sum),
        }
    }

    fn convnext_block<T: Float>(
        &mut self,
        block: &ConvNeXtBlock<T>,
        key: &str,
        x: Value,
    ) -> Result<Value> {
        let mut h = self.conv(&block.conv_dw, &join_key(key, "conv_dw"), x.clone(), None)?;
        h = self.layer_norm2d(&block.norm, &join_key(key, "norm"), h)?;
        h = self.pixel_linear(&block.fc1, &join_key(key, "mlp.fc1"), h)?;
        h = self.activation(block.act.activation, &join_key(key, "mlp.act"), h)?;
        h = self.pixel_linear(&block.fc2, &join_key(key, "mlp.fc2"), h)?;
        if let Some(gamma) = &block.gamma {
            let g: Vec<f32> =
                gamma.value().iter().map(|v| v.to_f32().unwrap_or(f32::NAN)).collect();
            let c = g.len();
            if h.shape.get(1) != Some(&c) {
                return Err(shape_err(key, format!("γ of {c} channels, branch {:?}", h.shape)));
            }
            let gname = self.b.constant(&format!("{key}.gamma"), &[c, 1, 1], &g);
            let shape = h.shape.clone();
            h = self.b.node(
                "Mul",
                &format!("{}/layer_scale", at(key, "block")),
                &[&h.name, &gname],
                vec![],
                shape,
            );
        }
        self.add(&at(key, "Add"), &h, &x)
    }
}
