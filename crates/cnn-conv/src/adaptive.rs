//! Adaptive average pooling (`nn.AdaptiveAvgPool2d`): a fixed output size
//! whatever the input's, as VGG and AlexNet use before their classifiers.

use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};
use ndarray::{Array4, ArrayView4, Ix4};

/// Window of output index `i` of `out` over an axis of `len`: PyTorch's
/// `[⌊i·len/out⌋, ⌈(i+1)·len/out⌉)`.
fn window(i: usize, out: usize, len: usize) -> (usize, usize) {
    (i * len / out, ((i + 1) * len).div_ceil(out))
}

fn check(x: &[usize], out: [usize; 2]) -> Result<()> {
    if x.len() != 4 || x.contains(&0) {
        return Err(Error::shape(
            "adaptive_avg_pool2d",
            format!("input must be 4-D [N, C, H, W] with no zero size, got {x:?}"),
        ));
    }
    if out.contains(&0) {
        return Err(Error::config(
            "adaptive_avg_pool2d",
            format!("output size must be positive, got {out:?}"),
        ));
    }
    Ok(())
}

/// The mean of each adaptive window (`F.adaptive_avg_pool2d(x, out)`).
///
/// # Shapes
/// `x: [N, C, H, W]` → `[N, C, out[0], out[1]]`; windows may overlap when
/// the output is not a divisor of the input.
///
/// # Errors
/// [`Error::Shape`] for a rank other than 4 or a zero size; [`Error::Config`] for a zero output size.
pub fn adaptive_avg_pool2d_forward<T: Float>(
    x: ArrayView4<'_, T>,
    out: [usize; 2],
) -> Result<Array4<T>> {
    check(x.shape(), out)?;
    let (n, c, h, w) = x.dim();
    Ok(Array4::from_shape_fn((n, c, out[0], out[1]), |(b, ch, i, j)| {
        let (h0, h1) = window(i, out[0], h);
        let (w0, w1) = window(j, out[1], w);
        let mut sum = T::zero();
        for ih in h0..h1 {
            for iw in w0..w1 {
                sum += x[[b, ch, ih, iw]];
            }
        }
        sum / T::of(((h1 - h0) * (w1 - w0)) as f64)
    }))
}

/// Gradient of [`adaptive_avg_pool2d_forward`]: each `dy` spread evenly over its window.
///
/// # Errors
/// As the forward, and [`Error::Shape`] when `dy` is not `[N, C, out…]` of the input.
pub fn adaptive_avg_pool2d_backward<T: Float>(
    dy: ArrayView4<'_, T>,
    input_shape: [usize; 4],
) -> Result<Array4<T>> {
    let (n, c, oh, ow) = dy.dim();
    check(&input_shape, [oh, ow])?;
    if [n, c] != input_shape[..2] {
        return Err(Error::shape(
            "adaptive_avg_pool2d",
            format!("dy {:?} does not fit the input {input_shape:?}", dy.shape()),
        ));
    }
    let [_, _, h, w] = input_shape;
    let mut dx = Array4::<T>::zeros(input_shape);
    for ((b, ch, i, j), &g) in dy.indexed_iter() {
        let (h0, h1) = window(i, oh, h);
        let (w0, w1) = window(j, ow, w);
        let share = g / T::of(((h1 - h0) * (w1 - w0)) as f64);
        for ih in h0..h1 {
            for iw in w0..w1 {
                dx[[b, ch, ih, iw]] += share;
            }
        }
    }
    Ok(dx)
}

/// `nn.AdaptiveAvgPool2d(out)`: no parameters.
#[derive(Debug, Clone)]
pub struct AdaptiveAvgPool2d {
    out: [usize; 2],
    cache: Option<[usize; 4]>,
}

impl AdaptiveAvgPool2d {
    /// A pool to `[out_h, out_w]`.
    pub fn new(out: [usize; 2]) -> Self {
        AdaptiveAvgPool2d { out, cache: None }
    }

    /// The output size `[out_h, out_w]`.
    pub fn output_size(&self) -> [usize; 2] {
        self.out
    }
}

impl<T: Float> Layer<T> for AdaptiveAvgPool2d {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let shape = x.shape().to_vec();
        let x = x.into_dimensionality::<Ix4>().map_err(|_| {
            Error::shape(
                "adaptive_avg_pool2d",
                format!("input must be 4-D [N, C, H, W], got {shape:?}"),
            )
        })?;
        let y = adaptive_avg_pool2d_forward(x.view(), self.out)?;
        self.cache = (mode == Mode::Train).then(|| [shape[0], shape[1], shape[2], shape[3]]);
        Ok(y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        let shape = self.cache.take().ok_or(Error::NoForward { op: "adaptive_avg_pool2d" })?;
        let dy = dy
            .into_dimensionality::<Ix4>()
            .map_err(|_| Error::shape("adaptive_avg_pool2d", "dy must be 4-D"))?;
        Ok(adaptive_avg_pool2d_backward(dy.view(), shape)?.into_dyn())
    }

    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param<T>)) {}

    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param<T>)) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_pytorch() {
        // 5 → 3: [0, 2), [1, 4), [3, 5).
        assert_eq!(
            (0..3).map(|i| window(i, 3, 5)).collect::<Vec<_>>(),
            vec![(0, 2), (1, 4), (3, 5)]
        );
        // Equal sizes: one element each; 1 output: the whole axis.
        assert_eq!(window(2, 7, 7), (2, 3));
        assert_eq!(window(0, 1, 9), (0, 9));
    }
}
