//! Checked GEMM on strided ndarray views, dispatched to matrixmultiply.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::{Error, Float, Result};

/// `C ← α·A·B + β·C` for `A: [m, k]`, `B: [k, n]`, `C: [m, n]`, on any strides.
///
/// Transposes are free: pass `a.t()`. No copy is made, whatever the layout
/// (ndarray's `general_mat_mul` is the same idea). With `beta == 0`, `C` is
/// overwritten without being read.
///
/// For f32 under a bf16 scope ([`crate::with_precision`]) the product is
/// bf16's ([`crate::bf16::gemm_reference`] bit for bit, then scaled by `α`
/// when `α ≠ 1`), in the packed micro-kernel.
///
/// # Errors
/// [`Error::Shape`] when the inner or outer dimensions do not agree.
pub fn gemm<T: Float>(
    alpha: T,
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    beta: T,
    mut c: ArrayViewMut2<'_, T>,
) -> Result<()> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 || c.dim() != (m, n) {
        return Err(Error::shape(
            "gemm",
            format!(
                "A is {m}x{k}, B is {k2}x{n}, C is {:?}: expected B {k}xN and C {m}xN",
                c.dim()
            ),
        ));
    }
    if crate::precision::bf16_for::<T>() && crate::PackedLhs::<T>::uses_kernel() {
        return bf16_product(alpha, a, b, beta, c);
    }
    let (sa, sb, sc) = (a.strides().to_vec(), b.strides().to_vec(), c.strides().to_vec());
    // SAFETY: ndarray views keep every indexed element inside their allocation;
    // `c` is a unique borrow, so it cannot alias the shared `a` and `b`.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            sa[0],
            sa[1],
            b.as_ptr(),
            sb[0],
            sb[1],
            beta,
            c.as_mut_ptr(),
            sc[0],
            sc[1],
        );
    }
    Ok(())
}

/// [`gemm`] in bf16: `A` packed under the scope (so rounded), `B` rounded
/// as it is packed; `α ≠ 1` scales the product before `β·C` is added.
fn bf16_product<T: Float>(
    alpha: T,
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    beta: T,
    mut c: ArrayViewMut2<'_, T>,
) -> Result<()> {
    let packed = crate::PackedLhs::new(a, b.ncols());
    let mut scratch = crate::scratch::Scratch::<T>::take(0);
    if alpha == T::one() {
        return crate::gemm_packed(&packed, b, beta, c, scratch.vec_mut());
    }
    let mut product = Array2::zeros(c.dim());
    crate::gemm_packed(&packed, b, T::zero(), product.view_mut(), scratch.vec_mut())?;
    c.zip_mut_with(&product, |out, &p| {
        *out = if beta == T::zero() { alpha * p } else { alpha * p + beta * *out };
    });
    Ok(())
}

/// `A·B` into a new matrix.
///
/// # Errors
/// [`Error::Shape`] when `A`'s columns are not `B`'s rows.
pub fn matmul<T: Float>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>) -> Result<Array2<T>> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(T::one(), a, b, T::zero(), c.view_mut())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn naive(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
            (0..a.ncols()).map(|p| a[[i, p]] * b[[p, j]]).sum()
        })
    }

    #[test]
    fn strided_views_need_no_copy() {
        let a = Array2::from_shape_fn((5, 7), |(i, j)| (i * 7 + j) as f64 * 0.1 - 1.0);
        let b = Array2::from_shape_fn((5, 3), |(i, j)| (i as f64 - j as f64) * 0.3);
        // Aᵀ·B with A transposed as a view.
        let got = matmul(a.t(), b.view()).unwrap();
        approx::assert_relative_eq!(got, naive(a.t(), b.view()), max_relative = 1e-12);
        // A column-major destination.
        let mut c = Array2::<f64>::zeros((3, 7)).reversed_axes();
        gemm(1.0, a.t(), b.view(), 0.0, c.view_mut()).unwrap();
        approx::assert_relative_eq!(c, naive(a.t(), b.view()), max_relative = 1e-12);
    }

    #[test]
    fn beta_accumulates() {
        let a = array![[1.0f32, 2.0], [3.0, 4.0]];
        let mut c = array![[1.0f32, 1.0], [1.0, 1.0]];
        gemm(2.0, a.view(), a.view(), 1.0, c.view_mut()).unwrap();
        assert_eq!(c, array![[15.0, 21.0], [31.0, 45.0]]);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let a = Array2::<f32>::zeros((2, 3));
        let err = matmul(a.view(), a.view()).unwrap_err().to_string();
        assert!(err.starts_with("gemm: A is 2x3, B is 2x3"), "{err}");
    }
}
