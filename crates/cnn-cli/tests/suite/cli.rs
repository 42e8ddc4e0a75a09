//! The `cnn` binary end to end: what it prints, what it writes, how it fails.

#![allow(clippy::unwrap_used)] // test helpers unwrap like the tests themselves

use std::path::{Path, PathBuf};

use crate::common;
use common::*;

#[test]
fn train_writes_every_promised_file_and_eval_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = cnn(&["train", "--epochs", "2", "--out", run.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let line = last_line(&o);
    assert!(line.ends_with(" s") && line.contains("(loss "), "{line}");
    // Ten classes: chance is 10%; two epochs of the default recipe reach far more.
    let acc: f64 = printed_accuracy(&line).parse().unwrap();
    assert!(acc > 60.0, "{line}");
    assert!(stdout(&o).contains("epoch 2/2"), "{}", stdout(&o));

    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("epoch,train_loss,train_accuracy,val_loss,val_accuracy"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["epochs"].as_array().unwrap().len(), 2);
    assert_png_not_blank(&run.join("curves.png"));
    for dir in ["last", "best"] {
        for f in ["model.safetensors", "optimizer.safetensors", "trainer.json"] {
            assert!(run.join(dir).join(f).is_file(), "{dir}/{f}");
        }
    }

    let e = cnn(&["eval", "--run", run.to_str().unwrap()], tmp.path());
    assert!(e.status.success(), "{}", stderr(&e));
    let eval_line = last_line(&e);
    assert_eq!(printed_accuracy(&eval_line), printed_accuracy(&line), "{eval_line} vs {line}");
    assert!(eval_line.ends_with("on 359 images"), "{eval_line}");
    assert!(stdout(&e).contains("top-5 accuracy"));
    assert_png_not_blank(&run.join("confusion.png"));

    let t = cnn(
        &["eval", "--run", run.to_str().unwrap(), "--tta", "4", "--checkpoint", "best"],
        tmp.path(),
    );
    assert!(t.status.success(), "{}", stderr(&t));
    assert!(last_line(&t).ends_with("on 359 images, 4 views averaged"), "{}", last_line(&t));

    // The same directory is not trained over by accident.
    let again = cnn(&["train", "--epochs", "1", "--out", run.to_str().unwrap()], tmp.path());
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a run"), "{}", stderr(&again));
}

#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_and_resume_equals_the_unbroken_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, broken) = (tmp.path().join("whole"), tmp.path().join("broken"));
    let args = |out: &PathBuf| {
        vec![
            "train".to_string(),
            "--epochs".into(),
            "12".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let whole_out = cnn(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>(), tmp.path());
    assert!(whole_out.status.success(), "{}", stderr(&whole_out));

    let o = interrupt_when(&args(&broken), &broken.join("metrics.csv"));
    assert_eq!(o.status.code(), Some(130), "{}{}", stdout(&o), stderr(&o));
    let line = last_line(&o);
    assert!(line.starts_with("interrupted at step "), "{line}");
    assert!(
        line.ends_with(&format!("Resume with: cnn train --resume {}", broken.display())),
        "{line}"
    );

    let r = cnn(&["train", "--resume", broken.to_str().unwrap()], tmp.path());
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).starts_with("resuming small"), "{}", stdout(&r));
    assert_eq!(printed_accuracy(&last_line(&r)), printed_accuracy(&last_line(&whole_out)));
    assert_eq!(
        tensors(&broken.join("last/model.safetensors")),
        tensors(&whole.join("last/model.safetensors"))
    );
    assert_eq!(
        tensors(&broken.join("last/optimizer.safetensors")),
        tensors(&whole.join("last/optimizer.safetensors"))
    );
    assert_eq!(metrics_without_timings(&broken), metrics_without_timings(&whole));
}

#[test]
fn one_thread_or_two_give_the_same_run_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    for (threads, out) in [(1, "t1"), (2, "t2")] {
        let o = cnn_on(
            &["train", "--epochs", "2", "--augment", "crop,cutout", "--out", out, "--quiet"],
            tmp.path(),
            threads,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert_eq!(
            tensors(&tmp.path().join("t1/last").join(f)),
            tensors(&tmp.path().join("t2/last").join(f)),
            "{f}"
        );
    }
    assert_eq!(
        metrics_without_timings(&tmp.path().join("t1")),
        metrics_without_timings(&tmp.path().join("t2"))
    );
}

#[test]
fn divergence_stops_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cnn(
        &["train", "--lr", "1e4", "--schedule", "constant", "--epochs", "2", "--out", "d"],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("error: training diverged at step "), "{err}");
    assert!(err.contains("lower the learning rate"), "{err}");
    assert!(err.contains("no epoch had finished, so there is no checkpoint"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// Runs `args`, expects a failure with one `error:` line containing `needle`, and no panic.
#[test]
fn bad_input_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    fails_with(&["train", "--arch", "lenet"], cwd, "unknown architecture \"lenet\"");
    fails_with(&["train", "--data", "mnist:/nonexistent"], cwd, "/nonexistent: no such directory");
    fails_with(&["train", "--data", "imagenet"], cwd, "unknown data set \"imagenet\"");
    fails_with(&["train", "--lr", "-1"], cwd, "lr must be positive and finite, got -1");
    fails_with(&["train", "--epochs", "abc"], cwd, "invalid value 'abc' for '--epochs <EPOCHS>'");
    fails_with(&["train", "--epochs", "0"], cwd, "epochs must be at least 1");
    fails_with(&["train", "--augment", "rotate"], cwd, "unknown augmentation \"rotate\"");
    fails_with(&["train", "--resume", cwd.to_str().unwrap()], cwd, "has no checkpoint last/");
    fails_with(&["train", "--resume", "x", "--lr", "0.1"], cwd, "cannot be used with");
    fails_with(&["eval", "--run", "/nonexistent"], cwd, "is not a directory");
    fails_with(&["summary", "--arch", "vgg12"], cwd, "depth must be 11, 13, 16 or 19, got 12");
    fails_with(&["summary", "--input", "3x32"], cwd, "expected three sizes");

    // A CIFAR-10 directory whose first batch is cut short.
    let c10 = cwd.join("c10");
    std::fs::create_dir(&c10).unwrap();
    std::fs::write(c10.join("data_batch_1.bin"), vec![1u8; 3073 * 2 + 100]).unwrap();
    fails_with(
        &["train", "--data", &format!("cifar10:{}", c10.display())],
        cwd,
        "data_batch_1.bin",
    );
}

/// MNIST-format files of `n` 28×28 images: class `k` is a bright square in the `k`-th of 4 places.
fn write_idx(dir: &Path, prefix: &str, n: usize) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for i in 0..n {
        let k = i % 4;
        let (y0, x0) = ((k / 2) * 14 + 3, (k % 2) * 14 + 3);
        let mut img = [0u8; 784];
        for y in y0..y0 + 8 {
            for x in x0..x0 + 8 {
                img[y * 28 + x] = 200 + (i % 50) as u8;
            }
        }
        images.extend(img);
        labels.push(k as u8);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn mnist_cifar_and_folder_data_train_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mnist = tmp.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    write_idx(&mnist, "train", 256);
    write_idx(&mnist, "t10k", 64);
    let o = cnn(
        &[
            "train",
            "--data",
            &format!("mnist:{}", mnist.display()),
            "--epochs",
            "5",
            "--batch-size",
            "32",
            "--out",
            "m",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let acc: f64 = printed_accuracy(&last_line(&o)).parse().unwrap();
    assert!(acc >= 90.0, "four placed squares: {}", last_line(&o));

    // CIFAR-10 batches: class = the dominant color channel.
    let c10 = tmp.path().join("c10");
    std::fs::create_dir(&c10).unwrap();
    let record = |label: u8, i: usize| {
        let mut r = vec![label];
        for c in 0..3 {
            r.extend(std::iter::repeat_n(
                if c == label as usize % 3 { 220 } else { (i % 40) as u8 },
                1024,
            ));
        }
        r
    };
    for b in 1..=5 {
        let bytes: Vec<u8> = (0..30).flat_map(|i| record((i % 10) as u8, i + b)).collect();
        std::fs::write(c10.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let bytes: Vec<u8> = (0..20).flat_map(|i| record((i % 10) as u8, i)).collect();
    std::fs::write(c10.join("test_batch.bin"), bytes).unwrap();
    let o = cnn(
        &["train", "--data", &format!("cifar10:{}", c10.display()), "--epochs", "1", "--out", "c"],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(last_line(&o).starts_with("test accuracy "));

    // An image folder with a held-out split, trained through a torchvision net (gray → RGB not needed: RGB PNGs).
    let folder = tmp.path().join("shapes");
    for (class, color) in [("red", [230u8, 20, 20]), ("blue", [20, 20, 230])] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        for i in 0..10u8 {
            let img = image::RgbImage::from_fn(12, 10, |x, _| {
                image::Rgb(color.map(|c| c.saturating_sub(i * 3).saturating_sub(x as u8)))
            });
            img.save(folder.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let spec = format!("folder:{}", folder.display());
    let o = cnn(
        &[
            "train",
            "--data",
            &spec,
            "--image-size",
            "16",
            "--epochs",
            "2",
            "--val-fraction",
            "0.3",
            "--out",
            "f",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("6 for validation (the held-out split of the folder)"),
        "{}",
        stdout(&o)
    );
    let o = cnn(
        &[
            "train",
            "--data",
            &spec,
            "--image-size",
            "16",
            "--arch",
            "resnet20",
            "--epochs",
            "2",
            "--out",
            "g",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    fails_with(
        &["train", "--data", &spec, "--epochs", "1", "--out", "h"],
        tmp.path(),
        "needs at least 2 steps",
    );
}

#[test]
fn digits_train_through_a_cifar_resnet() {
    // Gray digits are repeated into RGB for networks built for three channels.
    let tmp = tempfile::tempdir().unwrap();
    let o = cnn(
        &["train", "--arch", "resnet8", "--epochs", "1", "--batch-size", "128", "--out", "r"],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = cnn(&["eval", "--run", "r"], tmp.path());
    assert_eq!(printed_accuracy(&last_line(&e)), printed_accuracy(&last_line(&o)));
}

#[test]
fn summary_preview_stats_and_help() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cnn(&["summary", "--arch", "resnet20"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("272,474") || stdout(&o).contains("272474"), "{}", stdout(&o));
    let o = cnn(&["summary"], tmp.path());
    assert!(stdout(&o).contains("features.0"), "{}", stdout(&o));

    let o = cnn(&["augment-preview", "--out", "p.png", "--augment", "crop,cutout"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_png_not_blank(&tmp.path().join("p.png"));

    let o = cnn(&["stats"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        last_line(&o).starts_with("digits: 1438 training images of 1×8×8, 10 classes: mean ["),
        "{}",
        last_line(&o)
    );

    for cmd in ["train", "eval", "summary", "augment-preview", "stats"] {
        let o = cnn(&[cmd, "--help"], tmp.path());
        assert!(o.status.success());
        assert!(stdout(&o).contains("Examples:"), "{cmd} --help has no examples");
    }
}

/// The default build needs no MPI: `distributed` is off unless asked for
/// (tests/distributed.rs checks that the feature brings it in).
#[test]
fn the_default_build_has_no_mpi_in_its_tree() {
    let tree = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-p", "cnn-cli", "-e", "normal,build", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(tree.status.success(), "{}", String::from_utf8_lossy(&tree.stderr));
    let out = String::from_utf8_lossy(&tree.stdout);
    assert!(out.lines().any(|l| l.starts_with("cnn-train v")), "{out}");
    let mpi: Vec<&str> =
        out.lines().filter(|l| l.starts_with("mpi") || l.contains("bindgen")).collect();
    assert!(mpi.is_empty(), "MPI in the default build: {mpi:?}");
}

/// (A build with the feature runs tests/distributed.rs instead.)
#[cfg(not(feature = "distributed"))]
#[test]
fn distributed_without_the_feature_says_how_to_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    fails_with(&["train", "--distributed"], tmp.path(), "--features distributed");
    let o = cnn(&["train", "--sync-bn"], tmp.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--distributed"), "{}", stderr(&o));
}

/// `cnn train | head -1`: when the reader goes away the command ends as Unix
/// commands do (SIGPIPE), not with a panic about a failed print.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_command_without_a_panic() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cnn"))
        .args(["train", "--epochs", "30", "--out", "run", "--threads", "1"])
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("training small"), "{first}");
    // The reader is dropped here, as `head -1` exits.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {err}", out.status);
}

/// `cnn env`, `cnn --help` and the README name every switch of the table in
/// cnn_tensor::switches, and the README every command: a switch or command
/// added without its documentation fails here.
#[test]
fn env_help_and_readme_list_every_switch_and_command() {
    let tmp = cnn_test_support::temp_dir("env");
    let env = cnn(&["env"], tmp.path());
    assert!(env.status.success(), "{}", stderr(&env));
    let out = common::stdout(&env);
    let help = common::stdout(&cnn(&["--help"], tmp.path()));
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    for s in cnn_tensor::switches::SWITCHES {
        assert!(out.contains(s.name), "cnn env leaves out {}:\n{out}", s.name);
        assert!(help.contains(s.name), "cnn --help leaves out {}", s.name);
        assert!(readme.contains(&format!("| `{}` |", s.name)), "the README leaves out {}", s.name);
    }
    assert!(out.lines().last().unwrap().starts_with("4 switches"), "{out}");
    // Every subcommand `cnn --help` lists has a line in the README.
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 11, "{commands:?}");
    for c in commands {
        assert!(readme.contains(&format!("cnn {c}")), "the README never shows `cnn {c}`");
    }
}

/// `--profile` prints one line per phase before the final line, and the
/// lines add up to the wall time it states; without it, no table.
#[test]
fn profile_accounts_for_the_whole_command() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o =
        cnn(&["train", "--epochs", "2", "--profile", "--out", run.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(last_line(&o).starts_with("test accuracy "), "{out}");
    let head = out.lines().find(|l| l.starts_with("profile of the whole command, ")).expect(&out);
    let total: f64 = head.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let rows: Vec<(String, f64)> = out
        .lines()
        .skip_while(|l| !l.starts_with("profile of"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            // `  name …   0.123 s  4.5%`
            let words: Vec<&str> = l.split_whitespace().collect();
            let k = words.len();
            assert!(k >= 4 && words[k - 2] == "s" && words[k - 1].ends_with('%'), "{l}");
            (words[..k - 3].join(" "), words[k - 3].parse::<f64>().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 14, "{out}");
    let seconds = |name: &str| rows.iter().find(|(n, _)| n.starts_with(name)).expect(name).1;
    for phase in ["steps", "first step", "validation", "checkpoints", "metrics and curves"] {
        assert!(seconds(phase) > 0.0, "{phase}: {out}");
    }
    let sum: f64 = rows.iter().map(|(_, s)| s).sum();
    assert!((sum - total).abs() <= 0.01 + 0.01 * total, "{sum} vs {total}: {out}");

    let plain = cnn(
        &["train", "--epochs", "1", "--out", tmp.path().join("b").to_str().unwrap()],
        tmp.path(),
    );
    assert!(!stdout(&plain).contains("profile of"), "{}", stdout(&plain));
}
