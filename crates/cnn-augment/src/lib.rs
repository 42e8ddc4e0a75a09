//! Image transforms on CHW tensors (values in [0, 1]) with torchvision's
//! semantics, checked against torchvision's outputs.
//!
//! So far the functional forms: [`hflip`], [`vflip`], [`adjust_brightness`],
//! [`adjust_contrast`], [`adjust_saturation`], [`adjust_hue`] (through HSV),
//! [`erase`], [`normalize`], [`pad`] (constant, reflect, replicate), [`crop`],
//! [`resize`] and [`resized_crop`] (bilinear, `align_corners = false`); and
//! random transforms drawing from the caller's generator: [`RandomHorizontalFlip`],
//! [`RandomCrop`], [`RandomResizedCrop`], [`ColorJitter`], [`RandomErasing`],
//! [`Cutout`], chained by [`Compose`] with [`Normalize`] and [`GrayToRgb`].
//!
//! ```
//! use cnn_augment::{adjust_hue, hflip, normalize};
//! use ndarray::Array3;
//!
//! let img = Array3::<f32>::from_shape_fn((3, 4, 4), |(c, i, j)| (c + i + j) as f32 / 9.0);
//! let flipped = hflip(img.view());
//! assert_eq!(flipped[[0, 0, 0]], img[[0, 0, 3]]);
//! let shifted = adjust_hue(img.view(), 0.25)?;
//! let normed = normalize(shifted.view(), &[0.5, 0.5, 0.5], &[0.25, 0.25, 0.25])?;
//! assert_eq!(normed.dim(), (3, 4, 4));
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod color;
mod geometry;
mod random;

pub use color::{adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation};
pub use geometry::{
    crop, erase, hflip, normalize, pad, resize, resize_antialias, resize_from, resized_crop,
    resized_crop_antialias, vflip, PadMode,
};
pub use random::{
    ColorJitter, Compose, Cutout, GrayToRgb, Normalize, RandomCrop, RandomErasing,
    RandomHorizontalFlip, RandomResizedCrop, Transform,
};
