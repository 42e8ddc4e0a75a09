//! Functional transforms: padding modes, crops past the border, resize
//! identities, and errors. (Values against torchvision: the parity test.)

#![allow(clippy::unwrap_used)]

use cnn_augment::{
    adjust_brightness, adjust_hue, crop, erase, hflip, normalize, pad, resize, resize_antialias,
    vflip, PadMode,
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

#[test]
fn antialiased_downscaling_averages_what_it_covers() {
    // Halving a row: output 1 is centred on inputs 2-3 with triangle weights 1:3:3:1 over inputs 1-4.
    let img = row(&[0.0, 8.0, 16.0, 24.0, 32.0, 40.0, 48.0, 56.0]);
    let out = resize_antialias(img.view(), [1, 4]).unwrap();
    assert!((out[[0, 0, 1]] - (8.0 + 3.0 * 16.0 + 3.0 * 24.0 + 32.0) / 8.0).abs() < 1e-12, "{out}");
    // PyTorch 2.15: F.interpolate(arange(63).view(1, 1, 9, 7), size=(4, 3), mode="bilinear", antialias=True).
    let grid = Array3::from_shape_fn((1, 9, 7), |(_, i, j)| (i * 7 + j) as f64);
    let torch = [
        6.657142857142858,
        8.8,
        10.942857142857143,
        20.83275261324042,
        22.975609756097562,
        25.118466898954708,
        36.88153310104531,
        39.02439024390244,
        41.16724738675959,
        51.057142857142864,
        53.2,
        55.34285714285715,
    ];
    let ours = resize_antialias(grid.view(), [4, 3]).unwrap();
    assert!(ours.iter().zip(torch).all(|(a, b)| (a - b).abs() < 1e-12), "{ours}");
    // A constant image stays constant; the same size is the identity; upscaling is plain bilinear.
    let flat = Array3::from_elem((2, 9, 7), 0.3f64);
    assert!(resize_antialias(flat.view(), [4, 3])
        .unwrap()
        .iter()
        .all(|&v| (v - 0.3).abs() < 1e-12));
    let img2 = Array3::from_shape_fn((1, 5, 4), |(_, i, j)| (i * 4 + j) as f64);
    assert_eq!(resize_antialias(img2.view(), [5, 4]).unwrap(), img2);
    let up = resize_antialias(img2.view(), [10, 8]).unwrap();
    let plain = resize(img2.view(), [10, 8]).unwrap();
    assert!(up.iter().zip(&plain).all(|(a, b)| (a - b).abs() < 1e-12));
}
