//! Elementwise activations: forward and backward as pure functions.
//!
//! Each forward takes the input by value and overwrites it (the caller gives
//! up ownership, so no new buffer is needed); each backward overwrites the
//! upstream gradient it is given. Large tensors are split over rayon in
//! fixed chunks; each element is computed alone, so threads never change a bit.

use std::mem::MaybeUninit;

use cnn_tensor::{simd, ArrayD, Error, Float, Result};
use rayon::prelude::*;

/// Elements per parallel chunk: large enough to amortize a task.
const CHUNK: usize = 1 << 15;

/// The activations of this crate, with their settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`; derivative 0 at 0, as PyTorch.
    Relu,
    /// `x` for `x > 0`, else `slope·x` (PyTorch's default slope is 0.01).
    LeakyRelu(f64),
    /// `1 / (1 + e^(−x))`, computed without overflow for large `|x|`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `x·Φ(x) = x/2·(1 + erf(x/√2))` (`F.gelu(x)`).
    Gelu,
    /// `x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (`F.gelu(x, approximate="tanh")`).
    GeluTanh,
}

impl Activation {
    /// PyTorch's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Gelu | Activation::GeluTanh => "gelu",
        }
    }

    /// Whether backward needs only the sign of the input (ReLU, LeakyReLU):
    /// the layer then works in place and keeps a byte mask.
    pub fn is_rectifier(&self) -> bool {
        matches!(self, Activation::Relu | Activation::LeakyRelu(_))
    }

    /// Whether backward needs the output (`Sigmoid`, `Tanh`) rather than the input.
    pub fn backward_from_output(&self) -> bool {
        matches!(self, Activation::Sigmoid | Activation::Tanh)
    }

    fn check(&self) -> Result<()> {
        match self {
            Activation::LeakyRelu(s) if !s.is_finite() => {
                Err(Error::config("leaky_relu", format!("negative_slope must be finite, got {s}")))
            }
            _ => Ok(()),
        }
    }

    /// The activation of one value.
    pub fn value<T: Float>(&self, x: T) -> T {
        let half = T::of(0.5);
        match *self {
            Activation::Relu => {
                if x > T::zero() {
                    x
                } else {
                    T::zero()
                }
            }
            Activation::LeakyRelu(s) => {
                if x > T::zero() {
                    x
                } else {
                    x * T::of(s)
                }
            }
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => {
                half * x * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
            }
            Activation::GeluTanh => half * x * (T::one() + gelu_tanh_inner(x).tanh()),
        }
    }

    /// dy/dx at one point, given the input `x` or (for `Sigmoid`, `Tanh`) the output `y`.
    pub fn derivative<T: Float>(&self, x_or_y: T) -> T {
        let half = T::of(0.5);
        match *self {
            Activation::Relu => {
                if x_or_y > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            Activation::LeakyRelu(s) => {
                if x_or_y > T::zero() {
                    T::one()
                } else {
                    T::of(s)
                }
            }
            Activation::Sigmoid => x_or_y * (T::one() - x_or_y),
            Activation::Tanh => T::one() - x_or_y * x_or_y,
            Activation::Gelu => {
                let x = x_or_y;
                let cdf = half * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
                let pdf = (-half * x * x).exp() * T::of(1.0 / (2.0 * std::f64::consts::PI).sqrt());
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let x = x_or_y;
                let t = gelu_tanh_inner(x).tanh();
                let k = T::of((2.0 / std::f64::consts::PI).sqrt());
                half * (T::one() + t)
                    + half * x * (T::one() - t * t) * k * (T::one() + T::of(3.0 * GELU_C) * x * x)
            }
        }
    }
}

const GELU_C: f64 = 0.044715;

fn gelu_tanh_inner<T: Float>(x: T) -> T {
    T::of((2.0 / std::f64::consts::PI).sqrt()) * (x + T::of(GELU_C) * x * x * x)
}

/// `1/(1 + e^(−x))` for `x ≥ 0` and `e^x/(1 + e^x)` below: `exp` only ever sees
/// a non-positive argument, so it cannot overflow.
fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

fn for_each_chunk<T: Float>(data: &mut [T], f: impl Fn(&mut [T]) + Sync + Send) {
    if data.len() <= CHUNK {
        f(data);
    } else {
        data.par_chunks_mut(CHUNK).for_each(f);
    }
}

fn contiguous<T: Float>(a: ArrayD<T>) -> ArrayD<T> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// Expands `$body` once per activation with `$f` bound to that activation's
/// function as a concrete closure: the `match` happens once, not per element,
/// so each loop is specialized (and vectorized, for ReLU).
macro_rules! with_value {
    ($T:ty, $act:expr, |$f:ident| $body:expr) => {
        match $act {
            Activation::Relu => {
                let $f = |x: $T| if x > <$T>::zero() { x } else { <$T>::zero() };
                $body
            }
            Activation::LeakyRelu(s) => {
                let s = <$T>::of(s);
                let $f = move |x: $T| if x > <$T>::zero() { x } else { x * s };
                $body
            }
            other => {
                let $f = move |x: $T| other.value(x);
                $body
            }
        }
    };
}

/// As `with_value!`, for the derivative (of the input, or of the output for sigmoid and tanh).
macro_rules! with_derivative {
    ($T:ty, $act:expr, |$d:ident| $body:expr) => {
        match $act {
            Activation::Relu => {
                let $d = |x: $T| if x > <$T>::zero() { <$T>::one() } else { <$T>::zero() };
                $body
            }
            Activation::LeakyRelu(s) => {
                let s = <$T>::of(s);
                let $d = move |x: $T| if x > <$T>::zero() { <$T>::one() } else { s };
                $body
            }
            Activation::Sigmoid => {
                let $d = |y: $T| y * (<$T>::one() - y);
                $body
            }
            Activation::Tanh => {
                let $d = |y: $T| <$T>::one() - y * y;
                $body
            }
            other => {
                let $d = move |x: $T| other.derivative(x);
                $body
            }
        }
    };
}

/// `act(x)`, elementwise, in `x`'s own buffer (`F.relu`, `torch.sigmoid`, `F.gelu`, …).
///
/// # Shapes
/// Any shape; the output has the input's.
///
/// # Errors
/// [`Error::Config`] for a non-finite leaky slope.
pub fn activation_forward<T: Float>(act: Activation, x: ArrayD<T>) -> Result<ArrayD<T>> {
    act.check()?;
    let mut x = contiguous(x);
    if let Some(data) = x.as_slice_mut() {
        if let (Activation::Gelu, Some(data)) = (act, T::as_f32_mut(data)) {
            for_each_chunk(data, crate::fast_f32::gelu_forward);
        } else {
            with_value!(T, act, |f| for_each_chunk(data, |c| c
                .iter_mut()
                .for_each(|v| *v = f(*v))));
        }
    }
    Ok(x)
}

/// `act(v)` for every value of a slice, in place, on this thread: the
/// epilogue of a product that applies the activation to each tile of its
/// output while it is in cache (ConvNeXt's `fc1`). The same numbers as
/// [`activation_forward`], bit for bit.
///
/// # Errors
/// [`Error::Config`] for a non-finite leaky slope.
pub fn activation_in_place<T: Float>(act: Activation, data: &mut [T]) -> Result<()> {
    act.check()?;
    if let (Activation::Gelu, Some(data)) = (act, T::as_f32_mut(data)) {
        crate::fast_f32::gelu_forward(data);
    } else {
        with_value!(T, act, |f| data.iter_mut().for_each(|v| *v = f(*v)));
    }
    Ok(())
}

/// `act(x)` into a new tensor, leaving `x` as it is: what a layer that keeps
/// its input for backward uses, instead of copying the input first.
///
/// # Errors
/// [`Error::Config`] for a non-finite leaky slope.
pub fn activation_forward_copy<T: Float>(act: Activation, x: &ArrayD<T>) -> Result<ArrayD<T>> {
    act.check()?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().ok_or_else(|| Error::shape(act.name(), "input is not contiguous"))?;
    let mut out = simd::uninit_vec::<T>(xs.len());
    let work = |ys: &mut [MaybeUninit<T>], xs: &[T]| {
        let gelu_f32 = match act {
            Activation::Gelu => T::as_f32(xs).zip(T::as_f32_uninit(ys)),
            _ => None,
        };
        if let Some((x32, y32)) = gelu_f32 {
            crate::fast_f32::gelu_forward_out(x32, y32);
        } else {
            with_value!(T, act, |f| {
                for (y, &v) in ys.iter_mut().zip(xs) {
                    y.write(f(v));
                }
            });
        }
    };
    if xs.len() <= CHUNK {
        work(&mut out, xs);
    } else {
        out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(ys, xs)| work(ys, xs));
    }
    // SAFETY: `work` wrote every slot: the chunks cover the whole of `out`.
    let out = unsafe { simd::assume_init(out) };
    ArrayD::from_shape_vec(x.raw_dim(), out).map_err(|e| Error::shape(act.name(), e.to_string()))
}

/// dL/dx = dL/dy · act'(·), in `dy`'s own buffer. `saved` is the forward's
/// input, or its output for `Sigmoid` and `Tanh` (see [`Activation::backward_from_output`]).
///
/// # Shapes
/// `saved` and `dy` of the same shape.
///
/// # Errors
/// [`Error::Shape`] when the shapes differ; [`Error::Config`] for a non-finite slope.
pub fn activation_backward<T: Float>(
    act: Activation,
    saved: &ArrayD<T>,
    dy: ArrayD<T>,
) -> Result<ArrayD<T>> {
    act.check()?;
    if saved.shape() != dy.shape() {
        return Err(Error::shape(
            act.name(),
            format!("dy is {:?}, expected the output shape {:?}", dy.shape(), saved.shape()),
        ));
    }
    let mut dy = contiguous(dy);
    let saved = saved.as_standard_layout();
    if let (Some(g), Some(s)) = (dy.as_slice_mut(), saved.as_slice()) {
        if let (Activation::Gelu, Some(g32), Some(s32)) = (act, T::as_f32_mut(g), T::as_f32(s)) {
            if g32.len() <= CHUNK {
                crate::fast_f32::gelu_backward(g32, s32);
            } else {
                g32.par_chunks_mut(CHUNK)
                    .zip(s32.par_chunks(CHUNK))
                    .for_each(|(gc, sc)| crate::fast_f32::gelu_backward(gc, sc));
            }
        } else if g.len() <= CHUNK {
            with_derivative!(T, act, |d| g.iter_mut().zip(s).for_each(|(g, &v)| *g *= d(v)));
        } else {
            g.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(|(gc, sc)| {
                with_derivative!(T, act, |d| gc.iter_mut().zip(sc).for_each(|(g, &v)| *g *= d(v)));
            });
        }
    }
    Ok(dy)
}

/// The slope below zero of a rectifier (0 for ReLU), or an error for an
/// activation that is not one or has a non-finite slope.
fn rectifier_slope<T: Float>(act: Activation) -> Result<T> {
    act.check()?;
    match act {
        Activation::Relu => Ok(T::zero()),
        Activation::LeakyRelu(s) => Ok(T::of(s)),
        other => Err(Error::config(
            other.name(),
            "only relu and leaky_relu keep a sign mask; use activation_forward",
        )),
    }
}

/// ReLU or LeakyReLU in `x`'s own buffer, recording in `positive` (resized
/// to `x`'s length and reused between calls) which inputs were positive:
/// all that backward needs ([`rectifier_backward_masked`]), a quarter of the
/// memory of keeping the input.
///
/// # Errors
/// [`Error::Config`] for an activation that is not ReLU or LeakyReLU (see
/// [`Activation::is_rectifier`]) or a non-finite slope.
pub fn rectifier_forward_masked<T: Float>(
    act: Activation,
    x: ArrayD<T>,
    positive: &mut Vec<u8>,
) -> Result<ArrayD<T>> {
    let slope = rectifier_slope::<T>(act)?;
    let mut x = contiguous(x);
    let data = x.as_slice_mut().expect("a contiguous array has a slice");
    positive.resize(data.len(), 0);
    let work = move |xs: &mut [T], ms: &mut [u8]| cnn_tensor::rectify_with_signs(xs, ms, slope);
    if data.len() <= CHUNK {
        work(data, positive);
    } else {
        data.par_chunks_mut(CHUNK)
            .zip(positive.par_chunks_mut(CHUNK))
            .for_each(|(xs, ms)| work(xs, ms));
    }
    Ok(x)
}

/// dL/dx of ReLU or LeakyReLU from the sign mask of [`rectifier_forward_masked`],
/// in `dy`'s own buffer: `dy` where the input was positive, else `dy · slope`
/// (0 for ReLU, whatever `dy` holds, as PyTorch's `threshold_backward`).
///
/// # Errors
/// [`Error::Shape`] when `dy` has not the mask's length; [`Error::Config`] as
/// the forward (an activation that is not a rectifier included).
pub fn rectifier_backward_masked<T: Float>(
    act: Activation,
    positive: &[u8],
    dy: ArrayD<T>,
) -> Result<ArrayD<T>> {
    // ReLU selects 0 rather than multiplying by a slope of 0 (NaN · 0 is NaN).
    let slope = rectifier_slope::<T>(act)?;
    let slope = matches!(act, Activation::LeakyRelu(_)).then_some(slope);
    if dy.len() != positive.len() {
        return Err(Error::shape(
            act.name(),
            format!("dy has {} elements, the forward's output had {}", dy.len(), positive.len()),
        ));
    }
    let mut dy = contiguous(dy);
    let data = dy.as_slice_mut().expect("a contiguous array has a slice");
    let work = move |gs: &mut [T], ms: &[u8]| {
        let zero = T::zero();
        match slope {
            None => gs.iter_mut().zip(ms).for_each(|(g, &m)| *g = if m != 0 { *g } else { zero }),
            Some(s) => gs.iter_mut().zip(ms).for_each(|(g, &m)| {
                let v = *g;
                *g = if m != 0 { v } else { v * s }
            }),
        }
    };
    if data.len() <= CHUNK {
        work(data, positive);
    } else {
        data.par_chunks_mut(CHUNK)
            .zip(positive.par_chunks(CHUNK))
            .for_each(|(gs, ms)| work(gs, ms));
    }
    Ok(dy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_stable_far_out() {
        assert_eq!(sigmoid(1000.0f32), 1.0);
        assert_eq!(sigmoid(-1000.0f32), 0.0);
        assert!(sigmoid(-100.0f64) > 0.0);
        assert!(!sigmoid(-1e30f64).is_nan());
    }

    #[test]
    fn relu_derivative_is_zero_at_zero() {
        assert_eq!(Activation::Relu.derivative(0.0f64), 0.0);
        assert_eq!(Activation::LeakyRelu(0.1).derivative(0.0f64), 0.1);
    }

    #[test]
    fn gelu_values_match_known_points() {
        // Φ(1) = 0.8413447460685429
        approx::assert_relative_eq!(
            Activation::Gelu.value(1.0f64),
            0.8413447460685429,
            max_relative = 1e-15
        );
        approx::assert_relative_eq!(
            Activation::GeluTanh.value(1.0f64),
            0.8411919906082768,
            max_relative = 1e-12
        );
    }
}
