//! Inverted dropout (`nn.Dropout`).

use cnn_tensor::random::{seeded_rng, SeededRng};
use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};
use rand::Rng;

/// Inverted dropout: in training each element is kept with probability
/// `1 − p` and scaled by `1/(1 − p)`, so the expected output equals the input
/// and evaluation needs no rescaling; in evaluation it is the identity.
///
/// The masks come from a generator seeded by the caller: the same seed gives
/// the same sequence of masks. At `p = 1` every output is zero (no division
/// by zero, no NaN); at `p = 0` the input passes unchanged.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    rng: SeededRng,
    mask: Option<Vec<bool>>,
}

impl Dropout {
    /// Dropout with drop probability `p`, masks drawn from `seed`.
    ///
    /// # Errors
    /// [`Error::Config`] when `p` is outside `[0, 1]` (or NaN).
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::config("dropout", format!("p must be in [0, 1], got {p}")));
        }
        Ok(Dropout { p, rng: seeded_rng(seed), mask: None })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The scale survivors get: `1/(1 − p)`, or 0 at `p = 1`.
    fn scale<T: Float>(&self) -> T {
        if self.p >= 1.0 {
            T::zero()
        } else {
            T::of(1.0 / (1.0 - self.p))
        }
    }
}

impl<T: Float> Layer<T> for Dropout {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if mode == Mode::Eval {
            self.mask = None;
            return Ok(x);
        }
        let scale: T = self.scale();
        let p = self.p;
        let mask: Vec<bool> = (0..x.len()).map(|_| self.rng.random::<f64>() >= p).collect();
        let mut x = if x.is_standard_layout() { x } else { x.as_standard_layout().into_owned() };
        for (v, &keep) in x.iter_mut().zip(&mask) {
            *v = if keep { *v * scale } else { T::zero() };
        }
        self.mask = Some(mask);
        Ok(x)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let mask = self.mask.take().ok_or(Error::NoForward { op: "dropout" })?;
        if mask.len() != dy.len() {
            return Err(Error::shape(
                "dropout",
                format!("dy has {} elements, the forward had {}", dy.len(), mask.len()),
            ));
        }
        let scale: T = self.scale();
        let mut dy =
            if dy.is_standard_layout() { dy } else { dy.as_standard_layout().into_owned() };
        for (g, &keep) in dy.iter_mut().zip(&mask) {
            *g = if keep { *g * scale } else { T::zero() };
        }
        Ok(dy)
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}

    fn reseed(&mut self, seed: u64) {
        self.rng = seeded_rng(seed);
    }
}
