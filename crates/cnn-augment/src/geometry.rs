//! Flips, padding, crops, resizing, erasing and normalization, as
//! `torchvision.transforms.functional` on CHW tensors.

use cnn_tensor::{Error, Float, Result};
use ndarray::{s, Array3, ArrayView3, Axis};

/// Mirror left–right (`hflip`).
pub fn hflip<T: Float>(img: ArrayView3<'_, T>) -> Array3<T> {
    img.slice(s![.., .., ..;-1]).to_owned()
}

/// Mirror top–bottom (`vflip`).
pub fn vflip<T: Float>(img: ArrayView3<'_, T>) -> Array3<T> {
    img.slice(s![.., ..;-1, ..]).to_owned()
}

/// How [`pad`] fills the border.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    /// A constant value (torchvision's `fill`).
    Constant(f64),
    /// Mirror without repeating the edge: `0 1 2` padded by 2 is `2 1 0 1 2 1 0`.
    Reflect,
    /// Repeat the edge value (torchvision's `edge`).
    Replicate,
}

/// Pads `[left, top, right, bottom]` pixels (`F.pad`).
///
/// # Errors
/// [`Error::Shape`] for an empty image, or reflect padding not smaller than the side it mirrors.
pub fn pad<T: Float>(
    img: ArrayView3<'_, T>,
    [left, top, right, bottom]: [usize; 4],
    mode: PadMode,
) -> Result<Array3<T>> {
    let (c, h, w) = img.dim();
    if h == 0 || w == 0 {
        return Err(Error::shape("pad", format!("image {:?} is empty", img.dim())));
    }
    if mode == PadMode::Reflect && (left.max(right) >= w || top.max(bottom) >= h) {
        return Err(Error::shape(
            "pad",
            format!(
                "reflect padding {:?} needs an image larger than it, got {h}x{w}",
                [left, top, right, bottom]
            ),
        ));
    }
    let index = |i: isize, n: usize| -> Option<usize> {
        if (0..n as isize).contains(&i) {
            return Some(i as usize);
        }
        match mode {
            PadMode::Constant(_) => None,
            PadMode::Replicate => Some(i.clamp(0, n as isize - 1) as usize),
            PadMode::Reflect => Some(if i < 0 { (-i) as usize } else { 2 * (n - 1) - i as usize }),
        }
    };
    let fill = match mode {
        PadMode::Constant(v) => T::of(v),
        _ => T::zero(),
    };
    Ok(Array3::from_shape_fn((c, h + top + bottom, w + left + right), |(ch, i, j)| {
        match (index(i as isize - top as isize, h), index(j as isize - left as isize, w)) {
            (Some(y), Some(x)) => img[[ch, y, x]],
            _ => fill,
        }
    }))
}

/// The `height × width` window at `(top, left)` (`F.crop`); parts outside the image are 0, as torchvision pads.
///
/// # Errors
/// [`Error::Shape`] for a zero-size crop.
pub fn crop<T: Float>(
    img: ArrayView3<'_, T>,
    top: isize,
    left: isize,
    height: usize,
    width: usize,
) -> Result<Array3<T>> {
    if height == 0 || width == 0 {
        return Err(Error::shape(
            "crop",
            format!("crop size must be positive, got {height}x{width}"),
        ));
    }
    let (c, h, w) = img.dim();
    Ok(Array3::from_shape_fn((c, height, width), |(ch, i, j)| {
        let (y, x) = (top + i as isize, left + j as isize);
        if (0..h as isize).contains(&y) && (0..w as isize).contains(&x) {
            img[[ch, y as usize, x as usize]]
        } else {
            T::zero()
        }
    }))
}

/// Source coordinate and weights of output index `o` for bilinear resizing
/// with `align_corners = false`: `src = (o + ½)·in/out − ½`, clamped at 0.
fn taps(o: usize, out: usize, len: usize) -> (usize, usize, f64) {
    let scale = len as f64 / out as f64;
    let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(len - 1);
    let i1 = (i0 + 1).min(len - 1);
    (i0, i1, src - i0 as f64)
}

/// Bilinear resize to `[height, width]` (`F.resize`, `align_corners = false`,
/// no antialias; PyTorch's `interpolate(mode="bilinear")`).
///
/// # Errors
/// [`Error::Shape`] for an empty image or a zero output size.
pub fn resize<T: Float>(img: ArrayView3<'_, T>, size: [usize; 2]) -> Result<Array3<T>> {
    resize_from(img.dim(), size, |ch, y, x| img[[ch, y, x]])
}

/// [`resize`] of a `(channels, h, w)` image read through `pixel(ch, y, x)`,
/// so a decoder's buffer (bytes, another layout) is resized without first
/// being copied whole into a float array. The same numbers as [`resize`] on
/// the array `pixel` describes.
///
/// # Errors
/// As [`resize`].
pub fn resize_from<T: Float>(
    (c, h, w): (usize, usize, usize),
    [height, width]: [usize; 2],
    pixel: impl Fn(usize, usize, usize) -> T,
) -> Result<Array3<T>> {
    if h == 0 || w == 0 || height == 0 || width == 0 {
        return Err(Error::shape(
            "resize",
            format!("image {:?} and size {:?} must be non-empty", (c, h, w), [height, width]),
        ));
    }
    let rows: Vec<_> = (0..height).map(|o| taps(o, height, h)).collect();
    let cols: Vec<_> = (0..width).map(|o| taps(o, width, w)).collect();
    Ok(Array3::from_shape_fn((c, height, width), |(ch, i, j)| {
        let ((y0, y1, ly), (x0, x1, lx)) = (rows[i], cols[j]);
        let (ly, lx) = (T::of(ly), T::of(lx));
        let top = pixel(ch, y0, x0) * (T::one() - lx) + pixel(ch, y0, x1) * lx;
        let bottom = pixel(ch, y1, x0) * (T::one() - lx) + pixel(ch, y1, x1) * lx;
        top * (T::one() - ly) + bottom * ly
    }))
}

/// Antialiased weights of output index `o` (PyTorch's `antialias=True` for
/// bilinear): a triangle filter stretched by the downscale factor, so every
/// input pixel under the output pixel contributes; `(first input, weights)`.
fn aa_weights(o: usize, out: usize, len: usize) -> (usize, Vec<f64>) {
    let scale = len as f64 / out as f64;
    let support = scale.max(1.0);
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let center = scale * (o as f64 + 0.5);
    // C++'s int() truncates toward zero.
    let xmin = ((center - support + 0.5).trunc() as isize).max(0) as usize;
    let xmax = ((center + support + 0.5).trunc() as usize).min(len);
    let mut w: Vec<f64> =
        (xmin..xmax).map(|x| (1.0 - ((x as f64 - center + 0.5) * inv).abs()).max(0.0)).collect();
    let total: f64 = w.iter().sum();
    if total > 0.0 {
        w.iter_mut().for_each(|v| *v /= total);
    }
    (xmin, w)
}

/// Bilinear resize with antialiasing (`F.resize(..., antialias=True)`): when
/// shrinking, each output averages all the input pixels it covers (a
/// triangle filter widened by the factor) instead of sampling four, which
/// avoids aliasing. Separable: rows, then columns.
///
/// # Errors
/// [`Error::Shape`] for an empty image or a zero output size.
pub fn resize_antialias<T: Float>(
    img: ArrayView3<'_, T>,
    [height, width]: [usize; 2],
) -> Result<Array3<T>> {
    let (c, h, w) = img.dim();
    if h == 0 || w == 0 || height == 0 || width == 0 {
        return Err(Error::shape(
            "resize",
            format!("image {:?} and size {:?} must be non-empty", img.dim(), [height, width]),
        ));
    }
    let cols: Vec<_> = (0..width).map(|o| aa_weights(o, width, w)).collect();
    let rows: Vec<_> = (0..height).map(|o| aa_weights(o, height, h)).collect();
    let horizontal = Array3::from_shape_fn((c, h, width), |(ch, i, j)| {
        let (x0, ws) = &cols[j];
        ws.iter()
            .enumerate()
            .fold(T::zero(), |acc, (k, &wt)| acc + img[[ch, i, x0 + k]] * T::of(wt))
    });
    Ok(Array3::from_shape_fn((c, height, width), |(ch, i, j)| {
        let (y0, ws) = &rows[i];
        ws.iter()
            .enumerate()
            .fold(T::zero(), |acc, (k, &wt)| acc + horizontal[[ch, y0 + k, j]] * T::of(wt))
    }))
}

/// [`crop`] then [`resize`] (`F.resized_crop`).
///
/// # Errors
/// As [`crop`] and [`resize`].
pub fn resized_crop<T: Float>(
    img: ArrayView3<'_, T>,
    top: isize,
    left: isize,
    height: usize,
    width: usize,
    size: [usize; 2],
) -> Result<Array3<T>> {
    resize(crop(img, top, left, height, width)?.view(), size)
}

/// [`crop`] then [`resize_antialias`]: `F.resized_crop(..., antialias=True)`.
///
/// # Errors
/// As [`crop`] and [`resize_antialias`].
pub fn resized_crop_antialias<T: Float>(
    img: ArrayView3<'_, T>,
    top: isize,
    left: isize,
    height: usize,
    width: usize,
    size: [usize; 2],
) -> Result<Array3<T>> {
    resize_antialias(crop(img, top, left, height, width)?.view(), size)
}

/// Sets the `height × width` window at `(top, left)` to `value` (`F.erase`).
///
/// # Errors
/// [`Error::Shape`] when the window does not lie inside the image.
pub fn erase<T: Float>(
    img: ArrayView3<'_, T>,
    top: usize,
    left: usize,
    height: usize,
    width: usize,
    value: f64,
) -> Result<Array3<T>> {
    let (_, h, w) = img.dim();
    if top + height > h || left + width > w {
        return Err(Error::shape(
            "erase",
            format!("window {height}x{width} at ({top}, {left}) leaves the {h}x{w} image"),
        ));
    }
    let mut out = img.to_owned();
    out.slice_mut(s![.., top..top + height, left..left + width]).fill(T::of(value));
    Ok(out)
}

/// `(img − mean[c]) / std[c]` per channel (`F.normalize`).
///
/// # Errors
/// [`Error::Shape`] when `mean` or `std` has another length than the channels;
/// [`Error::Config`] for a zero standard deviation.
pub fn normalize<T: Float>(img: ArrayView3<'_, T>, mean: &[f64], std: &[f64]) -> Result<Array3<T>> {
    let c = img.dim().0;
    if mean.len() != c || std.len() != c {
        return Err(Error::shape(
            "normalize",
            format!("{} means and {} stds for {c} channels", mean.len(), std.len()),
        ));
    }
    if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return Err(Error::config(
            "normalize",
            format!("std must be non-zero and finite, got {std:?}"),
        ));
    }
    let mut out = img.to_owned();
    for (ch, mut plane) in out.axis_iter_mut(Axis(0)).enumerate() {
        let (m, s) = (T::of(mean[ch]), T::of(std[ch]));
        plane.mapv_inplace(|v| (v - m) / s);
    }
    Ok(out)
}
