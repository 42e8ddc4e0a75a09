//! `cnn eval --weights FILE --image PATH...`: a pretrained network's top-5
//! for single images, to check a downloaded model before transferring it.

use std::path::{Path, PathBuf};

use cnn_augment::{crop, normalize, resize_antialias};
use cnn_nn::StateDict;
use cnn_tensor::{Error, Result};
use cnn_train::{head_path, predict};
use ndarray::{Array3, Axis};

use crate::arch;

/// What `--weights --image` needs.
pub struct ClassifyRequest<'a> {
    /// The safetensors file.
    pub weights: &'a Path,
    /// The architecture.
    pub arch: &'a str,
    /// The images.
    pub images: &'a [PathBuf],
    /// Class names, one per line (index order), if given.
    pub labels: Option<&'a Path>,
    /// Side of the center crop fed to the network.
    pub size: usize,
    /// Per-channel mean and std.
    pub mean: &'a [f64],
    /// Per-channel std.
    pub std: &'a [f64],
}

/// torchvision's evaluation transform: resize the shorter side to
/// `size · 256 / 224` (antialiased), center-crop `size × size`; then as
/// many channels as the network takes (gray averages RGB).
fn preprocess(img: Array3<f32>, size: usize, channels: usize) -> Result<Array3<f32>> {
    let (_, h, w) = img.dim();
    let short = (size * 256).div_ceil(224);
    let (nh, nw) =
        if h <= w { (short, (w * short).div_ceil(h)) } else { ((h * short).div_ceil(w), short) };
    let resized = resize_antialias(img.view(), [nh, nw])?;
    let top = ((nh - size) / 2) as isize;
    let left = ((nw - size) / 2) as isize;
    let cropped = crop(resized.view(), top, left, size, size)?;
    Ok(if channels == 1 {
        cropped.mean_axis(Axis(0)).map_or(cropped.clone(), |m| m.insert_axis(Axis(0)))
    } else {
        cropped
    })
}

/// The first layer's input channels, from the file: the second axis of the
/// weight of the network's first conv (its first rank-4 parameter in
/// state-dict order; a depthwise conv's weight, first by name in ConvNeXt,
/// would say 1); 3 when the file lacks it.
fn input_channels(dict: &StateDict, model: &dyn cnn_tensor::Layer<f32>) -> usize {
    let mut first = None;
    model.visit("", &mut |k, p| {
        if first.is_none() && p.value().ndim() == 4 {
            first = Some(k.to_string());
        }
    });
    first
        .and_then(|k| dict.tensors.get(&k))
        .and_then(|(s, _)| (s.len() == 4 && s[1] > 0).then_some(s[1]))
        .unwrap_or(3)
}

/// Class names from a file, one per line in class order (blank lines
/// skipped); an error for `op` when they are not `classes` names.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Config`] for another count.
pub fn read_labels(path: &Path, classes: usize, op: &'static str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let names: Vec<String> =
        text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    if names.len() != classes {
        return Err(Error::config(
            op,
            format!("{} names {} classes, the network has {classes}", path.display(), names.len()),
        ));
    }
    Ok(names)
}

/// A pretrained network built for `arch` with its weights from `weights`
/// (a common key prefix stripped), for `size × size` inputs: the network,
/// its class count (the head's first axis in the file) and input channels.
///
/// # Errors
/// Unreadable weights; weights that do not fit the architecture.
pub fn load_pretrained(
    weights: &Path,
    arch_name: &str,
    size: usize,
) -> Result<(arch::Built, usize, usize)> {
    let mut dict = StateDict::read(weights)?;
    let probe = arch::build(arch_name, [3, size, size], 1000, 0)?;
    let mut keys = Vec::new();
    probe.model.visit("", &mut |k, _| keys.push(k.to_string()));
    if let Some(prefix) = dict.common_prefix(&keys) {
        dict.strip_prefix(&prefix);
    }
    let channels = input_channels(&dict, &*probe.model);
    let image = [channels, size, size];
    let (head, _) = head_path(&*probe.model)?;
    let head_key = format!("{head}.weight");
    let bad = |msg: String| Error::format(weights.display(), msg);
    let classes = match dict.tensors.get(&head_key) {
        None => return Err(bad(format!("no head weight {head_key} for --arch {arch_name}"))),
        // The class count is the head's first axis: a file's shape is checked, never indexed blindly.
        Some((shape, _)) => match shape.as_slice() {
            [classes, _] if *classes > 0 => *classes,
            other => {
                return Err(bad(format!(
                    "head weight {head_key} has shape {other:?}, expected [classes, features] with classes > 0"
                )))
            }
        },
    };
    let mut built = arch::build(arch_name, image, classes, 0)?;
    dict.load_into(&mut *built.model, cnn_nn::LoadMode::Strict, &|_| false)?;
    Ok((built, classes, channels))
}

/// Loads the network (its class count read from the file's head) and prints
/// one line per image: the path, then the top-5 as `class:probability`. An
/// image that cannot be read gets an `error:` line on stderr instead, and the
/// others are still classified; returns how many could not be.
///
/// # Errors
/// Unreadable weights or labels; weights that do not fit the architecture.
pub fn classify(req: &ClassifyRequest<'_>) -> Result<usize> {
    let (mut built, classes, channels) = load_pretrained(req.weights, req.arch, req.size)?;
    let names = req.labels.map(|path| read_labels(path, classes, "eval")).transpose()?;
    let (mean, std) = if channels == req.mean.len() {
        (req.mean.to_vec(), req.std.to_vec())
    } else {
        let avg = |v: &[f64]| vec![v.iter().sum::<f64>() / v.len().max(1) as f64; channels];
        (avg(req.mean), avg(req.std))
    };
    let mut failed = 0;
    for path in req.images {
        let img = match cnn_data::read_image(path) {
            Ok(img) => preprocess(img, req.size, channels)?,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let img = normalize(img.view(), &mean, &std)?;
        let p = predict(&mut *built.model, img.insert_axis(Axis(0)).into_dyn())?;
        let row = p.probabilities.row(0);
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let top: Vec<String> = order
            .iter()
            .take(5)
            .map(|&c| {
                let name = names.as_ref().map_or_else(|| c.to_string(), |n| n[c].clone());
                format!("{name}:{:.4}", row[c])
            })
            .collect();
        println!("{} {}", path.display(), top.join(" "));
    }
    Ok(failed)
}
