//! Color adjustments, as `torchvision.transforms.functional`.

use cnn_tensor::{Error, Float, Result};
use ndarray::{Array2, Array3, ArrayView3, Axis};

fn blend<T: Float>(
    img: ArrayView3<'_, T>,
    other: impl Fn(usize, usize, usize) -> T,
    f: T,
) -> Array3<T> {
    Array3::from_shape_fn(img.dim(), |(c, i, j)| {
        (f * img[[c, i, j]] + (T::one() - f) * other(c, i, j)).max(T::zero()).min(T::one())
    })
}

fn check_factor(op: &'static str, f: f64) -> Result<()> {
    if !(f >= 0.0 && f.is_finite()) {
        return Err(Error::config(op, format!("factor must be finite and >= 0, got {f}")));
    }
    Ok(())
}

fn check_channels(op: &'static str, img: &ArrayView3<'_, impl Float>) -> Result<usize> {
    match img.dim().0 {
        c @ (1 | 3) => Ok(c),
        c => Err(Error::shape(op, format!("image must have 1 or 3 channels, got {c}"))),
    }
}

/// Luma of an RGB image, `0.2989 r + 0.587 g + 0.114 b` (torchvision's `rgb_to_grayscale`);
/// a one-channel image is its own gray.
fn grayscale<T: Float>(img: ArrayView3<'_, T>) -> Array2<T> {
    if img.dim().0 == 1 {
        return img.index_axis(Axis(0), 0).to_owned();
    }
    let (r, g, b) =
        (img.index_axis(Axis(0), 0), img.index_axis(Axis(0), 1), img.index_axis(Axis(0), 2));
    Array2::from_shape_fn(r.dim(), |(i, j)| {
        T::of(0.2989) * r[[i, j]] + T::of(0.587) * g[[i, j]] + T::of(0.114) * b[[i, j]]
    })
}

/// `clamp(f·img, 0, 1)` (`adjust_brightness`): 0 is black, 1 the original.
///
/// # Errors
/// [`Error::Config`] for a negative or non-finite factor.
pub fn adjust_brightness<T: Float>(img: ArrayView3<'_, T>, factor: f64) -> Result<Array3<T>> {
    check_factor("adjust_brightness", factor)?;
    Ok(blend(img, |_, _, _| T::zero(), T::of(factor)))
}

/// `clamp(f·img + (1 − f)·mean(gray), 0, 1)` (`adjust_contrast`): 0 is a flat
/// gray image at the mean luma, 1 the original.
///
/// # Errors
/// [`Error::Config`] for a bad factor; [`Error::Shape`] unless 1 or 3 channels.
pub fn adjust_contrast<T: Float>(img: ArrayView3<'_, T>, factor: f64) -> Result<Array3<T>> {
    check_factor("adjust_contrast", factor)?;
    check_channels("adjust_contrast", &img)?;
    let gray = grayscale(img);
    let mean = gray.sum() / T::of(gray.len() as f64);
    Ok(blend(img, |_, _, _| mean, T::of(factor)))
}

/// `clamp(f·img + (1 − f)·gray, 0, 1)` per pixel (`adjust_saturation`): 0 is
/// grayscale, 1 the original. A one-channel image is returned unchanged.
///
/// # Errors
/// [`Error::Config`] for a bad factor; [`Error::Shape`] unless 1 or 3 channels.
pub fn adjust_saturation<T: Float>(img: ArrayView3<'_, T>, factor: f64) -> Result<Array3<T>> {
    check_factor("adjust_saturation", factor)?;
    if check_channels("adjust_saturation", &img)? == 1 {
        return Ok(img.to_owned());
    }
    let gray = grayscale(img);
    Ok(blend(img, |_, i, j| gray[[i, j]], T::of(factor)))
}

/// Shifts the hue by `factor` turns (`adjust_hue`, `factor ∈ [−0.5, 0.5]`),
/// through HSV exactly as torchvision's `_rgb2hsv` / `_hsv2rgb`. A one-channel
/// image is returned unchanged.
///
/// # Errors
/// [`Error::Config`] for a factor outside [−0.5, 0.5]; [`Error::Shape`] unless 1 or 3 channels.
pub fn adjust_hue<T: Float>(img: ArrayView3<'_, T>, factor: f64) -> Result<Array3<T>> {
    if !(-0.5..=0.5).contains(&factor) {
        return Err(Error::config(
            "adjust_hue",
            format!("factor must be in [-0.5, 0.5], got {factor}"),
        ));
    }
    if check_channels("adjust_hue", &img)? == 1 {
        return Ok(img.to_owned());
    }
    let (_, h, w) = img.dim();
    let mut out = Array3::<T>::zeros((3, h, w));
    let (zero, one) = (T::zero(), T::one());
    for i in 0..h {
        for j in 0..w {
            let (r, g, b) = (img[[0, i, j]], img[[1, i, j]], img[[2, i, j]]);
            // _rgb2hsv
            let maxc = r.max(g).max(b);
            let minc = r.min(g).min(b);
            let eqc = maxc == minc;
            let cr = maxc - minc;
            let s = cr / if eqc { one } else { maxc };
            let div = if eqc { one } else { cr };
            let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
            let hr = if maxc == r { bc - gc } else { zero };
            let hg = if maxc == g && maxc != r { T::of(2.0) + rc - bc } else { zero };
            let hb = if maxc != g && maxc != r { T::of(4.0) + gc - rc } else { zero };
            let hue = ((hr + hg + hb) / T::of(6.0) + one) % one; // fmod of a positive number
                                                                 // Shift: Python's % (remainder with the divisor's sign) keeps it in [0, 1).
            let mut hue = (hue + T::of(factor)) % one;
            if hue < zero {
                hue += one;
            }
            // _hsv2rgb
            let v = maxc;
            let k = (hue * T::of(6.0)).floor();
            let f = hue * T::of(6.0) - k;
            let p = (v * (one - s)).max(zero).min(one);
            let q = (v * (one - s * f)).max(zero).min(one);
            let t = (v * (one - s * (one - f))).max(zero).min(one);
            let (ro, go, bo) = match (k.to_i64().unwrap_or(0)).rem_euclid(6) {
                0 => (v, t, p),
                1 => (q, v, p),
                2 => (p, v, t),
                3 => (p, q, v),
                4 => (t, p, v),
                _ => (v, p, q),
            };
            out[[0, i, j]] = ro;
            out[[1, i, j]] = go;
            out[[2, i, j]] = bo;
        }
    }
    Ok(out)
}
