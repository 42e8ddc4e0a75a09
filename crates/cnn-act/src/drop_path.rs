//! Stochastic depth (`timm.layers.DropPath`).

use cnn_tensor::random::{seeded_rng, SeededRng};
use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};
use rand::Rng;

/// Stochastic depth on a residual branch: in training each **sample**'s
/// branch output is kept with probability `1 − p` and scaled by `1/(1 − p)`,
/// or zeroed whole; in evaluation, and at `p = 0`, it is the identity (timm's
/// `DropPath`, `scale_by_keep=True`). The per-sample mask is kept for backward.
///
/// Masks come from a generator seeded by the caller, as [`crate::Dropout`]'s.
///
/// # Shapes
/// `x: [N, …]` → the same shape.
#[derive(Debug, Clone)]
pub struct DropPath {
    p: f64,
    rng: SeededRng,
    mask: Option<Vec<bool>>,
}

impl DropPath {
    /// Drop probability `p` per sample, masks drawn from `seed`.
    ///
    /// # Errors
    /// [`Error::Config`] when `p` is outside `[0, 1)`: dropping every branch
    /// always would leave nothing to scale.
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config("drop_path", format!("p must be in [0, 1), got {p}")));
        }
        Ok(DropPath { p, rng: seeded_rng(seed), mask: None })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Multiplies sample `i` of `x` by `1/(1 − p)` when kept, 0 when dropped.
    fn apply<T: Float>(&self, mut x: ArrayD<T>, mask: &[bool]) -> ArrayD<T> {
        let scale = T::of(1.0 / (1.0 - self.p));
        if !x.is_standard_layout() {
            x = x.as_standard_layout().into_owned();
        }
        let per = x.len() / mask.len().max(1);
        if let Some(values) = x.as_slice_mut() {
            for (chunk, &keep) in values.chunks_mut(per.max(1)).zip(mask) {
                let s = if keep { scale } else { T::zero() };
                chunk.iter_mut().for_each(|v| *v *= s);
            }
        }
        x
    }
}

impl<T: Float> Layer<T> for DropPath {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if x.ndim() == 0 || x.shape()[0] == 0 {
            return Err(Error::shape(
                "drop_path",
                format!("input must have a non-empty batch axis, got {:?}", x.shape()),
            ));
        }
        if mode == Mode::Eval || self.p == 0.0 {
            self.mask = (mode == Mode::Train).then(|| vec![true; x.shape()[0]]);
            return Ok(x);
        }
        let p = self.p;
        let mask: Vec<bool> = (0..x.shape()[0]).map(|_| self.rng.random::<f64>() >= p).collect();
        let y = self.apply(x, &mask);
        self.mask = Some(mask);
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let mask = self.mask.take().ok_or(Error::NoForward { op: "drop_path" })?;
        if dy.ndim() == 0 || dy.shape()[0] != mask.len() {
            return Err(Error::shape(
                "drop_path",
                format!("dy is {:?}, the forward had a batch of {}", dy.shape(), mask.len()),
            ));
        }
        if self.p == 0.0 {
            return Ok(dy);
        }
        Ok(self.apply(dy, &mask))
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}

    fn reseed(&mut self, seed: u64) {
        self.rng = seeded_rng(seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnn_tensor::random::normal;

    #[test]
    fn whole_samples_are_kept_or_dropped_and_scaled() {
        let mut dp = DropPath::new(0.5, 3).unwrap();
        let x: ArrayD<f64> = normal(&[64, 2, 3, 3], 1.0, 1.0, &mut seeded_rng(0));
        let y = dp.forward(x.clone(), Mode::Train).unwrap();
        let mut kept = 0;
        for (xs, ys) in x.outer_iter().zip(y.outer_iter()) {
            if ys.iter().all(|&v| v == 0.0) {
                continue;
            }
            kept += 1;
            for (a, b) in xs.iter().zip(ys.iter()) {
                assert_eq!(*b, a * 2.0);
            }
        }
        assert!((16..48).contains(&kept), "{kept}");
        let dx: ArrayD<f64> = dp.backward(ArrayD::ones(x.raw_dim())).unwrap();
        for (ys, ds) in y.outer_iter().zip(dx.outer_iter()) {
            let dropped = ys.iter().all(|&v| v == 0.0);
            assert!(ds.iter().all(|&d| d == if dropped { 0.0 } else { 2.0 }));
        }
        assert_eq!(dp.forward(x.clone(), Mode::Eval).unwrap(), x);
        assert!(DropPath::new(1.0, 0).is_err() && DropPath::new(-0.1, 0).is_err());
        assert!(Layer::<f64>::backward(&mut dp, ArrayD::ones(x.raw_dim())).is_err());
    }
}
