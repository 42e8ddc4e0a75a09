//! Weights prepared for the kernels (packed for the GEMM, or Winograd's
//! transform), kept by a layer between eval-mode calls. The cache only
//! stores: the dispatcher (`conv2d.rs`) builds what it holds with the
//! kernels' own functions, so it depends on no kernel.

use cnn_tensor::{Float, PackedLhs};

/// Winograd's `U[ξ]` per group, keyed by (tile side m, groups, GEMM width).
type WinogradWeights<T> = ((usize, usize, usize), Vec<Vec<PackedLhs<T>>>);
/// The im2col path's packed `W_g` per group, keyed by (groups, GEMM width).
type PackedWeights<T> = ((usize, usize), Vec<PackedLhs<T>>);

/// What a layer keeps between eval-mode calls: its weights in the form each
/// kernel reads them, rebuilt when the weights change.
#[derive(Debug, Clone, Default)]
pub(crate) struct WeightCache<T: Float> {
    /// The weights it was built from, compared (as bytes) on every use: a
    /// layer's weight is a public field, so no other signal says it changed.
    weights: Vec<T>,
    /// Winograd's `U[ξ]` per group, and the (tile, groups, GEMM width) it is for.
    winograd: Option<WinogradWeights<T>>,
    /// The im2col path's packed `W_g` per group, and the (groups, GEMM width) it is for.
    im2col: Option<PackedWeights<T>>,
    /// The owner guarantees the weights are unchanged while the cache lives
    /// (it makes a new cache when they change): no copy kept, no comparison.
    trusted: bool,
}

/// The bytes of a slice of floats (no padding in `f32` or `f64`).
pub(crate) fn bytes<T: Float>(v: &[T]) -> &[u8] {
    // SAFETY: `T` is a float type: plain bytes, no padding, every byte initialized;
    // the byte slice covers exactly the same memory and lives as long.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

impl<T: Float> WeightCache<T> {
    /// A cache for weights its owner alone can change (and replaces the cache when it does).
    pub(crate) fn trusting() -> Self {
        WeightCache { trusted: true, ..Self::default() }
    }

    /// Forgets everything when `w` is not what the cache was built from.
    /// Bytewise: a NaN weight is equal to itself, and `memcmp` is fast.
    fn validate(&mut self, w: &[T]) {
        if !self.trusted && bytes(&self.weights) != bytes(w) {
            self.winograd = None;
            self.im2col = None;
            self.weights = w.to_vec();
        }
    }

    /// Winograd's packed `U[ξ]` for `w`, built by `build` when `w` or the
    /// key (tile side, groups, GEMM width) changed.
    pub(crate) fn winograd(
        &mut self,
        key: (usize, usize, usize),
        w: &[T],
        build: impl FnOnce() -> Vec<Vec<PackedLhs<T>>>,
    ) -> &[Vec<PackedLhs<T>>] {
        self.validate(w);
        if self.winograd.as_ref().is_none_or(|(k, _)| *k != key) {
            self.winograd = Some((key, build()));
        }
        &self.winograd.as_ref().expect("set above").1
    }

    /// The im2col path's packed weights for `w`, built by `pack` when `w` or the key changed.
    pub(crate) fn im2col(
        &mut self,
        key: (usize, usize),
        w: &[T],
        pack: impl FnOnce() -> Vec<PackedLhs<T>>,
    ) -> &[PackedLhs<T>] {
        self.validate(w);
        if self.im2col.as_ref().is_none_or(|(k, _)| *k != key) {
            self.im2col = Some((key, pack()));
        }
        &self.im2col.as_ref().expect("set above").1
    }
}
