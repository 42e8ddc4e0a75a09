//! Random transforms with torchvision's sampling, drawing from the caller's generator.

use cnn_tensor::{Error, Float, Result};
use ndarray::Array3;
use rand::{Rng, RngCore};

use crate::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, crop, erase, hflip,
    normalize, pad, resized_crop, resized_crop_antialias, PadMode,
};

/// A transform of one CHW image; random ones draw from `rng`, so a seeded
/// generator (per sample) makes the result reproducible.
pub trait Transform<T: Float>: Send + Sync {
    /// The transformed image.
    ///
    /// # Errors
    /// When the image does not fit the transform (too small, wrong channels).
    fn apply(&self, img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>>;
}

/// Transforms applied in order (`transforms.Compose`).
#[derive(Default)]
pub struct Compose<T: Float> {
    steps: Vec<Box<dyn Transform<T>>>,
}

impl<T: Float> Compose<T> {
    /// An empty pipeline.
    pub fn new() -> Self {
        Compose { steps: Vec::new() }
    }
    /// Appends a step.
    pub fn then(mut self, step: impl Transform<T> + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }
}

impl<T: Float> Transform<T> for Compose<T> {
    fn apply(&self, mut img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>> {
        for step in &self.steps {
            img = step.apply(img, rng)?;
        }
        Ok(img)
    }
}

fn check_p(op: &'static str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::config(op, format!("p must be in [0, 1], got {p}")));
    }
    Ok(())
}

/// Flips left–right with probability `p` (`RandomHorizontalFlip`).
#[derive(Debug, Clone, Copy)]
pub struct RandomHorizontalFlip {
    p: f64,
}

impl RandomHorizontalFlip {
    /// # Errors
    /// [`Error::Config`] for `p` outside [0, 1].
    pub fn new(p: f64) -> Result<Self> {
        check_p("random_horizontal_flip", p)?;
        Ok(RandomHorizontalFlip { p })
    }
}

impl<T: Float> Transform<T> for RandomHorizontalFlip {
    fn apply(&self, img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>> {
        Ok(if rng.random::<f64>() < self.p { hflip(img.view()) } else { img })
    }
}

/// Pads by `padding` on every side, then crops `size` at a uniformly random
/// position (`RandomCrop(size, padding, padding_mode)`).
#[derive(Debug, Clone, Copy)]
pub struct RandomCrop {
    size: [usize; 2],
    padding: usize,
    mode: PadMode,
}

impl RandomCrop {
    /// # Errors
    /// [`Error::Config`] for a zero size.
    pub fn new(size: [usize; 2], padding: usize, mode: PadMode) -> Result<Self> {
        if size.contains(&0) {
            return Err(Error::config("random_crop", "size must be positive"));
        }
        Ok(RandomCrop { size, padding, mode })
    }
}

impl<T: Float> Transform<T> for RandomCrop {
    fn apply(&self, img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>> {
        let img =
            if self.padding > 0 { pad(img.view(), [self.padding; 4], self.mode)? } else { img };
        let (_, h, w) = img.dim();
        let [th, tw] = self.size;
        if th > h || tw > w {
            return Err(Error::shape(
                "random_crop",
                format!("crop {th}x{tw} is larger than the (padded) image {h}x{w}"),
            ));
        }
        let top = rng.random_range(0..=h - th);
        let left = rng.random_range(0..=w - tw);
        crop(img.view(), top as isize, left as isize, th, tw)
    }
}

/// A crop of random area and aspect ratio, resized to `size`
/// (`RandomResizedCrop(size, scale, ratio)`): ten tries at an area fraction
/// from `scale` and a log-uniform ratio from `ratio`, then torchvision's
/// center-crop fallback.
#[derive(Debug, Clone, Copy)]
pub struct RandomResizedCrop {
    size: [usize; 2],
    scale: (f64, f64),
    ratio: (f64, f64),
    antialias: bool,
}

impl RandomResizedCrop {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3).
    ///
    /// # Errors
    /// [`Error::Config`] for a zero size.
    pub fn new(size: [usize; 2]) -> Result<Self> {
        Self::with_bounds(size, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0))
    }

    /// Other bounds.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero size or bounds that are not increasing and positive.
    pub fn with_bounds(size: [usize; 2], scale: (f64, f64), ratio: (f64, f64)) -> Result<Self> {
        if size.contains(&0)
            || !(0.0 < scale.0 && scale.0 <= scale.1)
            || !(0.0 < ratio.0 && ratio.0 <= ratio.1)
        {
            return Err(Error::config(
                "random_resized_crop",
                format!("bad size {size:?}, scale {scale:?} or ratio {ratio:?}"),
            ));
        }
        Ok(RandomResizedCrop { size, scale, ratio, antialias: false })
    }

    cnn_tensor::setters! {
        /// Antialias when the crop is shrunk (torchvision's `antialias=True`); off by default.
        with_antialias: antialias: bool;
    }

    /// The crop `(top, left, height, width)` for an `h × w` image (torchvision's `get_params`).
    pub fn sample(
        &self,
        h: usize,
        w: usize,
        rng: &mut dyn RngCore,
    ) -> (usize, usize, usize, usize) {
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(lr0..=lr1).exp();
            let cw = (target * aspect).sqrt().round() as usize;
            let ch = (target / aspect).sqrt().round() as usize;
            if 0 < cw && cw <= w && 0 < ch && ch <= h {
                let top = rng.random_range(0..=h - ch);
                let left = rng.random_range(0..=w - cw);
                return (top, left, ch, cw);
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < self.ratio.0 {
            (((w as f64) / self.ratio.0).round() as usize, w)
        } else if in_ratio > self.ratio.1 {
            (h, ((h as f64) * self.ratio.1).round() as usize)
        } else {
            (h, w)
        };
        ((h - ch.min(h)) / 2, (w - cw.min(w)) / 2, ch.clamp(1, h), cw.clamp(1, w))
    }
}

impl<T: Float> Transform<T> for RandomResizedCrop {
    fn apply(&self, img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>> {
        let (_, h, w) = img.dim();
        let (top, left, ch, cw) = self.sample(h, w, rng);
        if self.antialias {
            resized_crop_antialias(img.view(), top as isize, left as isize, ch, cw, self.size)
        } else {
            resized_crop(img.view(), top as isize, left as isize, ch, cw, self.size)
        }
    }
}

/// Brightness, contrast, saturation and hue jitter in a random order
/// (`ColorJitter`): factors from `[max(0, 1 − b), 1 + b]` (likewise c, s), hue from `[−h, h]`.
#[derive(Debug, Clone, Copy)]
pub struct ColorJitter {
    brightness: f64,
    contrast: f64,
    saturation: f64,
    hue: f64,
}

impl ColorJitter {
    /// # Errors
    /// [`Error::Config`] for negative amounts or hue above 0.5.
    pub fn new(brightness: f64, contrast: f64, saturation: f64, hue: f64) -> Result<Self> {
        if [brightness, contrast, saturation, hue].iter().any(|&v| !(v >= 0.0 && v.is_finite()))
            || hue > 0.5
        {
            return Err(Error::config("color_jitter", "amounts must be >= 0 and hue <= 0.5"));
        }
        Ok(ColorJitter { brightness, contrast, saturation, hue })
    }
}

impl<T: Float> Transform<T> for ColorJitter {
    fn apply(&self, mut img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>> {
        let mut order = [0usize, 1, 2, 3];
        // torch.randperm(4): a uniform permutation (Fisher–Yates).
        for i in (1..4).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let factor = |amount: f64, rng: &mut dyn RngCore| {
            rng.random_range((1.0 - amount).max(0.0)..=1.0 + amount)
        };
        for op in order {
            img = match op {
                0 if self.brightness > 0.0 => {
                    adjust_brightness(img.view(), factor(self.brightness, rng))?
                }
                1 if self.contrast > 0.0 => {
                    adjust_contrast(img.view(), factor(self.contrast, rng))?
                }
                2 if self.saturation > 0.0 => {
                    adjust_saturation(img.view(), factor(self.saturation, rng))?
                }
                3 if self.hue > 0.0 => {
                    adjust_hue(img.view(), rng.random_range(-self.hue..=self.hue))?
                }
                _ => img,
            };
        }
        Ok(img)
    }
}

/// With probability `p`, erases a rectangle of random area (fraction of the
/// image from `scale`) and aspect ratio (log-uniform from `ratio`) to `value`
/// (`RandomErasing`); ten tries, else the image is unchanged.
#[derive(Debug, Clone, Copy)]
pub struct RandomErasing {
    p: f64,
    scale: (f64, f64),
    ratio: (f64, f64),
    value: f64,
}

impl RandomErasing {
    /// torchvision's defaults: scale (0.02, 0.33), ratio (0.3, 3.3), value 0.
    ///
    /// # Errors
    /// [`Error::Config`] for `p` outside [0, 1].
    pub fn new(p: f64) -> Result<Self> {
        check_p("random_erasing", p)?;
        Ok(RandomErasing { p, scale: (0.02, 0.33), ratio: (0.3, 3.3), value: 0.0 })
    }
}

impl<T: Float> Transform<T> for RandomErasing {
    fn apply(&self, img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>> {
        if rng.random::<f64>() >= self.p {
            return Ok(img);
        }
        let (_, h, w) = img.dim();
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(lr0..=lr1).exp();
            let eh = (target * aspect).sqrt().round() as usize;
            let ew = (target / aspect).sqrt().round() as usize;
            if 0 < eh && eh < h && 0 < ew && ew < w {
                let top = rng.random_range(0..=h - eh);
                let left = rng.random_range(0..=w - ew);
                return erase(img.view(), top, left, eh, ew, self.value);
            }
        }
        Ok(img)
    }
}

/// Zeroes a `size × size` square centred at a uniformly random pixel, clipped
/// at the border (Cutout, DeVries & Taylor 2017).
#[derive(Debug, Clone, Copy)]
pub struct Cutout {
    size: usize,
}

impl Cutout {
    /// # Errors
    /// [`Error::Config`] for a zero size.
    pub fn new(size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::config("cutout", "size must be positive"));
        }
        Ok(Cutout { size })
    }
}

impl<T: Float> Transform<T> for Cutout {
    fn apply(&self, img: Array3<T>, rng: &mut dyn RngCore) -> Result<Array3<T>> {
        let (_, h, w) = img.dim();
        let (cy, cx) = (rng.random_range(0..h) as isize, rng.random_range(0..w) as isize);
        let half = (self.size / 2) as isize;
        let (y0, x0) = ((cy - half).max(0) as usize, (cx - half).max(0) as usize);
        let (y1, x1) = (
            ((cy - half + self.size as isize).min(h as isize)) as usize,
            ((cx - half + self.size as isize).min(w as isize)) as usize,
        );
        if y1 <= y0 || x1 <= x0 {
            return Ok(img);
        }
        erase(img.view(), y0, x0, y1 - y0, x1 - x0, 0.0)
    }
}

/// Per-channel `(img − mean[c]) / std[c]` as a pipeline step (`transforms.Normalize`).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Normalize {
    /// # Errors
    /// [`Error::Config`] for lengths that differ, no channel, or a standard
    /// deviation that is not positive and finite.
    pub fn new(mean: Vec<f64>, std: Vec<f64>) -> Result<Self> {
        if mean.is_empty()
            || mean.len() != std.len()
            || std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(Error::config(
                "normalize",
                format!(
                    "mean and std need one entry per channel and std > 0, got {mean:?} and {std:?}"
                ),
            ));
        }
        Ok(Normalize { mean, std })
    }
}

impl<T: Float> Transform<T> for Normalize {
    fn apply(&self, img: Array3<T>, _rng: &mut dyn RngCore) -> Result<Array3<T>> {
        normalize(img.view(), &self.mean, &self.std)
    }
}

/// Repeats a one-channel image into three (a gray image for a network built
/// for RGB, as `x.repeat(3, 1, 1)`); other images pass unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrayToRgb;

impl<T: Float> Transform<T> for GrayToRgb {
    fn apply(&self, img: Array3<T>, _rng: &mut dyn RngCore) -> Result<Array3<T>> {
        if img.dim().0 != 1 {
            return Ok(img);
        }
        let views = [img.view(), img.view(), img.view()];
        ndarray::concatenate(ndarray::Axis(0), &views)
            .map_err(|e| Error::shape("gray_to_rgb", e.to_string()))
    }
}
