//! Parameters and buffers owned by layers.

use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::ArrayD;

use crate::Float;

/// One state of a parameter's value: a stamp that is new after every way
/// the value can change (a mutable borrow, a replacement, a new `Param`).
///
/// Stamps come from one process-wide counter, so no two values that may
/// differ share one, even across parameters: a layer that keeps something
/// computed from its weights (packed or folded weights for inference) keys
/// it by the weights' version instead of comparing them. A clone keeps the
/// stamp, since it holds the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(u64);

/// The last stamp handed out.
static LAST_VERSION: AtomicU64 = AtomicU64::new(0);

impl Version {
    /// A stamp no other value has had.
    pub fn fresh() -> Self {
        // Relaxed: only uniqueness matters, which `fetch_add` gives in any order.
        Version(LAST_VERSION.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// A learnable tensor or a buffer, with its gradient.
///
/// `trainable == false` freezes a parameter: optimizers skip it and layers
/// need not accumulate its gradient. A `buffer` (running statistics) is saved
/// and loaded with the weights but never optimized.
///
/// The value is read with [`Param::value`] and changed through
/// [`Param::value_mut`] or [`Param::set_value`], which give it a new
/// [`Version`]: what a layer derived from it is then known to be stale.
#[derive(Debug, Clone)]
pub struct Param<T: Float> {
    /// The current value.
    value: ArrayD<T>,
    /// The stamp of `value`, renewed by every mutable access.
    version: Version,
    /// dL/dvalue, accumulated (`+=`) by `backward`; same shape as `value`
    /// for a parameter, empty (`[0]`) for a buffer, which has no gradient.
    pub grad: ArrayD<T>,
    /// Whether optimizers update it.
    pub trainable: bool,
    /// Whether it is state rather than a parameter (saved, never optimized).
    pub buffer: bool,
}

/// Equal values, gradients and flags; the versions are not compared (two
/// parameters built apart with the same numbers are equal).
impl<T: Float> PartialEq for Param<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
            && self.grad == other.grad
            && self.trainable == other.trainable
            && self.buffer == other.buffer
    }
}

impl<T: Float> Param<T> {
    /// A trainable parameter with a zero gradient.
    pub fn new(value: ArrayD<T>) -> Self {
        let grad = ArrayD::zeros(value.raw_dim());
        Param { value, version: Version::fresh(), grad, trainable: true, buffer: false }
    }

    /// A buffer: saved with the weights, never trained, and without a
    /// gradient (its `grad` is empty: no memory is spent on it).
    pub fn buffer(value: ArrayD<T>) -> Self {
        let grad = ArrayD::zeros(ndarray::IxDyn(&[0]));
        Param { value, version: Version::fresh(), grad, trainable: false, buffer: true }
    }

    /// The current value.
    pub fn value(&self) -> &ArrayD<T> {
        &self.value
    }

    /// The value, to change in place; the parameter gets a new [`Version`]
    /// (whether or not anything is written).
    pub fn value_mut(&mut self) -> &mut ArrayD<T> {
        self.version = Version::fresh();
        &mut self.value
    }

    /// Replaces the value (any shape: the gradient is not reshaped), with a new [`Version`].
    pub fn set_value(&mut self, value: ArrayD<T>) {
        self.version = Version::fresh();
        self.value = value;
    }

    /// The value, taking it out of the parameter.
    pub fn into_value(self) -> ArrayD<T> {
        self.value
    }

    /// The stamp of the current value: equal stamps, equal values.
    pub fn version(&self) -> Version {
        self.version
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

    #[test]
    fn every_mutable_access_gives_a_new_version() {
        let mut p = Param::<f64>::new(ArrayD::zeros(ndarray::IxDyn(&[2])));
        let v0 = p.version();
        let _ = p.value();
        assert_eq!(p.version(), v0, "reading keeps the version");
        let copy = p.clone();
        assert_eq!(copy.version(), v0, "a clone holds the same value");
        p.value_mut()[0] = 1.0;
        let v1 = p.version();
        assert_ne!(v1, v0);
        p.set_value(ArrayD::ones(ndarray::IxDyn(&[3])));
        assert!(![v0, v1].contains(&p.version()));
        // A new parameter never takes a stamp handed out before.
        let q = Param::<f64>::new(ArrayD::zeros(ndarray::IxDyn(&[2])));
        assert!(![v0, v1, p.version()].contains(&q.version()));
        assert_eq!(q, copy, "equality is of values, not of versions");
    }
}
