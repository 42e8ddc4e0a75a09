//! The fully connected op `y = x·Wᵀ + b` (`F.linear`) and its gradients;
//! the layer, `nn.Linear`, is `cnn_nn::Linear`.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::{gemm, Error, Float, Result};

/// Gradients of [`linear_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads<T> {
    /// dL/dx, `[n, in]`.
    pub dx: Array2<T>,
    /// dL/dW, `[out, in]`.
    pub dw: Array2<T>,
    /// dL/db, `[out]`.
    pub db: Array1<T>,
}

fn check_linear<T: Float>(x: &ArrayView2<'_, T>, w: &ArrayView2<'_, T>) -> Result<()> {
    if x.ncols() != w.ncols() {
        return Err(Error::shape(
            "linear",
            format!(
                "input has {} features, weight [out, in] = {:?} expects {}",
                x.ncols(),
                w.dim(),
                w.ncols()
            ),
        ));
    }
    Ok(())
}

/// `y = x·Wᵀ + b` (`torch.nn.functional.linear`).
///
/// # Shapes
/// `x: [n, in]`, `w: [out, in]` (PyTorch's layout), `b: [out]` → `y: [n, out]`.
///
/// # Errors
/// [`Error::Shape`] when `x` and `w` disagree on `in` or `b` is not `[out]`.
pub fn linear_forward<T: Float>(
    x: ArrayView2<'_, T>,
    w: ArrayView2<'_, T>,
    b: Option<ArrayView1<'_, T>>,
) -> Result<Array2<T>> {
    check_linear(&x, &w)?;
    let mut y = Array2::zeros((x.nrows(), w.nrows()));
    if let Some(b) = &b {
        if b.len() != w.nrows() {
            return Err(Error::shape(
                "linear",
                format!("bias has {} entries, weight has {} outputs", b.len(), w.nrows()),
            ));
        }
        y += b;
    }
    gemm(T::one(), x, w.t(), T::one(), y.view_mut())?;
    Ok(y)
}

/// Gradients of [`linear_forward`] for upstream `dy`.
///
/// `dx = dy·W`, `dW = dyᵀ·x`, `db = Σₙ dy`.
///
/// # Shapes
/// `x: [n, in]`, `w: [out, in]`, `dy: [n, out]`.
///
/// # Errors
/// [`Error::Shape`] when the shapes disagree.
pub fn linear_backward<T: Float>(
    x: ArrayView2<'_, T>,
    w: ArrayView2<'_, T>,
    dy: ArrayView2<'_, T>,
) -> Result<LinearGrads<T>> {
    check_linear(&x, &w)?;
    if dy.dim() != (x.nrows(), w.nrows()) {
        return Err(Error::shape(
            "linear",
            format!(
                "dy is {:?}, expected [{}, {}] like the output",
                dy.dim(),
                x.nrows(),
                w.nrows()
            ),
        ));
    }
    let mut dx = Array2::zeros(x.raw_dim());
    gemm(T::one(), dy, w, T::zero(), dx.view_mut())?;
    let mut dw = Array2::zeros(w.raw_dim());
    gemm(T::one(), dy.t(), x, T::zero(), dw.view_mut())?;
    let db = dy.sum_axis(Axis(0));
    Ok(LinearGrads { dx, dw, db })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random;
    use approx::assert_relative_eq;

    #[test]
    fn forward_matches_naive_loops() {
        let mut rng = random::seeded_rng(1);
        let x: Array2<f64> =
            random::normal(&[4, 6], 0.0, 1.0, &mut rng).into_dimensionality().unwrap();
        let w: Array2<f64> =
            random::normal(&[3, 6], 0.0, 1.0, &mut rng).into_dimensionality().unwrap();
        let b: Array1<f64> =
            random::normal(&[3], 0.0, 1.0, &mut rng).into_dimensionality().unwrap();
        let y = linear_forward(x.view(), w.view(), Some(b.view())).unwrap();
        let naive = Array2::from_shape_fn((4, 3), |(n, o)| {
            b[o] + (0..6).map(|i| x[[n, i]] * w[[o, i]]).sum::<f64>()
        });
        assert_relative_eq!(y, naive, max_relative = 1e-12);
    }
}
