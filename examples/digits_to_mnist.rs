//! Writes an MNIST-format data set (IDX files named as MNIST's) derived from
//! the embedded digits, for trying `cnn train --data mnist:DIR` without a
//! download and for timing it beside PyTorch: each 8×8 digit is scaled to
//! 20×20 (MNIST's digit box) and placed in a 28×28 frame, the training ones
//! `copies` times at random offsets of up to ±3 pixels, the test ones once,
//! centred.
//!
//! `cargo run --release --example digits_to_mnist -- DIR [copies]` (default 8 copies: 11 504 training images)

use std::path::{Path, PathBuf};

use cnn::data::{Dataset, Digits};
use cnn::tensor::{random::seeded_rng, write_atomic, Error, Result};
use rand::Rng;

/// IDX header: magic (unsigned bytes, `dims` dimensions), then each size big-endian.
fn idx(dims: &[usize], body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend(body);
    out
}

fn write_split(
    dir: &Path,
    prefix: &str,
    data: &dyn Dataset,
    copies: usize,
    seed: u64,
) -> Result<usize> {
    let mut rng = seeded_rng(seed);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..data.len() {
        let (img, label) = data.get(i)?;
        let big = cnn::augment::resize(img.view(), [20, 20])?;
        for _ in 0..copies {
            let (dy, dx) = if copies == 1 {
                (4, 4)
            } else {
                (rng.random_range(1..=7), rng.random_range(1..=7))
            };
            let mut frame = [0u8; 784];
            for y in 0..20 {
                for x in 0..20 {
                    frame[(y + dy) * 28 + x + dx] =
                        (big[[0, y, x]].clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
            pixels.extend(frame);
            labels.push(label as u8);
        }
    }
    let n = labels.len();
    write_atomic(&dir.join(format!("{prefix}-images-idx3-ubyte")), &idx(&[n, 28, 28], pixels))?;
    write_atomic(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &idx(&[n], labels))?;
    Ok(n)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "digits-mnist".into()));
    let copies: usize = match args.next() {
        Some(c) => c.parse().map_err(|_| {
            Error::config("digits_to_mnist", format!("copies must be a number, got {c:?}"))
        })?,
        None => 8,
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Io { context: format!("create {}", dir.display()), source: e })?;
    let (train, test) = Digits::load()?.split(0.2, 0)?;
    let n_train = write_split(&dir, "train", &train, copies.max(1), 1)?;
    let n_test = write_split(&dir, "t10k", &test, 1, 2)?;
    println!("wrote {n_train} training and {n_test} test images to {}", dir.display());
    Ok(())
}
