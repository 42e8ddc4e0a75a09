//! Functional transforms: padding modes, crops past the border, resize
//! identities, and errors. (Values against torchvision: the parity test.)

#![allow(clippy::unwrap_used)]

use cnn_augment::{
    adjust_brightness, adjust_hue, crop, erase, hflip, normalize, pad, resize, vflip, PadMode,
};
use ndarray::{array, Array3};

fn row(values: &[f64]) -> Array3<f64> {
    Array3::from_shape_vec((1, 1, values.len()), values.to_vec()).unwrap()
}

#[test]
fn padding_modes_follow_torchvision() {
    let img = row(&[0.0, 1.0, 2.0]);
    let p = |mode| pad(img.view(), [2, 0, 2, 0], mode).unwrap().into_raw_vec_and_offset().0;
    assert_eq!(p(PadMode::Reflect), vec![2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0]);
    assert_eq!(p(PadMode::Replicate), vec![0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0]);
    assert_eq!(p(PadMode::Constant(0.5)), vec![0.5, 0.5, 0.0, 1.0, 2.0, 0.5, 0.5]);
    assert!(pad(img.view(), [3, 0, 0, 0], PadMode::Reflect).is_err());
}

#[test]
fn geometry_identities() {
    let img = Array3::from_shape_fn((2, 5, 4), |(c, i, j)| (c * 20 + i * 4 + j) as f64 / 40.0);
    assert_eq!(hflip(hflip(img.view()).view()), img);
    assert_eq!(vflip(vflip(img.view()).view()), img);
    assert_eq!(resize(img.view(), [5, 4]).unwrap(), img);
    // A crop past the border reads zeros there, as torchvision pads.
    let c = crop(img.view(), -1, 2, 3, 3).unwrap();
    assert_eq!(c.dim(), (2, 3, 3));
    assert_eq!(c[[0, 0, 0]], 0.0);
    assert_eq!(c[[0, 1, 0]], img[[0, 0, 2]]);
    assert_eq!(c[[0, 1, 2]], 0.0);
    // Doubling a 2-pixel row: (¼, ¾) interpolation as align_corners = false.
    let r = resize(row(&[0.0, 1.0]).view(), [1, 4]).unwrap();
    assert_eq!(r.into_raw_vec_and_offset().0, vec![0.0, 0.25, 0.75, 1.0]);
}

#[test]
fn color_edges_and_errors() {
    let img = array![[[0.2, 0.9]], [[0.4, 0.1]], [[0.6, 0.5]]];
    assert_eq!(adjust_brightness(img.view(), 0.0).unwrap(), Array3::zeros((3, 1, 2)));
    assert_eq!(
        adjust_brightness(img.view(), 10.0).unwrap().iter().cloned().fold(0.0, f64::max),
        1.0
    );
    // A full turn of hue in two halves gives the image back.
    let back = adjust_hue(adjust_hue(img.view(), 0.5).unwrap().view(), -0.5).unwrap();
    assert!(back.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-12));
    assert!(adjust_hue(img.view(), 0.6).is_err());
    assert!(adjust_brightness(img.view(), -1.0).is_err());
    assert!(normalize(img.view(), &[0.5, 0.5], &[1.0, 1.0]).is_err());
    assert!(normalize(img.view(), &[0.5; 3], &[1.0, 0.0, 1.0]).is_err());
    assert!(erase(img.view(), 0, 1, 1, 2, 0.0).is_err());
    assert!(resize(img.view(), [0, 3]).is_err());
}
