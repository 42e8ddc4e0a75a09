//! `Sequential`, `Flatten` and `Identity`.

use cnn_tensor::{join_key, ArrayD, Error, Float, IxDyn, Layer, Mode, Param, Result};
use ndarray::ArrayViewD;

/// Layers applied in order (`nn.Sequential`). Children are named `0`, `1`, …
/// unless given a name, and their parameters' keys start with that name.
#[derive(Default)]
pub struct Sequential<T: Float = f32> {
    pub(crate) children: Vec<(String, Box<dyn Layer<T>>)>,
}

impl<T: Float> Sequential<T> {
    /// An empty container.
    pub fn new() -> Self {
        Sequential { children: Vec::new() }
    }

    /// Appends a child named by its position (`"0"`, `"1"`, …).
    pub fn push(mut self, layer: impl Layer<T> + 'static) -> Self {
        let name = self.children.len().to_string();
        self.children.push((name, Box::new(layer)));
        self
    }

    /// Appends an already boxed child, named by its position.
    pub fn push_boxed(mut self, layer: Box<dyn Layer<T>>) -> Self {
        let name = self.children.len().to_string();
        self.children.push((name, layer));
        self
    }

    /// Appends a child under `name` (`"conv1"`, `"layer1"`, `"fc"`).
    pub fn push_named(mut self, name: &str, layer: impl Layer<T> + 'static) -> Self {
        self.children.push((name.to_string(), Box::new(layer)));
        self
    }

    /// The children's names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.children.iter().map(|(n, _)| n.as_str())
    }

    /// Replaces the child at `path` (`"fc"`, or `"classifier.6"` inside a nested
    /// `Sequential`) and returns the old one.
    ///
    /// # Errors
    /// [`Error::Config`] when there is no child at that path.
    pub fn replace(
        &mut self,
        path: &str,
        layer: impl Layer<T> + 'static,
    ) -> Result<Box<dyn Layer<T>>> {
        self.replace_child(path, Box::new(layer))
    }

    /// The child named `name`, to read.
    pub fn get(&self, name: &str) -> Option<&dyn Layer<T>> {
        self.children.iter().find(|(n, _)| n == name).map(|(_, l)| l.as_ref() as &dyn Layer<T>)
    }

    /// The child named `name`, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut dyn Layer<T>> {
        self.children
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.as_mut() as &mut dyn Layer<T>)
    }

    /// Inserts `layer` under `name` at position `index` (0 = first; `len()` appends).
    ///
    /// # Errors
    /// [`Error::Config`] when `index` is past the end or `name` is taken
    /// (two children under one name would share their state-dict keys).
    pub fn insert(
        &mut self,
        index: usize,
        name: &str,
        layer: impl Layer<T> + 'static,
    ) -> Result<()> {
        if index > self.children.len() {
            return Err(Error::config(
                "sequential",
                format!("insert at {index} in a container of {} children", self.children.len()),
            ));
        }
        if self.get(name).is_some() {
            return Err(Error::config("sequential", format!("a child named {name:?} exists")));
        }
        self.children.insert(index, (name.to_string(), Box::new(layer)));
        Ok(())
    }

    /// Removes the child named `name` and returns it (the others keep their names).
    ///
    /// # Errors
    /// [`Error::Config`] when there is no such child, listing the names there are.
    pub fn remove(&mut self, name: &str) -> Result<Box<dyn Layer<T>>> {
        let names = self.names_vec();
        let at = self.children.iter().position(|(n, _)| n == name).ok_or_else(|| {
            Error::config("sequential", format!("no child named {name:?}; children: {names:?}"))
        })?;
        Ok(self.children.remove(at).1)
    }

    fn names_vec(&self) -> Vec<String> {
        self.children.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The number of children.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are no children.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl<T: Float> Sequential<T> {
    /// Eval-mode forward with fused inference ([`crate::with_fusion`]): each
    /// run of conv (→ BatchNorm2d) (→ ReLU) goes as one convolution.
    fn forward_fused(&mut self, x: ArrayD<T>) -> Result<ArrayD<T>> {
        self.forward_fused_from(0, x)
    }

    /// [`Sequential::forward_fused`] from child `i` on.
    fn forward_fused_from(&mut self, mut i: usize, mut x: ArrayD<T>) -> Result<ArrayD<T>> {
        while i < self.children.len() {
            if let Some((used, y)) = self.fused_run(i, &x)? {
                x = y;
                i += used;
            } else {
                x = self.children[i].1.forward(x, Mode::Eval)?;
                i += 1;
            }
        }
        Ok(x)
    }

    /// The fusable run at child `i` on `x`, if there is one: how many
    /// children it covers and its output.
    fn fused_run(&mut self, i: usize, x: &ArrayD<T>) -> Result<Option<(usize, ArrayD<T>)>> {
        let end = (i + 3).min(self.children.len());
        let mut run: Vec<&mut dyn Layer<T>> =
            self.children[i..end].iter_mut().map(|(_, l)| &mut **l as &mut dyn Layer<T>).collect();
        Ok(crate::fusion::run_fused(&mut run, x)?.map(|(used, y)| (used, y.into_dyn())))
    }

    /// Eval-mode forward with fused inference of a borrowed input, for a
    /// residual block that adds the input after: a leading convolution reads
    /// `x` in place; any other first child gets a copy.
    pub(crate) fn forward_eval_borrowed(&mut self, x: &ArrayD<T>) -> Result<ArrayD<T>> {
        if self.children.is_empty() {
            return Ok(x.clone());
        }
        let (used, y) = match self.fused_run(0, x)? {
            Some(run) => run,
            None => (1, self.children[0].1.forward(x.clone(), Mode::Eval)?),
        };
        self.forward_fused_from(used, y)
    }
}

impl<T: Float> Sequential<T> {
    /// Backward through children `0..end`, last first. In training a 2-D
    /// BatchNorm then a ReLU run as one backward (the ReLU's mask applied
    /// inside the norm's passes); the gradients are the same bits.
    fn backward_through(&mut self, mut end: usize, mut dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let fuse = crate::fusion_enabled();
        while end > 0 {
            if let (true, Some([(_, a), (_, b)])) =
                (fuse, end.checked_sub(2).map(|i| &mut self.children[i..end]))
            {
                if crate::fusion::is_norm_relu(&mut **a, &mut **b) {
                    dy = crate::fusion::norm_relu_backward(&mut **a, &mut **b, dy)?;
                    end -= 2;
                    continue;
                }
            }
            dy = self.children[end - 1].1.backward(dy)?;
            end -= 1;
        }
        Ok(dy)
    }
}

impl<T: Float> Layer<T> for Sequential<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, mut x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let fuse = crate::fusion_enabled();
        if mode == Mode::Eval && fuse {
            return self.forward_fused(x);
        }
        let mut i = 0;
        while i < self.children.len() {
            // Training: a 2-D BatchNorm then a ReLU as one pass over the output.
            if let (true, Mode::Train, [(_, a), (_, b), ..]) = (fuse, mode, &mut self.children[i..])
            {
                if crate::fusion::is_norm_relu(&mut **a, &mut **b) {
                    x = crate::fusion::norm_relu_train(&mut **a, &mut **b, x)?;
                    i += 2;
                    continue;
                }
            }
            x = self.children[i].1.forward(x, mode)?;
            i += 1;
        }
        Ok(x)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let end = self.children.len();
        self.backward_through(end, dy)
    }

    fn backward_view(&mut self, dy: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
        let Some((_, last)) = self.children.last_mut() else {
            return Ok(dy.to_owned());
        };
        let d = last.backward_view(dy)?;
        let end = self.children.len() - 1;
        self.backward_through(end, d)
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        for (name, layer) in &mut self.children {
            layer.visit_mut(&join_key(prefix, name), f);
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        for (name, layer) in &self.children {
            layer.visit(&join_key(prefix, name), f);
        }
    }

    fn replace_child(&mut self, path: &str, layer: Box<dyn Layer<T>>) -> Result<Box<dyn Layer<T>>> {
        let (first, rest) = path.split_once('.').map_or((path, None), |(a, b)| (a, Some(b)));
        let names = self.names_vec();
        let slot = self.children.iter_mut().find(|(n, _)| n == first).ok_or_else(|| {
            Error::config("sequential", format!("no child named {first:?}; children: {names:?}"))
        })?;
        match rest {
            None => Ok(std::mem::replace(&mut slot.1, layer)),
            Some(rest) => slot.1.replace_child(rest, layer),
        }
    }

    fn wiring(&self) -> cnn_tensor::Wiring {
        cnn_tensor::Wiring::Chain
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<T>)> {
        self.children
            .iter_mut()
            .map(|(n, l)| (n.clone(), l.as_mut() as &mut dyn Layer<T>))
            .collect()
    }

    fn children(&self) -> Vec<(String, &dyn Layer<T>)> {
        self.children.iter().map(|(n, l)| (n.clone(), l.as_ref() as &dyn Layer<T>)).collect()
    }
}

/// `[N, d1, d2, …]` → `[N, d1·d2·…]` (`nn.Flatten()`); no parameters.
#[derive(Debug, Clone, Default)]
pub struct Flatten {
    shape: Option<Vec<usize>>,
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Self {
        Flatten::default()
    }
}

impl<T: Float> Layer<T> for Flatten {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if x.ndim() < 2 {
            return Err(Error::shape(
                "flatten",
                format!("input must have a batch axis and at least one more, got {:?}", x.shape()),
            ));
        }
        let shape = x.shape().to_vec();
        let n = shape[0];
        let rest = shape[1..].iter().product();
        let y = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[n, rest]))
            .map_err(|e| Error::shape("flatten", e.to_string()))?;
        self.shape = (mode == Mode::Train).then_some(shape);
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let shape = self.shape.take().ok_or(Error::NoForward { op: "flatten" })?;
        dy.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&shape)).map_err(|_| {
            Error::shape("flatten", format!("dy does not fit the input shape {shape:?}"))
        })
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}
}

/// `nn.Identity`: returns its input; no parameters. A placeholder where a
/// layer is removed but the container's names must stay (a headless backbone:
/// `net.replace("fc", Identity::new())`).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    shape: Option<Vec<usize>>,
}

impl Identity {
    /// An identity layer.
    pub fn new() -> Self {
        Identity::default()
    }
}

impl<T: Float> Layer<T> for Identity {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        self.shape = (mode == Mode::Train).then(|| x.shape().to_vec());
        Ok(x)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let shape = self.shape.take().ok_or(Error::NoForward { op: "identity" })?;
        if dy.shape() != shape.as_slice() {
            return Err(Error::shape(
                "identity",
                format!("dy is {:?}, expected the output shape {shape:?}", dy.shape()),
            ));
        }
        Ok(dy)
    }

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}
}
