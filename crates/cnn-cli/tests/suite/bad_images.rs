//! A photo folder cannot take a run down: a JPEG that panics the decoder is
//! one `error:` line naming it (no backtrace), `--bad-images skip` trains
//! past it and lists it, `cnn check-data` finds it beforehand, `cnn stats`
//! honours the policy, and `cnn eval --image` classifies the good images
//! around it.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};

use cnn_test_support::images::panicking_jpeg;
use common::{cnn, last_line, stderr, stdout, tensors};

/// Two classes of small RGB PNGs (12 each) and, in `red/`, the JPEG that
/// makes zune-jpeg panic.
fn folder(root: &Path) -> PathBuf {
    let dir = root.join("photos");
    for (class, color) in [("red", [230u8, 20, 20]), ("blue", [20, 20, 230])] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..12u8 {
            let img = image::RgbImage::from_fn(12, 10, |x, y| {
                image::Rgb(color.map(|c| c.saturating_sub(i * 3 + (x + y) as u8)))
            });
            img.save(dir.join(class).join(format!("{i:02}.png"))).unwrap();
        }
    }
    std::fs::write(dir.join("red").join("bad.jpg"), panicking_jpeg()).unwrap();
    dir
}

/// Asserts that `cnn` failed with exactly one stderr line, `error: …`
/// naming `name` and saying the decoder failed, and nothing of a panic.
fn one_error_line_naming(o: &std::process::Output, name: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(name), "{err}");
    assert!(lines[0].contains("the JPEG decoder failed on this file"), "{err}");
    assert!(!err.contains("panicked at") && !err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn a_decoder_panic_is_one_error_line_and_skip_trains_past_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let spec = format!("folder:{}", dir.display());
    let base = ["train", "--data", &spec, "--image-size", "16", "--epochs", "2"];

    // Default: the run stops at the file, naming it, with the way around it.
    let o = cnn(&[&base[..], &["--out", "fail"]].concat(), tmp.path());
    one_error_line_naming(&o, "bad.jpg");
    assert!(stderr(&o).contains("samples read before it"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--bad-images skip"), "{}", stderr(&o));

    // Skip: trains to the end, lists the file once, says so in the final line.
    let o = cnn(&[&base[..], &["--out", "skip", "--bad-images", "skip"]].concat(), tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let last = last_line(&o);
    assert!(last.starts_with("test accuracy "), "{last}");
    assert!(
        last.ends_with(&format!(
            "; 1 unreadable image skipped, listed in {}",
            Path::new("skip").join("skipped.txt").display()
        )),
        "{last}"
    );
    let listed = std::fs::read_to_string(tmp.path().join("skip/skipped.txt")).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let (path, error) = listed.trim_end().split_once('\t').unwrap();
    assert!(path.ends_with("bad.jpg"), "{listed}");
    assert!(error.contains("the JPEG decoder failed on this file"), "{listed}");

    // The same run again gives the same weights: the skip is deterministic.
    let o = cnn(&[&base[..], &["--out", "skip2", "--bad-images", "skip"]].concat(), tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        tensors(&tmp.path().join("skip/last/model.safetensors")),
        tensors(&tmp.path().join("skip2/last/model.safetensors"))
    );
}

#[cfg(unix)]
#[test]
fn a_skipping_run_resumes_bitwise_with_the_same_files_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    let spec = format!("folder:{}", dir.display());
    let args = |out: &str| -> Vec<String> {
        ["train", "--data", &spec, "--image-size", "16", "--epochs", "3", "--bad-images", "skip"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--out".to_string(), tmp.path().join(out).display().to_string()])
            .collect()
    };
    let o = cnn(&args("whole").iter().map(String::as_str).collect::<Vec<_>>(), tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    // Stopped after the first epoch's checkpoint, then resumed.
    let broken = tmp.path().join("broken");
    let o = common::interrupt_when(&args("broken"), &broken.join("metrics.csv"));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let o = cnn(&["train", "--resume", broken.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(last_line(&o).contains("1 unreadable image skipped"), "{}", last_line(&o));
    assert_eq!(
        tensors(&broken.join("last/model.safetensors")),
        tensors(&tmp.path().join("whole/last/model.safetensors"))
    );
    let read = |d: &str| std::fs::read_to_string(tmp.path().join(d).join("skipped.txt")).unwrap();
    assert_eq!(read("broken").lines().count(), 1);
    assert_eq!(
        read("broken").split('\t').nth(1),
        read("whole").split('\t').nth(1),
        "the same file, for the same reason"
    );
}

#[test]
fn check_data_lists_the_unreadable_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = folder(tmp.path());
    std::fs::write(
        dir.join("blue").join("cut.png"),
        &std::fs::read(dir.join("blue/00.png")).unwrap()[..40],
    )
    .unwrap();
    let o = cnn(&["check-data", "--data", &format!("folder:{}", dir.display())], tmp.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 2, "{out}");
    assert!(errors.iter().any(|l| l.contains("bad.jpg") && l.contains("decoder failed")), "{out}");
    assert!(errors.iter().any(|l| l.contains("cut.png")), "{out}");
    assert!(last_line(&o).contains("2 of 26 images unreadable"), "{out}");
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    // `cnn stats` fails on them by default, and leaves them out under skip.
    let spec = format!("folder:{}", dir.display());
    let o = cnn(&["stats", "--data", &spec], tmp.path());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).starts_with("error: ") && stderr(&o).lines().count() == 1, "{}", stderr(&o));
    let o = cnn(&["stats", "--data", &spec, "--bad-images", "skip"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(last_line(&o).contains("unreadable left out"), "{}", stdout(&o));

    std::fs::remove_file(dir.join("blue").join("cut.png")).unwrap();
    std::fs::remove_file(dir.join("red").join("bad.jpg")).unwrap();
    let o = cnn(&["check-data", "--data", &format!("folder:{}", dir.display())], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(last_line(&o).contains("all 24 images readable"), "{}", stdout(&o));
}

#[test]
fn eval_classifies_the_good_images_around_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cnn(&["train", "--epochs", "1", "--out", "digits"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = tmp.path().join("digits/last/model.safetensors");
    let w = weights.to_str().unwrap();
    let bad = tmp.path().join("bad.jpg");
    std::fs::write(&bad, panicking_jpeg()).unwrap();
    let good = tmp.path().join("good.png");
    image::GrayImage::from_fn(8, 8, |x, _| image::Luma([(x * 30) as u8])).save(&good).unwrap();
    let (b, g) = (bad.to_str().unwrap(), good.to_str().unwrap());
    let o = cnn(
        &["eval", "--weights", w, "--arch", "small", "--image-size", "8", "--image", b, g],
        tmp.path(),
    );
    // As `cat` with a missing file: the others are done, the status says not all were.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    one_error_line_naming(&o, "bad.jpg");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(g) && out.split(' ').count() == 6, "{out}");

    // A weights file whose head has rank 0 is refused in one line (it panicked before).
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let head = st
        .tensors()
        .into_iter()
        .filter(|(k, t)| k.ends_with(".weight") && t.shape().len() == 2)
        .map(|(k, _)| k)
        .max()
        .unwrap();
    let scalar = [0u8; 4];
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().filter(|(k, _)| *k != head).collect();
    views.push((
        head.clone(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], &scalar).unwrap(),
    ));
    let broken = tmp.path().join("rank0.safetensors");
    safetensors::serialize_to_file(views, None, &broken).unwrap();
    let o = cnn(
        &[
            "eval",
            "--weights",
            broken.to_str().unwrap(),
            "--arch",
            "small",
            "--image-size",
            "8",
            "--image",
            g,
        ],
        tmp.path(),
    );
    let err = stderr(&o);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains(&format!("head weight {head} has shape []")),
        "{err}"
    );
}
