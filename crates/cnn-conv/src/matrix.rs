//! Row-major matrix views over slices and the packed product every GEMM-based
//! path (im2col, Winograd) shares.

use cnn_tensor::{gemm_packed, gemm_packed_split, Float, GemmSplit, PackedLhs};
use ndarray::{ArrayView2, ArrayViewMut2, CowArray, Ix4, ShapeBuilder};

/// A row-major matrix view over a slice, rows `ld` apart.
pub(crate) fn mat<T>(data: &[T], rows: usize, cols: usize, ld: usize) -> ArrayView2<'_, T> {
    // Invariant of every caller: the slice covers `rows` rows of stride `ld`.
    ArrayView2::from_shape((rows, cols).strides((ld, 1)), data)
        .expect("matrix view within its buffer")
}

/// A mutable row-major matrix view over a slice, rows `ld` apart.
pub(crate) fn mat_mut<T>(
    data: &mut [T],
    rows: usize,
    cols: usize,
    ld: usize,
) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((rows, cols).strides((ld, 1)), data)
        .expect("matrix view within its buffer")
}

/// `out ← w·b`, in one task or cut as `split` says (the same numbers either way).
pub(crate) fn product<T: Float>(
    w: &PackedLhs<T>,
    b: ArrayView2<'_, T>,
    out: ArrayViewMut2<'_, T>,
    split: GemmSplit,
    packed: &mut Vec<T>,
) {
    let done = if split == GemmSplit::ONE {
        gemm_packed(w, b, T::zero(), out, packed)
    } else {
        gemm_packed_split(w, b, T::zero(), out, split)
    };
    done.expect("shapes agree by construction");
}

/// The elements of an array made contiguous by `as_standard_layout`.
pub(crate) fn contiguous<'a, T>(a: &'a CowArray<'_, T, Ix4>) -> &'a [T] {
    a.as_slice().expect("standard layout is contiguous")
}

/// An output buffer shared by parallel tasks that each write a part no other
/// task touches (Winograd's channel planes, the im2col path's row tiles):
/// each path adds the view that hands a task its part, with the contract
/// that makes it disjoint.
pub(crate) struct SharedOut<T>(pub(crate) *mut T);
// SAFETY: the pointer is only written through the views each path defines, whose
// contracts give every task a part no other task reads or writes.
unsafe impl<T: Send> Sync for SharedOut<T> {}
