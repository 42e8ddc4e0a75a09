//! Per-channel mean and standard deviation of a whole dataset.

use cnn_tensor::{Error, Result};

use crate::{BadSamples, Dataset};

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
    channel_stats_with(dataset, &BadSamples::Fail)
}

/// [`channel_stats`] with a policy for unreadable samples: under
/// [`BadSamples::Fail`] the first one ends it with its error (naming the
/// file and the count read before it), under [`BadSamples::Skip`] it is
/// logged and left out.
///
/// # Errors
/// As [`channel_stats`]; [`Error::Shape`] also when every sample was skipped.
pub fn channel_stats_with(dataset: &dyn Dataset, bad: &BadSamples) -> Result<(Vec<f64>, Vec<f64>)> {
    if dataset.is_empty() {
        return Err(Error::shape("channel_stats", "the dataset is empty"));
    }
    let (mut count, mut mean, mut m2): (f64, Vec<f64>, Vec<f64>) = (0.0, Vec::new(), Vec::new());
    let mut read = 0u64;
    for i in 0..dataset.len() {
        let Some((img, _)) = bad.read(dataset, i, read)? else { continue };
        read += 1;
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
    if read == 0 {
        return Err(Error::shape("channel_stats", "no sample could be read"));
    }
    Ok((mean, m2.iter().map(|&v| (v / count).sqrt()).collect()))
}
