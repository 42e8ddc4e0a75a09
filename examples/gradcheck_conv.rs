//! Gradient-checks a convolution layer (and the layers around it in a small
//! CNN) against central differences, and prints the reports.
//!
//! `cargo run --release --example gradcheck_conv`

use std::process::ExitCode;

use cnn::conv::{Conv2d, Conv2dConfig, GlobalAvgPool2d, MaxPool2d, Pool2dOptions};
use cnn::nn::{Linear, LinearConfig};
use cnn::tensor::gradcheck::{check_layer, GradCheckConfig};
use cnn::tensor::{random, Layer};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("a gradient check failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A layer to check: its description, the layer, and its input shape.
type Case = (String, Box<dyn Layer<f64>>, Vec<usize>);

fn run() -> cnn::tensor::Result<bool> {
    let mut rng = random::seeded_rng(2026);
    let cfg = GradCheckConfig::default();
    let x = random::normal(&[2, 4, 9, 8], 0.0, 1.0, &mut rng);
    let conv_cfg = Conv2dConfig::new(4, 6, 3).with_stride(2).with_padding(1).with_groups(2);
    let mut cases: Vec<Case> = vec![
        (
            format!("Conv2d {conv_cfg:?}"),
            Box::new(Conv2d::<f64>::new(conv_cfg, &mut rng)?),
            vec![2, 4, 9, 8],
        ),
        (
            "Conv2d 5x3 kernel, dilation 2".into(),
            Box::new(Conv2d::<f64>::new(
                Conv2dConfig::new(4, 3, 5).with_kernel_hw(5, 3).with_dilation(2).with_padding(2),
                &mut rng,
            )?),
            vec![2, 4, 9, 8],
        ),
        (
            "MaxPool2d 3x3 stride 2 pad 1".into(),
            Box::new(MaxPool2d::new(Pool2dOptions::new(3).with_stride(2).with_padding(1))),
            vec![2, 4, 9, 8],
        ),
        ("GlobalAvgPool2d".into(), Box::new(GlobalAvgPool2d::new()), vec![2, 4, 9, 8]),
        (
            "Linear 4 -> 3".into(),
            Box::new(Linear::<f64>::new(LinearConfig::new(4, 3), &mut rng)?),
            vec![2, 4],
        ),
    ];
    let mut all_passed = true;
    for (name, layer, shape) in &mut cases {
        let input =
            if shape.len() == 4 { x.clone() } else { random::normal(shape, 0.0, 1.0, &mut rng) };
        let report = check_layer(layer.as_mut(), &input, 7, &cfg)?;
        println!("{name}\n{report}\n");
        all_passed &= report.passed();
    }
    println!(
        "{}",
        if all_passed { "all gradient checks passed" } else { "SOME GRADIENT CHECKS FAILED" }
    );
    Ok(all_passed)
}
