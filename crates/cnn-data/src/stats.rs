//! Per-channel mean and standard deviation of a whole dataset.

use cnn_tensor::{Error, Result};

use crate::Dataset;

/// Per-channel mean and (population) standard deviation over every pixel of
/// every image, streamed one image at a time with Chan et al.'s parallel
/// update in f64 (each image's own mean and squared deviations merged into the
/// running totals): stable, and no need to hold the data. Feed the result to
/// `cnn_augment::normalize`.
///
/// # Errors
/// [`Error::Shape`] for an empty dataset or images with different channel
/// counts; whatever reading a sample fails with.
pub fn channel_stats(dataset: &dyn Dataset) -> Result<(Vec<f64>, Vec<f64>)> {
    if dataset.is_empty() {
        return Err(Error::shape("channel_stats", "the dataset is empty"));
    }
    let (mut count, mut mean, mut m2): (f64, Vec<f64>, Vec<f64>) = (0.0, Vec::new(), Vec::new());
    for i in 0..dataset.len() {
        let (img, _) = dataset.get(i)?;
        let (c, h, w) = img.dim();
        if mean.is_empty() {
            mean = vec![0.0; c];
            m2 = vec![0.0; c];
        } else if c != mean.len() {
            return Err(Error::shape(
                "channel_stats",
                format!("sample {i} has {c} channels, earlier ones {}", mean.len()),
            ));
        }
        let n = (h * w) as f64;
        for ch in 0..c {
            let plane = img.index_axis(ndarray::Axis(0), ch);
            let m = plane.iter().map(|&v| v as f64).sum::<f64>() / n;
            let s = plane.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>();
            let total = count + n;
            let delta = m - mean[ch];
            mean[ch] += delta * n / total;
            m2[ch] += s + delta * delta * count * n / total;
        }
        count += n;
    }
    Ok((mean, m2.iter().map(|&v| (v / count).sqrt()).collect()))
}
