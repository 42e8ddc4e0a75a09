//! Activation layers (`nn.ReLU`, `nn.GELU`, …) over the kernels.

use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};

use crate::{
    activation_backward, activation_forward, activation_forward_copy, rectifier_backward_masked,
    rectifier_forward_masked, Activation,
};

/// An activation as a [`Layer`]: `Act::relu()`, `Act::gelu()`, … No parameters.
#[derive(Debug, Clone)]
pub struct Act<T: Float = f32> {
    /// Which activation.
    pub activation: Activation,
    saved: Option<ArrayD<T>>,
    /// ReLU and LeakyReLU: which inputs were positive, kept (and reused) between steps.
    positive: Vec<u8>,
    /// ReLU and LeakyReLU: the shape of the last train-mode output, until backward.
    masked: Option<Vec<usize>>,
}

impl<T: Float> Act<T> {
    /// Any activation.
    pub fn new(activation: Activation) -> Self {
        Act { activation, saved: None, positive: Vec::new(), masked: None }
    }
    /// Drops what the last train-mode forward kept for backward, as an
    /// eval-mode forward does: for a container that applied this activation
    /// inside another layer (a convolution's epilogue) instead of calling it.
    pub fn clear_cache(&mut self) {
        self.saved = None;
        self.masked = None;
    }

    /// ReLU only: runs `f` with this layer's sign buffer, sized for an
    /// output of `shape`, for a layer that applies the ReLU to its own
    /// train-mode output and writes the signs there (`cnn_norm::BatchNorm::
    /// forward_relu`, fused in training); the pending backward then runs as
    /// after this layer's own train-mode forward.
    ///
    /// # Errors
    /// [`Error::Config`] for another activation; whatever `f` returns (and
    /// then no backward is pending).
    pub fn forward_in<R>(
        &mut self,
        shape: &[usize],
        f: impl FnOnce(&mut [u8]) -> Result<R>,
    ) -> Result<R> {
        if self.activation != Activation::Relu {
            return Err(Error::config(
                self.activation.name(),
                "only a ReLU runs inside another layer's forward",
            ));
        }
        self.clear_cache();
        self.positive.resize(shape.iter().product(), 0);
        let r = f(&mut self.positive)?;
        self.masked = Some(shape.to_vec());
        Ok(r)
    }

    /// ReLU only: runs `f` with the signs of the pending backward (which it
    /// consumes), for a layer before this one that applies this ReLU's
    /// backward inside its own (`cnn_norm::BatchNorm::backward_relu`, fused
    /// in training); `dy_shape` is checked as [`Layer::backward`] checks `dy`.
    ///
    /// # Errors
    /// [`Error::Config`] for another activation; [`Error::NoForward`] without
    /// a pending train-mode forward (then `f` does not run); [`Error::Shape`]
    /// when `dy_shape` is not that forward's output shape; whatever `f` returns.
    pub fn backward_in<R>(
        &mut self,
        dy_shape: &[usize],
        f: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<R> {
        let op = self.activation.name();
        if self.activation != Activation::Relu {
            return Err(Error::config(op, "only a ReLU's backward runs inside another layer's"));
        }
        let shape = self.masked.take().ok_or(Error::NoForward { op })?;
        if dy_shape != shape.as_slice() {
            return Err(Error::shape(
                op,
                format!("dy is {dy_shape:?}, expected the output shape {shape:?}"),
            ));
        }
        f(&self.positive)
    }

    /// ReLU and LeakyReLU: which inputs of the last train-mode forward were
    /// positive (1) or not (0), in the input's order; `None` for other
    /// activations, or before a train-mode forward. What a kink-aware check
    /// compares between two precisions.
    pub fn positive_mask(&self) -> Option<&[u8]> {
        self.activation.is_rectifier().then_some(self.positive.as_slice()).filter(|m| !m.is_empty())
    }

    /// Replaces the signs the pending backward uses (ReLU and LeakyReLU, after
    /// a train-mode forward) with `mask` ([`Act::positive_mask`] of another
    /// run): how a kink-aware check computes a reference gradient with the
    /// same kinks as the run it checks.
    ///
    /// # Errors
    /// [`Error::Config`] for another activation or without a pending
    /// train-mode forward; [`Error::Shape`] when `mask` is not that forward's length.
    pub fn set_positive_mask(&mut self, mask: &[u8]) -> Result<()> {
        let op = self.activation.name();
        if !self.activation.is_rectifier() || self.masked.is_none() {
            return Err(Error::config(
                op,
                "signs are kept only by ReLU and LeakyReLU after a train-mode forward",
            ));
        }
        if mask.len() != self.positive.len() {
            return Err(Error::shape(
                op,
                format!("a mask of {} signs for {} inputs", mask.len(), self.positive.len()),
            ));
        }
        self.positive.copy_from_slice(mask);
        Ok(())
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
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let act = self.activation;
        self.masked = None;
        // ReLU and LeakyReLU: in place, keeping only the input's signs.
        // Otherwise keep the input, or for sigmoid/tanh the output, whichever
        // backward reads; keeping the input: write y to a new buffer rather than copy x first.
        let (y, saved) = match mode {
            Mode::Eval => (activation_forward(act, x)?, None),
            Mode::Train if act.is_rectifier() => {
                let shape = x.shape().to_vec();
                let y = rectifier_forward_masked(act, x, &mut self.positive)?;
                self.masked = Some(shape);
                (y, None)
            }
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
        if let Some(shape) = self.masked.take() {
            if dy.shape() != shape.as_slice() {
                return Err(Error::shape(
                    self.activation.name(),
                    format!("dy is {:?}, expected the output shape {shape:?}", dy.shape()),
                ));
            }
            return rectifier_backward_masked(self.activation, &self.positive, dy);
        }
        let saved = self.saved.take().ok_or(Error::NoForward { op: self.activation.name() })?;
        activation_backward(self.activation, &saved, dy)
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}
