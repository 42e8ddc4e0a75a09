//! The small default network of `cnn train`, fit to the image size.

use cnn_act::Act;
use cnn_conv::{Conv2dConfig, GlobalAvgPool2d, MaxPool2d, Pool2dOptions};
use cnn_nn::{kaiming_conv, Flatten, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_norm::{BatchNorm, BatchNormConfig};
use cnn_tensor::{Error, Float, Result};
use rand::Rng;

/// The stage widths of [`small_cnn`]; a stage is two conv–BN–ReLU blocks.
pub const SMALL_CNN_WIDTHS: [usize; 3] = [32, 64, 128];

/// How many 2×2 max pools [`small_cnn`] puts between its stages for a map of
/// `size` (the smaller side): one per halving while the map is at least 8
/// pixels, at most two. 8 → 1, 28 → 2, 32 → 2.
pub fn small_cnn_pools(size: usize) -> usize {
    let (mut pools, mut s) = (0, size);
    while s >= 8 && pools < 2 {
        s /= 2;
        pools += 1;
    }
    pools
}

/// A small CNN for images of `image_size = [h, w]` with `in_channels`:
/// stages of two 3×3 conv (no bias) – BatchNorm – ReLU blocks at 32, 64 and
/// 128 channels, a 2×2 max pool between stages ([`small_cnn_pools`] of
/// them, so one more stage), global average pooling and a linear classifier.
/// For the 8×8 digits it is the PyTorch reference recipe's network (32, 32,
/// pool, 64, 64); for 28×28 or 32×32 images, three stages.
///
/// Keys: `features.0` (conv), `features.1` (BatchNorm), `features.2` (ReLU), …, `fc`.
///
/// # Errors
/// [`Error::Config`] for zero channels, sizes or classes.
pub fn small_cnn<T: Float, R: Rng + ?Sized>(
    in_channels: usize,
    image_size: [usize; 2],
    num_classes: usize,
    rng: &mut R,
) -> Result<Sequential<T>> {
    if in_channels == 0 || num_classes == 0 || image_size.contains(&0) {
        return Err(Error::config(
            "small_cnn",
            format!(
                "channels, image size and classes must be positive, got {in_channels}, {image_size:?}, {num_classes}"
            ),
        ));
    }
    let pools = small_cnn_pools(image_size[0].min(image_size[1]));
    let mut features = Sequential::new();
    let mut c_in = in_channels;
    for (stage, &width) in SMALL_CNN_WIDTHS[..=pools].iter().enumerate() {
        if stage > 0 {
            features = features.push(MaxPool2d::new(Pool2dOptions::new(2)));
        }
        for _ in 0..2 {
            let conv = Conv2dConfig::new(c_in, width, 3).with_padding(1).with_bias(false);
            features = features
                .push(kaiming_conv::<T, _>(conv, rng)?)
                .push(BatchNorm::new_2d(BatchNormConfig::new(width))?)
                .push(Act::relu());
            c_in = width;
        }
    }
    Ok(Sequential::new()
        .push_named("features", features)
        .push_named("avgpool", GlobalAvgPool2d::new())
        .push_named("flatten", Flatten::new())
        .push_named("fc", Linear::new(LinearConfig::new(c_in, num_classes), rng)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnn_tensor::{random, Layer, Mode};

    #[test]
    fn fits_the_image_size() {
        assert_eq!([8, 16, 28, 32, 224].map(small_cnn_pools), [1, 2, 2, 2, 2]);
        assert_eq!(small_cnn_pools(4), 0);
        let mut rng = random::seeded_rng(0);
        for (c, size, keys) in [(1, 8, 9), (3, 32, 13), (1, 4, 5)] {
            let mut net = small_cnn::<f32, _>(c, [size, size], 10, &mut rng).unwrap();
            let y = net
                .forward(random::normal(&[2, c, size, size], 0.0, 1.0, &mut rng), Mode::Eval)
                .unwrap();
            assert_eq!(y.shape(), &[2, 10]);
            let mut weights = 0;
            net.visit("", &mut |k, _| weights += usize::from(k.ends_with("weight")));
            assert_eq!(weights, keys, "size {size}");
        }
        assert!(small_cnn::<f32, _>(0, [8, 8], 10, &mut rng).is_err());
    }
}
