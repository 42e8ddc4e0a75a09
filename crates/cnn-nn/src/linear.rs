//! `nn.Linear`: `y = x·Wᵀ + b` over the last axis, as a [`Layer`], with
//! PyTorch's default init (from `cnn-init`, the one place it is written).

use cnn_tensor::{
    join_key, linear_backward, linear_forward, ArrayD, Error, Float, IxDyn, Layer, Mode, Param,
    Result,
};
use ndarray::{Array2, ArrayView2, Ix1, Ix2};
use rand::Rng;

/// Settings of a [`Linear`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether there is a bias (default `true`, as PyTorch).
    pub bias: bool,
}

impl LinearConfig {
    /// `in_features → out_features` with a bias.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        LinearConfig { in_features, out_features, bias: true }
    }

    cnn_tensor::setters! {
        /// With or without a bias.
        with_bias: bias: bool;
    }
}

/// `nn.Linear`: weight `[out, in]`, optional bias `[out]`; inputs `[*, in]`.
#[derive(Debug, Clone)]
pub struct Linear<T: Float = f32> {
    /// `[out, in]`, key `weight`.
    pub weight: Param<T>,
    /// `[out]`, key `bias`.
    pub bias: Option<Param<T>>,
    cache: Option<(Array2<T>, Vec<usize>)>,
}

impl<T: Float> Linear<T> {
    /// A layer with PyTorch's default init: weight and bias from U(±1/√in)
    /// (the `kaiming_uniform_(a=√5)` that `nn.Linear.reset_parameters` uses).
    ///
    /// # Errors
    /// [`Error::Config`] when a size is zero.
    pub fn new<R: Rng + ?Sized>(cfg: LinearConfig, rng: &mut R) -> Result<Self> {
        if cfg.in_features == 0 || cfg.out_features == 0 {
            return Err(Error::config("linear", format!("sizes must be positive, got {cfg:?}")));
        }
        let shape = [cfg.out_features, cfg.in_features];
        let weight = cnn_init::pytorch_default_weight(&shape, rng)?;
        let bias = match cfg.bias {
            true => Some(Param::new(cnn_init::pytorch_default_bias(&shape, rng)?)),
            false => None,
        };
        Ok(Linear { weight: Param::new(weight), bias, cache: None })
    }

    /// A layer from given weights: `weight [out, in]`, `bias [out]`.
    ///
    /// # Errors
    /// [`Error::Shape`] when the shapes are not those.
    pub fn from_weights(weight: ArrayD<T>, bias: Option<ArrayD<T>>) -> Result<Self> {
        if weight.ndim() != 2 {
            return Err(Error::shape(
                "linear",
                format!("weight must be [out, in], got {:?}", weight.shape()),
            ));
        }
        if let Some(b) = &bias {
            if b.shape() != [weight.shape()[0]] {
                return Err(Error::shape(
                    "linear",
                    format!("bias must be [{}], got {:?}", weight.shape()[0], b.shape()),
                ));
            }
        }
        Ok(Linear { weight: Param::new(weight), bias: bias.map(Param::new), cache: None })
    }

    fn weight2(&self) -> Result<ArrayView2<'_, T>> {
        self.weight
            .value()
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::shape("linear", "weight must be 2-D [out, in]"))
    }
}

impl<T: Float> Layer<T> for Linear<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let w = self.weight2()?;
        let (out_f, in_f) = w.dim();
        let shape = x.shape().to_vec();
        if shape.last() != Some(&in_f) {
            return Err(Error::shape(
                "linear",
                format!("input {shape:?} must end in {in_f} features"),
            ));
        }
        let rows = shape[..shape.len() - 1].iter().product();
        let x2 = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, in_f))
            .map_err(|e| Error::shape("linear", e.to_string()))?;
        let bias = match &self.bias {
            Some(b) => Some(
                b.value()
                    .view()
                    .into_dimensionality::<Ix1>()
                    .map_err(|_| Error::shape("linear", format!("bias must be [{out_f}]")))?,
            ),
            None => None,
        };
        let y = linear_forward(x2.view(), w, bias)?;
        let mut out_shape = shape.clone();
        out_shape[shape.len() - 1] = out_f;
        self.cache = (mode == Mode::Train).then_some((x2, shape));
        y.into_shape_with_order(IxDyn(&out_shape))
            .map_err(|e| Error::shape("linear", e.to_string()))
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let (x2, in_shape) = self.cache.take().ok_or(Error::NoForward { op: "linear" })?;
        let w = self.weight2()?;
        let out_f = w.nrows();
        let dy2 = dy
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((x2.nrows(), out_f))
            .map_err(|_| {
            Error::shape(
                "linear",
                format!("dy is {:?}, expected [{}, {out_f}]", dy.shape(), x2.nrows()),
            )
        })?;
        let grads = linear_backward(x2.view(), w, dy2.view())?;
        if self.weight.trainable {
            self.weight.grad += &grads.dw;
        }
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable) {
            b.grad += &grads.db;
        }
        grads
            .dx
            .into_shape_with_order(IxDyn(&in_shape))
            .map_err(|e| Error::shape("linear", e.to_string()))
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&join_key(prefix, "weight"), &mut self.weight);
        if let Some(b) = self.bias.as_mut() {
            f(&join_key(prefix, "bias"), b);
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        f(&join_key(prefix, "weight"), &self.weight);
        if let Some(b) = self.bias.as_ref() {
            f(&join_key(prefix, "bias"), b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnn_tensor::random;

    #[test]
    fn leading_dims_are_kept() {
        let mut rng = random::seeded_rng(2);
        let mut layer = Linear::<f64>::new(LinearConfig::new(5, 2), &mut rng).unwrap();
        let x = random::normal(&[2, 3, 5], 0.0, 1.0, &mut rng);
        let y = layer.forward(x, Mode::Train).unwrap();
        assert_eq!(y.shape(), &[2, 3, 2]);
        let dx = layer.backward(ArrayD::ones(IxDyn(&[2, 3, 2]))).unwrap();
        assert_eq!(dx.shape(), &[2, 3, 5]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut rng = random::seeded_rng(3);
        let mut layer = Linear::<f32>::new(LinearConfig::new(5, 2), &mut rng).unwrap();
        let err = layer.forward(ArrayD::zeros(IxDyn(&[2, 4])), Mode::Train).unwrap_err();
        assert_eq!(err.to_string(), "linear: input [2, 4] must end in 5 features");
        let err = layer.backward(ArrayD::zeros(IxDyn(&[2, 2]))).unwrap_err();
        assert!(matches!(err, Error::NoForward { op: "linear" }));
        assert!(Linear::<f32>::new(LinearConfig::new(0, 2), &mut rng).is_err());
    }
}
