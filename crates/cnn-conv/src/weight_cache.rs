//! Weights prepared for the kernels (packed for the GEMM, or Winograd's
//! transform), kept by a layer between eval-mode calls. The cache only
//! stores: the dispatcher (`conv2d.rs`) builds what it holds with the
//! kernels' own functions, so it depends on no kernel.

use cnn_tensor::{Float, PackedLhs, Precision, Version};

/// Winograd's `U[ξ]` per group, keyed by (tile side m, groups, GEMM width).
type WinogradWeights<T> = ((usize, usize, usize), Vec<Vec<PackedLhs<T>>>);
/// The im2col path's packed `W_g` per group, keyed by (groups, GEMM width,
/// precision: a bf16 scope packs rounded weights).
type PackedWeights<T> = ((usize, usize, Precision), Vec<PackedLhs<T>>);

/// A layer's cache and the version of the weights it is handed with.
pub(crate) type Prepared<'a, T> = (&'a mut WeightCache<T>, Version);

/// What a layer keeps between eval-mode calls: its weights in the form each
/// kernel reads them, rebuilt when the weights change.
///
/// "Changed" is told by the weights' [`Version`] (renewed by every mutable
/// access to a `Param`), not by comparing them: at batch 1 the bytewise
/// comparison of ResNet-18's 47 MB of weights was 10% of a forward, and the
/// copy it compared against doubled the weights' memory. Debug builds still
/// keep the copy and assert that an unchanged version means unchanged bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct WeightCache<T: Float> {
    /// The version of the weights it was built from.
    version: Option<Version>,
    /// A copy of those weights, to check the versions by (debug builds only).
    #[cfg(debug_assertions)]
    weights: Vec<T>,
    /// Winograd's `U[ξ]` per group, and the (tile, groups, GEMM width) it is for.
    winograd: Option<WinogradWeights<T>>,
    /// The im2col path's packed `W_g` per group, and the (groups, GEMM width) it is for.
    im2col: Option<PackedWeights<T>>,
}

/// The bytes of a slice of floats (no padding in `f32` or `f64`).
pub(crate) fn bytes<T: Float>(v: &[T]) -> &[u8] {
    // SAFETY: `T` is a float type: plain bytes, no padding, every byte initialized;
    // the byte slice covers exactly the same memory and lives as long.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

impl<T: Float> WeightCache<T> {
    /// Forgets everything unless it was built from this version of the
    /// weights `w` (which only debug builds read).
    #[cfg_attr(not(debug_assertions), allow(unused_variables))]
    fn validate(&mut self, version: Version, w: &[T]) {
        if self.version != Some(version) {
            self.winograd = None;
            self.im2col = None;
            self.version = Some(version);
            #[cfg(debug_assertions)]
            {
                self.weights = w.to_vec();
            }
        }
        // Bytewise: a NaN weight is equal to itself.
        #[cfg(debug_assertions)]
        assert!(
            bytes(&self.weights) == bytes(w),
            "weights changed without a new version: a mutable path bypassed Param::value_mut"
        );
    }

    /// Winograd's packed `U[ξ]` for `w` (at `version`), built by `build`
    /// when the version or the key (tile side, groups, GEMM width) changed.
    pub(crate) fn winograd(
        &mut self,
        key: (usize, usize, usize),
        (version, w): (Version, &[T]),
        build: impl FnOnce() -> Vec<Vec<PackedLhs<T>>>,
    ) -> &[Vec<PackedLhs<T>>] {
        self.validate(version, w);
        if self.winograd.as_ref().is_none_or(|(k, _)| *k != key) {
            self.winograd = Some((key, build()));
        }
        &self.winograd.as_ref().expect("set above").1
    }

    /// The im2col path's packed weights for `w` (at `version`), built by
    /// `pack` when the version or the key changed.
    pub(crate) fn im2col(
        &mut self,
        key: (usize, usize, Precision),
        (version, w): (Version, &[T]),
        pack: impl FnOnce() -> Vec<PackedLhs<T>>,
    ) -> &[PackedLhs<T>] {
        self.validate(version, w);
        if self.im2col.as_ref().is_none_or(|(k, _)| *k != key) {
            self.im2col = Some((key, pack()));
        }
        &self.im2col.as_ref().expect("set above").1
    }
}
