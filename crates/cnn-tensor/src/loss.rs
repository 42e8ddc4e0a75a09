//! Softmax, log-softmax and cross-entropy with label smoothing.

use ndarray::{Array2, ArrayD, ArrayView2, Axis, Ix2};

use crate::{Error, Float, Result};

/// Numerically stable `log_softmax` over the last axis (`torch.log_softmax(x, dim=1)`).
///
/// `log pᵢⱼ = xᵢⱼ − maxⱼ xᵢ − log Σⱼ exp(xᵢⱼ − maxⱼ xᵢ)`: shifting by the row's
/// maximum keeps `exp` from overflowing for large logits.
///
/// # Shapes
/// `logits: [n, classes]` → `[n, classes]`.
pub fn log_softmax<T: Float>(logits: ArrayView2<'_, T>) -> Array2<T> {
    let mut out = logits.to_owned();
    for mut row in out.axis_iter_mut(Axis(0)) {
        let max = row.fold(T::neg_infinity(), |m, &v| m.max(v));
        let log_sum = row.iter().map(|&v| (v - max).exp()).sum::<T>().ln();
        row.mapv_inplace(|v| v - max - log_sum);
    }
    out
}

/// Softmax over the last axis (`torch.softmax(x, dim=1)`), stable as [`log_softmax`].
///
/// # Shapes
/// `logits: [n, classes]` → `[n, classes]`, rows summing to one.
pub fn softmax<T: Float>(logits: ArrayView2<'_, T>) -> Array2<T> {
    log_softmax(logits).mapv_into(T::exp)
}

fn check_cross_entropy<T: Float>(
    logits: &ArrayView2<'_, T>,
    targets: &[usize],
    label_smoothing: f64,
) -> Result<()> {
    const OP: &str = "cross_entropy";
    let (n, c) = logits.dim();
    if n == 0 || c == 0 {
        return Err(Error::shape(
            OP,
            format!("logits must be [n, classes] with both positive, got [{n}, {c}]"),
        ));
    }
    if targets.len() != n {
        return Err(Error::shape(OP, format!("{} targets for {n} rows of logits", targets.len())));
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= c) {
        return Err(Error::shape(OP, format!("target {t} at row {i} is not a class of {c}")));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::config(
            OP,
            format!("label_smoothing must be in [0, 1], got {label_smoothing}"),
        ));
    }
    Ok(())
}

/// Mean cross-entropy of `logits` against class indices, with label smoothing
/// (`F.cross_entropy(logits, target, label_smoothing=ε)`).
///
/// The target distribution is `q = (1 − ε)·onehot(t) + ε/C`, and
/// `loss = mean over rows of −Σⱼ qⱼ log softmax(x)ⱼ`.
///
/// # Shapes
/// `logits: [n, C]`, `targets: [n]` with values `< C` → a scalar.
///
/// # Errors
/// [`Error::Shape`] for an empty batch, a target count other than `n` or a
/// target out of range; [`Error::Config`] for `ε` outside `[0, 1]`.
pub fn cross_entropy_forward<T: Float>(
    logits: ArrayView2<'_, T>,
    targets: &[usize],
    label_smoothing: f64,
) -> Result<T> {
    check_cross_entropy(&logits, targets, label_smoothing)?;
    let (n, c) = logits.dim();
    let log_p = log_softmax(logits);
    let eps = T::of(label_smoothing);
    let mut total = T::zero();
    for (row, &t) in log_p.axis_iter(Axis(0)).zip(targets) {
        let nll = -row[t];
        let smooth = -row.sum() / T::of(c as f64);
        total += (T::one() - eps) * nll + eps * smooth;
    }
    Ok(total / T::of(n as f64))
}

/// dL/dlogits of [`cross_entropy_forward`] scaled by the upstream `dloss`:
/// `(softmax(x) − q) · dloss / n`.
///
/// # Shapes
/// `logits: [n, C]`, `targets: [n]` → `[n, C]`.
///
/// # Errors
/// As [`cross_entropy_forward`].
pub fn cross_entropy_backward<T: Float>(
    logits: ArrayView2<'_, T>,
    targets: &[usize],
    label_smoothing: f64,
    dloss: T,
) -> Result<Array2<T>> {
    check_cross_entropy(&logits, targets, label_smoothing)?;
    let (n, c) = logits.dim();
    let mut grad = softmax(logits);
    let eps = T::of(label_smoothing);
    let uniform = eps / T::of(c as f64);
    let scale = dloss / T::of(n as f64);
    for (mut row, &t) in grad.axis_iter_mut(Axis(0)).zip(targets) {
        row[t] -= T::one() - eps;
        row.mapv_inplace(|p| (p - uniform) * scale);
    }
    Ok(grad)
}

/// Mean cross-entropy and its gradient in one call, on a model's output as
/// it comes (`ArrayD`): `(loss, dL/dlogits)`, ready for `model.backward`.
/// Equal to [`cross_entropy_forward`] and [`cross_entropy_backward`] with
/// `dloss = 1`.
///
/// ```
/// use cnn_tensor::{cross_entropy, ArrayD};
/// let logits = ArrayD::from_shape_vec(vec![2, 3], vec![2.0, 0.5, -1.0, 0.0, 0.0, 3.0])?;
/// let (loss, dlogits) = cross_entropy(&logits, &[0, 2], 0.0)?;
/// assert!(loss > 0.0 && loss < 0.3);
/// assert_eq!(dlogits.shape(), logits.shape());
/// # Ok::<(), cnn_tensor::Error>(())
/// ```
///
/// # Shapes
/// `logits: [n, C]`, `targets: [n]` → `(scalar, [n, C])`.
///
/// # Errors
/// [`Error::Shape`] when `logits` is not 2-D; otherwise as [`cross_entropy_forward`].
pub fn cross_entropy<T: Float>(
    logits: &ArrayD<T>,
    targets: &[usize],
    label_smoothing: f64,
) -> Result<(T, ArrayD<T>)> {
    let logits2 = logits.view().into_dimensionality::<Ix2>().map_err(|_| {
        Error::shape(
            "cross_entropy",
            format!("logits must be [n, classes], got {:?}", logits.shape()),
        )
    })?;
    let loss = cross_entropy_forward(logits2, targets, label_smoothing)?;
    let dlogits = cross_entropy_backward(logits2, targets, label_smoothing, T::one())?;
    Ok((loss, dlogits.into_dyn()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn huge_logits_stay_finite() {
        let x = array![[1000.0f32, 0.0, -1000.0], [-5e30, 5e30, 0.0]];
        let lp = log_softmax(x.view());
        assert!(lp.iter().all(|v| v.is_finite() || *v == f32::NEG_INFINITY), "{lp}");
        assert_eq!(lp[[0, 0]], 0.0);
        let loss = cross_entropy_forward(x.view(), &[0, 1], 0.0).unwrap();
        assert_eq!(loss, 0.0);
    }

    #[test]
    fn uniform_logits_give_log_c() {
        let x = Array2::<f64>::zeros((4, 10));
        let loss = cross_entropy_forward(x.view(), &[0, 3, 9, 2], 0.1).unwrap();
        approx::assert_relative_eq!(loss, 10f64.ln(), max_relative = 1e-15);
    }

    #[test]
    fn bad_targets_are_errors() {
        let x = Array2::<f32>::zeros((2, 3));
        let msg = cross_entropy_forward(x.view(), &[0, 3], 0.0).unwrap_err().to_string();
        assert_eq!(msg, "cross_entropy: target 3 at row 1 is not a class of 3");
        assert!(cross_entropy_forward(x.view(), &[0], 0.0).is_err());
        assert!(cross_entropy_backward(x.view(), &[0, 1], 1.5, 1.0).is_err());
        assert!(cross_entropy_forward(Array2::<f32>::zeros((0, 3)).view(), &[], 0.0).is_err());
    }
}

#[cfg(test)]
mod one_call {
    use super::*;

    #[test]
    fn one_call_equals_forward_and_backward() {
        let logits = crate::random::normal(&[4, 5], 0.0, 2.0, &mut crate::random::seeded_rng(1));
        let t = [0, 4, 2, 2];
        let (loss, d) = cross_entropy::<f64>(&logits, &t, 0.1).unwrap();
        let l2 = logits.view().into_dimensionality::<Ix2>().unwrap();
        assert_eq!(loss, cross_entropy_forward(l2, &t, 0.1).unwrap());
        assert_eq!(d, cross_entropy_backward(l2, &t, 0.1, 1.0).unwrap().into_dyn());
        let e = cross_entropy::<f64>(&ArrayD::zeros(vec![4]), &t, 0.0).unwrap_err();
        assert_eq!(e.to_string(), "cross_entropy: logits must be [n, classes], got [4]");
    }
}
