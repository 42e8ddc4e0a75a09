//! The gradient checker: hand-written backward against central differences.
//!
//! It is public so that users check their own layers the way we check ours.
//! The checked scalar is `L = Σ y ⊙ r` for a fixed random `r` drawn from the
//! seed, so `dL/dy = r` and every output element takes part.

use std::fmt;

use ndarray::{ArrayD, IxDyn};
use rand::seq::index::sample;

use crate::{random, Error, Layer, Mode, Result};

/// Settings of a gradient check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradCheckConfig {
    /// Step of the central difference `(L(θ+h) − L(θ−h)) / 2h`. Default `1e-6`.
    pub step: f64,
    /// Largest accepted error. Default `1e-6`.
    pub tolerance: f64,
    /// Magnitude below which the error is absolute: `|a − n| / max(|a|, |n|, floor)`.
    /// Default `1.0`, since round-off in `L` makes tiny gradients noisy.
    pub floor: f64,
    /// At most this many entries per tensor, drawn from the seed (all by default).
    pub max_entries_per_tensor: usize,
}

impl Default for GradCheckConfig {
    fn default() -> Self {
        GradCheckConfig {
            step: 1e-6,
            tolerance: 1e-6,
            floor: 1.0,
            max_entries_per_tensor: usize::MAX,
        }
    }
}

/// The entry whose analytic and numeric gradients differ most.
#[derive(Debug, Clone, PartialEq)]
pub struct GradMismatch {
    /// `"input"`, `"input1"`, or a parameter's key such as `"weight"`.
    pub tensor: String,
    /// The entry's multi-index in that tensor.
    pub index: Vec<usize>,
    /// What `backward` gave.
    pub analytic: f64,
    /// What central differences gave.
    pub numeric: f64,
    /// `|analytic − numeric| / max(|analytic|, |numeric|, floor)`.
    pub error: f64,
}

/// What a gradient check found.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckReport {
    /// Entries compared, over all tensors.
    pub checked: usize,
    /// Tensors compared, by name, with their shapes.
    pub tensors: Vec<(String, Vec<usize>)>,
    /// The worst entry (`None` when nothing was checked).
    pub worst: Option<GradMismatch>,
    /// The tolerance the verdict uses.
    pub tolerance: f64,
}

impl GradCheckReport {
    /// The largest error seen (0 when nothing was checked).
    pub fn worst_error(&self) -> f64 {
        self.worst.as_ref().map_or(0.0, |w| w.error)
    }

    /// Whether every entry is within the tolerance (and the error is not NaN).
    pub fn passed(&self) -> bool {
        self.worst_error() <= self.tolerance
    }

    fn record(
        &mut self,
        tensor: &str,
        shape: &[usize],
        flat: usize,
        analytic: f64,
        numeric: f64,
        floor: f64,
    ) {
        self.checked += 1;
        self.compare(tensor, shape, flat, analytic, numeric, floor);
    }

    /// Compares one entry with what it should be, keeping the worst; a
    /// contract check, not counted in [`GradCheckReport::checked`].
    fn compare(
        &mut self,
        tensor: &str,
        shape: &[usize],
        flat: usize,
        analytic: f64,
        numeric: f64,
        floor: f64,
    ) {
        let scale = analytic.abs().max(numeric.abs()).max(floor);
        let mut error = (analytic - numeric).abs() / scale;
        if error.is_nan() {
            error = f64::INFINITY;
        }
        if self.worst.as_ref().is_none_or(|w| error > w.error) {
            self.worst = Some(GradMismatch {
                tensor: tensor.to_string(),
                index: unravel(flat, shape),
                analytic,
                numeric,
                error,
            });
        }
    }
}

impl fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        writeln!(
            f,
            "gradient check: {verdict} ({} entries, tolerance {:e})",
            self.checked, self.tolerance
        )?;
        for (name, shape) in &self.tensors {
            writeln!(f, "  checked {name} {shape:?}")?;
        }
        if let Some(w) = &self.worst {
            write!(
                f,
                "  worst: {}{:?} analytic {:.12e} numeric {:.12e} error {:.3e}",
                w.tensor, w.index, w.analytic, w.numeric, w.error
            )?;
        }
        Ok(())
    }
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            index[i] = flat % d;
            flat /= d;
        }
    }
    index
}

fn entries_to_check(len: usize, cfg: &GradCheckConfig, rng: &mut random::SeededRng) -> Vec<usize> {
    if len <= cfg.max_entries_per_tensor {
        (0..len).collect()
    } else {
        let mut picked = sample(rng, len, cfg.max_entries_per_tensor).into_vec();
        picked.sort_unstable();
        picked
    }
}

fn dot(y: &ArrayD<f64>, r: &ArrayD<f64>) -> Result<f64> {
    if y.shape() != r.shape() {
        return Err(Error::shape(
            "gradcheck",
            format!("output shape changed from {:?} to {:?}", r.shape(), y.shape()),
        ));
    }
    Ok(y.iter().zip(r.iter()).map(|(a, b)| a * b).sum())
}

fn standard(x: &ArrayD<f64>) -> ArrayD<f64> {
    x.as_standard_layout().into_owned()
}

/// Checks a layer's `backward` for its input and every trainable parameter.
///
/// Runs one train-mode forward and backward with upstream gradient `r` (drawn
/// from `seed`), then perturbs each checked entry by `±step` and runs forward
/// again. It also checks the [`Layer`] contract: after two forwards,
/// backward gives the same dx (the second forward replaced the cache), and a
/// second backward doubles every parameter gradient (backward adds with `+=`;
/// a layer that assigns fails, its tensor named in the report). The layer must compute the same function on every call (fix any
/// randomness, such as a dropout mask, before checking). Its grads are zeroed
/// first and hold the analytic gradients afterwards.
///
/// # Errors
/// Whatever the layer's forward or backward returns.
///
/// # Example
/// A layer a user writes, `y = a·x` with a learnable scalar `a`:
/// ```
/// use cnn_tensor::{gradcheck, join_key, ArrayD, Error, Layer, Mode, Param, Result};
///
/// struct Scale { a: Param<f64>, x: Option<ArrayD<f64>> }
///
/// impl Layer<f64> for Scale {
///     fn forward(&mut self, x: ArrayD<f64>, mode: Mode) -> Result<ArrayD<f64>> {
///         let y = &x * self.a.value()[[0]];
///         if mode == Mode::Train { self.x = Some(x); }
///         Ok(y)
///     }
///     fn backward(&mut self, dy: ArrayD<f64>) -> Result<ArrayD<f64>> {
///         let x = self.x.take().ok_or(Error::NoForward { op: "scale" })?;
///         self.a.grad[[0]] += (&x * &dy).sum();
///         Ok(dy * self.a.value()[[0]])
///     }
///     fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<f64>)) {
///         f(&join_key(prefix, "a"), &self.a);
///     }
///     fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<f64>)) {
///         f(&join_key(prefix, "a"), &mut self.a);
///     }
/// }
///
/// let mut layer = Scale { a: Param::new(ArrayD::from_elem(vec![1], 1.5)), x: None };
/// let x = cnn_tensor::random::normal(&[2, 3], 0.0, 1.0, &mut cnn_tensor::random::seeded_rng(0));
/// let report = gradcheck::check_layer(&mut layer, &x, 42, &Default::default())?;
/// assert!(report.passed(), "{report}");
/// # Ok::<(), Error>(())
/// ```
pub fn check_layer(
    layer: &mut dyn Layer<f64>,
    x: &ArrayD<f64>,
    seed: u64,
    cfg: &GradCheckConfig,
) -> Result<GradCheckReport> {
    let mut rng = random::seeded_rng(seed);
    let x = standard(x);
    layer.zero_grad();
    let y = layer.forward(x.clone(), Mode::Train)?;
    let r: ArrayD<f64> = random::normal(y.shape(), 0.0, 1.0, &mut rng);
    let dx = layer.backward(r.clone())?;
    if dx.shape() != x.shape() {
        return Err(Error::shape(
            "gradcheck",
            format!("backward gave dx {:?} for x {:?}", dx.shape(), x.shape()),
        ));
    }

    let mut report =
        GradCheckReport { checked: 0, tensors: Vec::new(), worst: None, tolerance: cfg.tolerance };
    let loss_at = |layer: &mut dyn Layer<f64>, input: ArrayD<f64>| -> Result<f64> {
        let y = layer.forward(input, Mode::Train)?;
        dot(&y, &r)
    };

    report.tensors.push(("input".into(), x.shape().to_vec()));
    let dx = standard(&dx);
    for i in entries_to_check(x.len(), cfg, &mut rng) {
        let mut xp = x.clone();
        let xs =
            xp.as_slice_mut().ok_or_else(|| Error::shape("gradcheck", "input not contiguous"))?;
        let orig = xs[i];
        xs[i] = orig + cfg.step;
        let lp = loss_at(layer, xp.clone())?;
        let xs =
            xp.as_slice_mut().ok_or_else(|| Error::shape("gradcheck", "input not contiguous"))?;
        xs[i] = orig - cfg.step;
        let lm = loss_at(layer, xp)?;
        let numeric = (lp - lm) / (2.0 * cfg.step);
        report.record(
            "input",
            x.shape(),
            i,
            dx.as_slice().map_or(f64::NAN, |d| d[i]),
            numeric,
            cfg.floor,
        );
    }

    // Snapshot analytic grads of trainable params; make values contiguous to index them.
    let mut params: Vec<(String, ArrayD<f64>)> = Vec::new();
    layer.visit_mut("", &mut |key, p| {
        if p.trainable {
            let new_value = p.value().as_standard_layout().into_owned();
            p.set_value(new_value);
            params.push((key.to_string(), standard(&p.grad)));
        }
    });
    for (key, grad) in &params {
        report.tensors.push((key.clone(), grad.shape().to_vec()));
        for i in entries_to_check(grad.len(), cfg, &mut rng) {
            let mut numeric_parts = [0.0; 2];
            for (slot, sign) in [(0, 1.0), (1, -1.0)] {
                nudge(layer, key, i, sign * cfg.step);
                let l = loss_at(layer, x.clone());
                nudge(layer, key, i, -sign * cfg.step);
                numeric_parts[slot] = l?;
            }
            let numeric = (numeric_parts[0] - numeric_parts[1]) / (2.0 * cfg.step);
            let analytic = grad.as_slice().map_or(f64::NAN, |g| g[i]);
            report.record(key, grad.shape(), i, analytic, numeric, cfg.floor);
        }
    }
    // The Layer contract, checked on the side: a second forward replaces the
    // cache (backward then gives the same dx), and backward *adds* into the
    // grads (a second backward doubles them; `=` instead of `+=` halves that).
    layer.zero_grad();
    layer.forward(x.clone(), Mode::Train)?;
    layer.forward(x.clone(), Mode::Train)?;
    let dx_again = standard(&layer.backward(r.clone())?);
    for (i, (&a, &b)) in dx_again.iter().zip(dx.iter()).enumerate() {
        report.compare("input (after a second forward)", x.shape(), i, a, b, cfg.floor);
    }
    let mut once: Vec<ArrayD<f64>> = Vec::new();
    layer.visit("", &mut |_, p| {
        if p.trainable {
            once.push(standard(&p.grad));
        }
    });
    layer.forward(x.clone(), Mode::Train)?;
    layer.backward(r.clone())?;
    let mut twice: Vec<(String, ArrayD<f64>)> = Vec::new();
    layer.visit("", &mut |key, p| {
        if p.trainable {
            twice.push((format!("{key} (a second backward must add to it)"), standard(&p.grad)));
        }
    });
    for ((name, g2), g1) in twice.iter().zip(&once) {
        for (i, (&a, &b)) in g2.iter().zip(g1.iter()).enumerate() {
            report.compare(name, g2.shape(), i, a, 2.0 * b, cfg.floor);
        }
    }
    // Leave the layer's grads as one backward made them.
    layer.zero_grad();
    layer.forward(x, Mode::Train)?;
    layer.backward(r)?;
    Ok(report)
}

fn nudge(layer: &mut dyn Layer<f64>, key: &str, flat: usize, by: f64) {
    layer.visit_mut("", &mut |k, p| {
        if k == key {
            if let Some(v) = p.value_mut().as_slice_mut().and_then(|s| s.get_mut(flat)) {
                *v += by;
            }
        }
    });
}

/// Checks a function of several inputs against its hand-written gradients.
///
/// `forward(inputs)` gives `y`; `backward(inputs, dy)` gives one gradient per
/// input, each of its input's shape. The inputs are named `input0`, `input1`, …
/// in the report. Use it for kernels (`conv2d_forward(x, w, b)`) and losses.
///
/// # Errors
/// Whatever `forward` or `backward` return, and [`Error::Shape`] when
/// `backward` gives the wrong number or shapes of gradients.
pub fn check_fn<F, B>(
    mut forward: F,
    mut backward: B,
    inputs: &[ArrayD<f64>],
    seed: u64,
    cfg: &GradCheckConfig,
) -> Result<GradCheckReport>
where
    F: FnMut(&[ArrayD<f64>]) -> Result<ArrayD<f64>>,
    B: FnMut(&[ArrayD<f64>], &ArrayD<f64>) -> Result<Vec<ArrayD<f64>>>,
{
    let mut rng = random::seeded_rng(seed);
    let mut inputs: Vec<ArrayD<f64>> = inputs.iter().map(standard).collect();
    let y = forward(&inputs)?;
    let r: ArrayD<f64> = random::normal(y.shape(), 0.0, 1.0, &mut rng);
    let grads = backward(&inputs, &r)?;
    if grads.len() != inputs.len() || grads.iter().zip(&inputs).any(|(g, x)| g.shape() != x.shape())
    {
        return Err(Error::shape(
            "gradcheck",
            "backward must give one gradient per input, each of its input's shape",
        ));
    }
    let mut report =
        GradCheckReport { checked: 0, tensors: Vec::new(), worst: None, tolerance: cfg.tolerance };
    for (t, grad) in grads.iter().enumerate() {
        let name = format!("input{t}");
        let grad = standard(grad);
        let shape = inputs[t].shape().to_vec();
        report.tensors.push((name.clone(), shape.clone()));
        for i in entries_to_check(grad.len(), cfg, &mut rng) {
            let mut l = [0.0; 2];
            for (slot, sign) in [(0, 1.0), (1, -1.0)] {
                bump(&mut inputs[t], i, sign * cfg.step);
                let y = forward(&inputs);
                bump(&mut inputs[t], i, -sign * cfg.step);
                l[slot] = dot(&y?, &r)?;
            }
            let numeric = (l[0] - l[1]) / (2.0 * cfg.step);
            report.record(
                &name,
                &shape,
                i,
                grad.as_slice().map_or(f64::NAN, |g| g[i]),
                numeric,
                cfg.floor,
            );
        }
    }
    Ok(report)
}

fn bump(x: &mut ArrayD<f64>, flat: usize, by: f64) {
    if let Some(v) = x.as_slice_mut().and_then(|s| s.get_mut(flat)) {
        *v += by;
    }
}

/// A convenience for tests: `ArrayD` from a shape and a flat vector.
///
/// # Errors
/// [`Error::Shape`] when the lengths differ.
pub fn tensor(shape: &[usize], data: Vec<f64>) -> Result<ArrayD<f64>> {
    ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| Error::shape("tensor", e.to_string()))
}

/// A layer re-seeded with the same seed before every forward, so that its
/// random parts (dropout, drop path) draw the same masks each time and the
/// gradient checker sees one function: `check_layer(&mut FixedSeed(block, 7), …)`.
pub struct FixedSeed<L>(pub L, pub u64);

impl<T: crate::Float, L: Layer<T>> Layer<T> for FixedSeed<L> {
    fn forward(&mut self, x: ArrayD<T>, mode: crate::Mode) -> Result<ArrayD<T>> {
        self.0.reseed(self.1);
        self.0.forward(x, mode)
    }
    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        self.0.backward(dy)
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut crate::Param<T>)) {
        self.0.visit_mut(prefix, f);
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &crate::Param<T>)) {
        self.0.visit(prefix, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{join_key, Param};

    /// `y[n, i] = x[n, i]·w[i]`, with a learnable `weight` `w`.
    struct Scale {
        w: Param<f64>,
        x: Option<ArrayD<f64>>,
        /// Assign the gradient (`=`) instead of adding to it (`+=`): the bug.
        assigns: bool,
    }

    impl Scale {
        fn new(d: usize, assigns: bool) -> Self {
            let w = random::normal(&[d], 1.0, 0.5, &mut random::seeded_rng(9));
            Scale { w: Param::new(w), x: None, assigns }
        }
    }

    impl Layer<f64> for Scale {
        fn forward(&mut self, x: ArrayD<f64>, mode: Mode) -> Result<ArrayD<f64>> {
            let y = &x * self.w.value();
            self.x = (mode == Mode::Train).then_some(x);
            Ok(y)
        }
        fn backward(&mut self, dy: ArrayD<f64>) -> Result<ArrayD<f64>> {
            let x = self.x.take().ok_or(Error::NoForward { op: "scale" })?;
            let dw = (&x * &dy).sum_axis(ndarray::Axis(0));
            if self.assigns {
                self.w.grad.assign(&dw);
            } else {
                self.w.grad += &dw;
            }
            Ok(dy * self.w.value())
        }
        fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<f64>)) {
            f(&join_key(prefix, "weight"), &self.w);
        }
        fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<f64>)) {
            f(&join_key(prefix, "weight"), &mut self.w);
        }
    }

    #[test]
    fn a_correct_layer_passes() {
        let mut layer = Scale::new(4, false);
        let x = random::normal(&[5, 4], 0.0, 1.0, &mut random::seeded_rng(0));
        let report = check_layer(&mut layer, &x, 7, &GradCheckConfig::default()).unwrap();
        assert!(report.passed(), "{report}");
        assert_eq!(report.checked, 20 + 4);
    }

    #[test]
    fn a_layer_that_assigns_its_gradient_fails() {
        let mut layer = Scale::new(4, true);
        let x = random::normal(&[5, 4], 0.0, 1.0, &mut random::seeded_rng(0));
        let report = check_layer(&mut layer, &x, 7, &GradCheckConfig::default()).unwrap();
        assert!(!report.passed(), "{report}");
        let worst = report.worst.unwrap();
        assert_eq!(worst.tensor, "weight (a second backward must add to it)");
        assert!((worst.error - 0.5).abs() < 1e-9, "{}", worst.error);
    }

    #[test]
    fn a_wrong_backward_fails_and_is_located() {
        // y = x², with a backward that forgets the factor 2 on entry [1, 2].
        let forward = |xs: &[ArrayD<f64>]| Ok(xs[0].mapv(|v| v * v));
        let backward = |xs: &[ArrayD<f64>], dy: &ArrayD<f64>| {
            let mut g = &xs[0] * dy * 2.0;
            g[[1, 2]] /= 2.0;
            Ok(vec![g])
        };
        let x = tensor(&[2, 3], vec![1.0, -2.0, 3.0, 0.5, 1.5, 2.5]).unwrap();
        let report = check_fn(forward, backward, &[x], 1, &GradCheckConfig::default()).unwrap();
        assert!(!report.passed());
        let worst = report.worst.unwrap();
        assert_eq!((worst.tensor.as_str(), worst.index.as_slice()), ("input0", &[1usize, 2][..]));
        approx::assert_relative_eq!(worst.error, 0.5, max_relative = 1e-6);
    }

    #[test]
    fn sampling_limits_the_work() {
        let forward = |xs: &[ArrayD<f64>]| Ok(xs[0].mapv(f64::sin));
        let backward = |xs: &[ArrayD<f64>], dy: &ArrayD<f64>| Ok(vec![xs[0].mapv(f64::cos) * dy]);
        let x = random::normal(&[10, 10], 0.0, 1.0, &mut random::seeded_rng(3));
        let cfg = GradCheckConfig { max_entries_per_tensor: 7, ..Default::default() };
        let report = check_fn(forward, backward, &[x], 1, &cfg).unwrap();
        assert_eq!(report.checked, 7);
        assert!(report.passed(), "{report}");
    }
}
