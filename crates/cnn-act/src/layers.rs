//! Activation layers (`nn.ReLU`, `nn.GELU`, …) over the kernels.

use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};

use crate::{activation_backward, activation_forward, activation_forward_copy, Activation};

/// An activation as a [`Layer`]: `Act::relu()`, `Act::gelu()`, … No parameters.
#[derive(Debug, Clone)]
pub struct Act<T: Float = f32> {
    /// Which activation.
    pub activation: Activation,
    saved: Option<ArrayD<T>>,
}

impl<T: Float> Act<T> {
    /// Any activation.
    pub fn new(activation: Activation) -> Self {
        Act { activation, saved: None }
    }
    /// `nn.ReLU`.
    pub fn relu() -> Self {
        Self::new(Activation::Relu)
    }
    /// `nn.LeakyReLU(negative_slope)`.
    pub fn leaky_relu(negative_slope: f64) -> Self {
        Self::new(Activation::LeakyRelu(negative_slope))
    }
    /// `nn.Sigmoid`.
    pub fn sigmoid() -> Self {
        Self::new(Activation::Sigmoid)
    }
    /// `nn.Tanh`.
    pub fn tanh() -> Self {
        Self::new(Activation::Tanh)
    }
    /// `nn.GELU()` (exact, with erf).
    pub fn gelu() -> Self {
        Self::new(Activation::Gelu)
    }
    /// `nn.GELU(approximate="tanh")`.
    pub fn gelu_tanh() -> Self {
        Self::new(Activation::GeluTanh)
    }
}

impl<T: Float> Layer<T> for Act<T> {
    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let act = self.activation;
        // Keep the input, or for sigmoid/tanh the output, whichever backward reads.
        // Keeping the input: write y to a new buffer rather than copy x first.
        let (y, saved) = match mode {
            Mode::Eval => (activation_forward(act, x)?, None),
            Mode::Train if act.backward_from_output() => {
                let y = activation_forward(act, x)?;
                let saved = y.clone();
                (y, Some(saved))
            }
            Mode::Train => (activation_forward_copy(act, &x)?, Some(x)),
        };
        self.saved = saved;
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let saved = self.saved.take().ok_or(Error::NoForward { op: self.activation.name() })?;
        activation_backward(self.activation, &saved, dy)
    }

    fn visit(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}
}
