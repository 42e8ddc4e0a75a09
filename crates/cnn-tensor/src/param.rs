//! Parameters and buffers owned by layers.

use ndarray::ArrayD;

use crate::Float;

/// A learnable tensor or a buffer, with its gradient.
///
/// `trainable == false` freezes a parameter: optimizers skip it and layers
/// need not accumulate its gradient. A `buffer` (running statistics) is saved
/// and loaded with the weights but never optimized.
#[derive(Debug, Clone, PartialEq)]
pub struct Param<T: Float> {
    /// The current value.
    pub value: ArrayD<T>,
    /// dL/dvalue, accumulated (`+=`) by `backward`; same shape as `value`
    /// for a parameter, empty (`[0]`) for a buffer, which has no gradient.
    pub grad: ArrayD<T>,
    /// Whether optimizers update it.
    pub trainable: bool,
    /// Whether it is state rather than a parameter (saved, never optimized).
    pub buffer: bool,
}

impl<T: Float> Param<T> {
    /// A trainable parameter with a zero gradient.
    pub fn new(value: ArrayD<T>) -> Self {
        let grad = ArrayD::zeros(value.raw_dim());
        Param { value, grad, trainable: true, buffer: false }
    }

    /// A buffer: saved with the weights, never trained, and without a
    /// gradient (its `grad` is empty: no memory is spent on it).
    pub fn buffer(value: ArrayD<T>) -> Self {
        let grad = ArrayD::zeros(ndarray::IxDyn(&[0]));
        Param { value, grad, trainable: false, buffer: true }
    }

    /// Sets the gradient to zero, keeping its allocation.
    pub fn zero_grad(&mut self) {
        self.grad.fill(T::zero());
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_have_no_gradient_storage() {
        let mut b = Param::<f32>::buffer(ArrayD::zeros(ndarray::IxDyn(&[1000])));
        assert_eq!((b.grad.len(), b.len(), b.trainable, b.buffer), (0, 1000, false, true));
        b.zero_grad();
        let p = Param::<f32>::new(ArrayD::zeros(ndarray::IxDyn(&[3, 4])));
        assert_eq!(p.grad.shape(), &[3, 4]);
    }
}
