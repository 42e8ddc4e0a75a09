//! `nn.LayerNorm`.

use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};
use ndarray::ArrayViewD;

use crate::common::{backward_with, check_settings, forward_fused, AffineParams, NormCache};
use crate::{AffineAxes, NormAxes};

/// Settings of a [`LayerNorm`] layer, with PyTorch's defaults
/// (`nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True)`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormConfig {
    /// The trailing dimensions normalized over, e.g. `[C, H, W]` or `[D]`.
    pub normalized_shape: Vec<usize>,
    /// Added to the variance. Default `1e-5`.
    pub eps: f64,
    /// Learnable elementwise γ and β of `normalized_shape`. Default `true`.
    pub elementwise_affine: bool,
}

impl LayerNormConfig {
    /// PyTorch's defaults over the trailing `normalized_shape`.
    pub fn new(normalized_shape: &[usize]) -> Self {
        LayerNormConfig {
            normalized_shape: normalized_shape.to_vec(),
            eps: 1e-5,
            elementwise_affine: true,
        }
    }
    cnn_tensor::setters! {
        /// Another eps.
        with_eps: eps: f64;
        /// With or without γ and β.
        with_elementwise_affine: elementwise_affine: bool;
    }
}

/// Layer normalization: each sample over its trailing `normalized_shape`,
/// with an elementwise γ and β of that shape. Independent of the batch.
///
/// Keys: `weight`, `bias` (when `elementwise_affine`).
#[derive(Debug, Clone)]
pub struct LayerNorm<T: Float = f32> {
    normalized_shape: Vec<usize>,
    eps: f64,
    affine: Option<AffineParams<T>>,
    cache: Option<NormCache<T>>,
}

impl<T: Float> LayerNorm<T> {
    /// `nn.LayerNorm` from its settings.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty or zero-size shape, or a non-positive eps.
    pub fn new(config: LayerNormConfig) -> Result<Self> {
        let LayerNormConfig { normalized_shape, eps, elementwise_affine } = config;
        let normalized_shape = &normalized_shape[..];
        if normalized_shape.is_empty() || normalized_shape.contains(&0) {
            return Err(Error::config(
                "layer_norm",
                format!(
                    "normalized_shape must be non-empty and positive, got {normalized_shape:?}"
                ),
            ));
        }
        check_settings("layer_norm", eps, None)?;
        Ok(LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            eps,
            affine: elementwise_affine.then(|| AffineParams::new(normalized_shape)),
            cache: None,
        })
    }

    /// The trailing shape normalized over (`normalized_shape`).
    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }

    /// The ε added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl<T: Float> Layer<T> for LayerNorm<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let ns = &self.normalized_shape;
        let shape = x.shape();
        if shape.len() < ns.len() || shape[shape.len() - ns.len()..] != ns[..] || x.is_empty() {
            return Err(Error::shape(
                "layer_norm",
                format!("input {shape:?} must end in normalized_shape {ns:?}"),
            ));
        }
        let d: usize = ns.iter().product();
        let rows = x.len() / d;
        let axes = NormAxes { outer: 1, groups: rows, inner: d };
        let affine =
            self.affine.as_ref().map(|a| (a, AffineAxes { outer: rows, features: d, inner: 1 }));
        let (y, cache) =
            forward_fused("layer_norm", x, axes, self.eps, affine, mode == Mode::Train)?;
        self.cache = cache;
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        self.backward_view(dy.view())
    }

    fn backward_view(&mut self, dy: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
        let cache = self.cache.take().ok_or(Error::NoForward { op: "layer_norm" })?;
        backward_with("layer_norm", cache, dy, self.affine.as_mut())
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        if let Some(a) = self.affine.as_mut() {
            a.visit_mut(prefix, f);
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        if let Some(a) = self.affine.as_ref() {
            a.visit(prefix, f);
        }
    }
}
