//! `Sequential` and `Flatten`.

use cnn_tensor::{join_key, ArrayD, Error, Float, IxDyn, Layer, Mode, Param, Result};

/// Layers applied in order (`nn.Sequential`). Children are named `0`, `1`, …
/// unless given a name, and their parameters' keys start with that name.
#[derive(Default)]
pub struct Sequential<T: Float = f32> {
    children: Vec<(String, Box<dyn Layer<T>>)>,
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
    fn forward_fused(&mut self, mut x: ArrayD<T>) -> Result<ArrayD<T>> {
        let mut i = 0;
        while i < self.children.len() {
            let end = (i + 3).min(self.children.len());
            let mut run: Vec<&mut dyn Layer<T>> = self.children[i..end]
                .iter_mut()
                .map(|(_, l)| &mut **l as &mut dyn Layer<T>)
                .collect();
            if let Some((used, y)) = crate::fusion::run_fused(&mut run, &x)? {
                x = y.into_dyn();
                i += used;
            } else {
                x = self.children[i].1.forward(x, Mode::Eval)?;
                i += 1;
            }
        }
        Ok(x)
    }
}

impl<T: Float> Layer<T> for Sequential<T> {
    fn forward(&mut self, mut x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if mode == Mode::Eval && crate::fusion_enabled() {
            return self.forward_fused(x);
        }
        for (_, layer) in &mut self.children {
            x = layer.forward(x, mode)?;
        }
        Ok(x)
    }

    fn backward(&mut self, mut dy: ArrayD<T>) -> Result<ArrayD<T>> {
        for (_, layer) in self.children.iter_mut().rev() {
            dy = layer.backward(dy)?;
        }
        Ok(dy)
    }

    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        for (name, layer) in &mut self.children {
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

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<T>)> {
        self.children
            .iter_mut()
            .map(|(n, l)| (n.clone(), l.as_mut() as &mut dyn Layer<T>))
            .collect()
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

    fn visit(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}
}
