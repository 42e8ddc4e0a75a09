//! A PNG grid that shows what an augmentation pipeline does.

use std::path::Path;

use cnn_augment::Transform;

use crate::Dataset;
use cnn_tensor::random::seeded_rng;
use cnn_tensor::{write_atomic, Error, Result};
use ndarray::Array3;

/// Writes a PNG grid: one row per sample, the raw image first, then `draws`
/// outputs of `pipeline` (draw `d` of sample `s` seeded from `(seed, s, d)`).
/// Images are shown 0–1 clamped, one-channel as gray, scaled up `scale` times;
/// images of different sizes are placed top-left in equal cells.
///
/// # Errors
/// [`Error::Config`] for no samples or a zero scale; whatever the pipeline
/// fails with; [`Error::Io`] when the file cannot be written.
pub fn preview_grid(
    samples: &[Array3<f32>],
    pipeline: &dyn Transform<f32>,
    draws: usize,
    seed: u64,
    scale: usize,
    path: &Path,
) -> Result<()> {
    let bytes = preview_grid_png(samples, pipeline, draws, seed, scale)?;
    write_atomic(path, &bytes)
}

/// [`preview_grid`]'s PNG file, as bytes (a TensorBoard image).
///
/// # Errors
/// As [`preview_grid`], but for the write.
pub fn preview_grid_png(
    samples: &[Array3<f32>],
    pipeline: &dyn Transform<f32>,
    draws: usize,
    seed: u64,
    scale: usize,
) -> Result<Vec<u8>> {
    if samples.is_empty() || scale == 0 {
        return Err(Error::config("preview_grid", "need at least one sample and a positive scale"));
    }
    let mut rows = Vec::new();
    for (s, img) in samples.iter().enumerate() {
        let mut row = vec![img.clone()];
        for d in 0..draws {
            let mut rng = seeded_rng(seed ^ ((s as u64) << 32) ^ d as u64);
            row.push(pipeline.apply(img.clone(), &mut rng)?);
        }
        rows.push(row);
    }
    let cell_h = rows.iter().flatten().map(|i| i.dim().1).max().unwrap_or(1) * scale + 2;
    let cell_w = rows.iter().flatten().map(|i| i.dim().2).max().unwrap_or(1) * scale + 2;
    let (width, height) = (cell_w * (draws + 1), cell_h * rows.len());
    let mut canvas =
        image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (k, img) in row.iter().enumerate() {
            let (c, h, w) = img.dim();
            for i in 0..h * scale {
                for j in 0..w * scale {
                    let px = |ch: usize| {
                        (img[[ch.min(c - 1), i / scale, j / scale]].clamp(0.0, 1.0) * 255.0).round()
                            as u8
                    };
                    let x = (k * cell_w + 1 + j) as u32;
                    let y = (r * cell_h + 1 + i) as u32;
                    canvas.put_pixel(x, y, image::Rgb([px(0), px(1), px(2)]));
                }
            }
        }
    }
    let mut bytes = Vec::new();
    canvas
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::format("preview grid", e.to_string()))?;
    Ok(bytes)
}

/// Up to `n` samples, the first of each class in turn (class 0, 1, …, then
/// again from 0), so that a preview grid shows one class per row. Labels
/// come from [`Dataset::label`] (no image is decoded to find them; a label
/// that cannot be read skips its sample); `read` reads a picked sample, and
/// its `None` (an unreadable image under a skip policy) moves on to the next
/// sample of the same class.
///
/// # Errors
/// Whatever `read` returns.
pub fn first_of_each_class(
    dataset: &dyn Dataset,
    n: usize,
    mut read: impl FnMut(usize) -> Result<Option<Array3<f32>>>,
) -> Result<Vec<Array3<f32>>> {
    let classes = dataset.classes().len().max(1);
    let mut picked = Vec::new();
    for i in 0..dataset.len() {
        if picked.len() == n {
            break;
        }
        if dataset.label(i).ok() != Some(picked.len() % classes) {
            continue;
        }
        if let Some(img) = read(i)? {
            picked.push(img);
        }
    }
    Ok(picked)
}
