//! `cnn tune`, `cnn finetune`, `cnn eval --weights --image`, `cnn init-stats`
//! and `cnn degradation` end to end, on small budgets.

#![allow(clippy::unwrap_used)]

use crate::common;
use common::*;

#[test]
fn tune_writes_the_report_and_train_takes_best_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tune");
    let o = cnn(&["tune", "--budget", "small", "--out", out.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let line = last_line(&o);
    assert!(
        line.starts_with("tuned in ") && line.contains("train it with: cnn train --config"),
        "{line}"
    );
    let text = stdout(&o);
    for step in 1..=6 {
        assert!(text.contains(&format!("step {step}/6")), "{text}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for heading in [
        "## Step 1: Check the initial loss",
        "## Step 2: Overfit a small sample",
        "## Step 3: Find a working learning rate",
        "## Step 4: Coarse search",
        "## Step 5: Refine",
        "## Step 6: Read the curves",
    ] {
        assert!(md.contains(heading), "{heading} missing:\n{md}");
    }
    assert_eq!(md.matches("**Verdict: ").count(), 6);
    for step in ["coarse", "refine"] {
        let trial = out.join("tensorboard").join(step).join("trial-1");
        assert_eq!(cnn_train::tensorboard::event_files(&trial).unwrap().len(), 1, "{step}");
    }
    assert_eq!(md.matches("**What to do next:**").count(), 6);
    for png in ["overfit.png", "lr_sweep.png", "coarse.png", "refine.png", "curves.png"] {
        assert!(md.contains(&format!("]({png})")), "{png} not linked");
        assert_png_not_blank(&out.join(png));
    }
    let run = tmp.path().join("run");
    let best = out.join("best.json");
    let o = cnn(
        &["train", "--config", best.to_str().unwrap(), "--out", run.to_str().unwrap(), "-q"],
        tmp.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let acc: f64 = printed_accuracy(&last_line(&o)).parse().unwrap();
    assert!(acc > 90.0, "{acc}");
    // The recipe flags and --config exclude each other; a bad file is one line.
    fails_with(
        &["train", "--config", best.to_str().unwrap(), "--lr", "0.1"],
        tmp.path(),
        "cannot be used with",
    );
    std::fs::write(tmp.path().join("bad.json"), "{\"lr\": 1}").unwrap();
    fails_with(&["train", "--config", "bad.json"], tmp.path(), "bad.json: not a training config");
    fails_with(
        &["tune", "--out", out.to_str().unwrap()],
        tmp.path(),
        "already holds a tuning report",
    );
}

#[test]
fn finetune_transfers_a_run_and_eval_classifies_images() {
    let tmp = tempfile::tempdir().unwrap();
    let pre = tmp.path().join("pre");
    let o = cnn(&["train", "--epochs", "3", "--out", pre.to_str().unwrap(), "-q"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = pre.join("last/model.safetensors");
    let w = weights.to_str().unwrap();
    for (mode, extra) in [
        ("linear-probe", vec![]),
        ("finetune", vec![]),
        ("partial", vec!["--trainable", "features.10,features.11,fc"]),
    ] {
        let out = tmp.path().join(mode);
        let mut args = vec![
            "finetune",
            "--weights",
            w,
            "--arch",
            "small",
            "--mode",
            mode,
            "--epochs",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = cnn(&args, tmp.path());
        assert!(o.status.success(), "{mode}: {}{}", stdout(&o), stderr(&o));
        let text = stdout(&o);
        assert!(text.contains("skipped fc.weight: the head is replaced"), "{text}");
        assert!(text.contains("normalization the pretraining run's"), "{text}");
        assert_eq!(
            text.contains("computed the frozen backbone's features once"),
            mode == "linear-probe",
            "{text}"
        );
        let line = last_line(&o);
        assert!(line.contains("test accuracy") && line.contains("run saved in"), "{line}");
        let events = cnn_train::tensorboard::event_files(&out).unwrap();
        assert_eq!(events.len(), 1, "{mode}: a TensorBoard log");
        // The run evaluates like any other.
        let o = cnn(&["eval", "--run", out.to_str().unwrap()], tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    fails_with(
        &["finetune", "--weights", w, "--arch", "small", "--mode", "partial"],
        tmp.path(),
        "--mode partial needs --trainable",
    );
    fails_with(
        &[
            "finetune",
            "--weights",
            w,
            "--arch",
            "small",
            "--mode",
            "partial",
            "--trainable",
            "layer4",
        ],
        tmp.path(),
        "no parameter is under \"layer4\"; the parts are features, fc",
    );
    fails_with(
        &["finetune", "--weights", w, "--arch", "resnet20"],
        tmp.path(),
        "state dict does not match the model",
    );

    // Top-5 per image, with names from a labels file.
    let img = tmp.path().join("digit.png");
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([if x == 3 || y == 2 { 255 } else { 0 }]))
        .save(&img)
        .unwrap();
    let labels = tmp.path().join("labels.txt");
    std::fs::write(&labels, (0..10).map(|d| format!("digit-{d}\n")).collect::<String>()).unwrap();
    let i = img.to_str().unwrap();
    let o = cnn(
        &[
            "eval",
            "--weights",
            w,
            "--arch",
            "small",
            "--image-size",
            "8",
            "--image",
            i,
            i,
            "--labels",
            labels.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2);
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(fields[0], i);
    assert_eq!(fields.len(), 6, "{}", lines[0]);
    let probs: Vec<f64> = fields[1..]
        .iter()
        .map(|f| {
            assert!(f.starts_with("digit-"), "{f}");
            f.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(
        probs.windows(2).all(|p| p[0] >= p[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-3,
        "{probs:?}"
    );
    fails_with(
        &["eval", "--weights", w, "--arch", "small", "--image", "missing.png", "--image-size", "8"],
        tmp.path(),
        "missing.png",
    );
    fails_with(&["eval", "--image", i], tmp.path(), "required arguments were not provided");
}

#[test]
fn init_stats_shows_the_collapse_and_kaiming_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cnn(&["init-stats", "--dims", "1024x7", "--init", "normal:0.01,kaiming"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let std_at = |init: &str, layer: usize| -> f64 {
        let row = text
            .lines()
            .find(|l| {
                l.starts_with(init) && l.split_whitespace().nth_back(2) == Some(&layer.to_string())
            })
            .unwrap_or_else(|| panic!("{init} layer {layer}:\n{text}"));
        row.split_whitespace().last().unwrap().parse().unwrap()
    };
    // N(0, 0.01²) on width 1024: each ReLU layer multiplies the std by about 0.01·√512 ≈ 0.23.
    assert!(std_at("N(0,", 7) < 1e-3 * std_at("N(0,", 1), "{text}");
    let (k1, k7) = (std_at("Kaiming", 1), std_at("Kaiming", 7));
    assert!((0.5..1.5).contains(&(k7 / k1)), "{k1} → {k7}");
    assert_png_not_blank(&tmp.path().join("init_stats.png"));
    fails_with(&["init-stats", "--init", "he"], tmp.path(), "unknown init \"he\"");
    fails_with(&["init-stats", "--dims", "0x3"], tmp.path(), "--dims must be");
}

#[test]
fn degradation_runs_end_to_end_on_a_tiny_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("deg");
    let o = cnn(
        &[
            "degradation",
            "--depths",
            "8,14",
            "--epochs",
            "1",
            "--samples",
            "200",
            "--image-size",
            "8",
            "--out",
            out.to_str().unwrap(),
            "-q",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    for net in ["plain-8", "resnet-8", "plain-14", "resnet-14"] {
        assert!(text.contains(net), "{text}");
    }
    assert!(last_line(&o).starts_with("drew "), "{text}");
    assert_png_not_blank(&out.join("degradation.png"));
    for net in ["plain-8", "resnet-8", "plain-14", "resnet-14"] {
        let log = out.join("tensorboard").join(net);
        let files = cnn_train::tensorboard::event_files(&log).unwrap();
        assert_eq!(files.len(), 1, "a TensorBoard log per net in {}", log.display());
    }
    let csv = std::fs::read_to_string(out.join("degradation.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("net,depth,iteration,train_error_smoothed"));
    // 200 images, batch 64: 4 steps per net.
    assert_eq!(csv.lines().count(), 1 + 4 * 4);
    fails_with(&["degradation", "--depths", "9,20"], tmp.path(), "6n + 2");
}

#[test]
fn tune_gives_the_same_report_on_one_thread_or_two() {
    let tmp = tempfile::tempdir().unwrap();
    let report = |threads: usize| {
        let out = tmp.path().join(format!("t{threads}"));
        let o = cnn_on(
            &["tune", "--budget", "small", "-q", "--out", out.to_str().unwrap()],
            tmp.path(),
            threads,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        let md: Vec<String> =
            md.lines().filter(|l| !l.contains("Wall time")).map(String::from).collect();
        (md, std::fs::read(out.join("best.json")).unwrap())
    };
    assert_eq!(report(1), report(2));
}

#[cfg(unix)]
#[test]
fn a_cached_linear_probe_stopped_by_ctrl_c_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let pre = tmp.path().join("pre");
    assert!(cnn(&["train", "--epochs", "2", "--out", pre.to_str().unwrap(), "-q"], tmp.path())
        .status
        .success());
    let weights = pre.join("last/model.safetensors");
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "finetune",
            "--weights",
            weights.to_str().unwrap(),
            "--arch",
            "small",
            "--epochs",
            "300",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (whole, broken) = (tmp.path().join("whole"), tmp.path().join("broken"));
    let whole_args = args(&whole);
    let o = cnn(&whole_args.iter().map(String::as_str).collect::<Vec<_>>(), tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = interrupt_when(&args(&broken), &broken.join("metrics.csv"));
    assert_eq!(o.status.code(), Some(130), "{}{}", stdout(&o), stderr(&o));
    assert!(last_line(&o).starts_with("interrupted at step "), "{}", last_line(&o));
    let r = cnn(&["train", "--resume", broken.to_str().unwrap()], tmp.path());
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("computed the frozen backbone's features once"), "{}", stdout(&r));
    assert_eq!(
        tensors(&broken.join("last/model.safetensors")),
        tensors(&whole.join("last/model.safetensors"))
    );
    assert_eq!(metrics_without_timings(&broken), metrics_without_timings(&whole));
}

#[test]
fn bad_tune_and_finetune_input_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    fails_with(
        &["tune", "--overfit-samples", "0", "--out", "t1"],
        p,
        "overfit_samples must be in 1..=1000, got 0",
    );
    fails_with(
        &["tune", "--lrs", "0.1,-1", "--out", "t2"],
        p,
        "lr_candidates must be positive rates",
    );
    fails_with(&["tune", "--lrs", "fast", "--out", "t3"], p, "invalid value 'fast'");
    fails_with(
        &["finetune", "--weights", "missing.safetensors", "--arch", "small"],
        p,
        "missing.safetensors",
    );
    std::fs::write(p.join("junk.safetensors"), b"not a safetensors file").unwrap();
    fails_with(
        &["finetune", "--weights", "junk.safetensors", "--arch", "small"],
        p,
        "junk.safetensors",
    );
    fails_with(
        &["finetune", "--weights", "junk.safetensors", "--arch", "lenet"],
        p,
        "unknown architecture",
    );
    fails_with(&["init-stats", "--act", "swish"], p, "unknown activation \"swish\"");
}

#[test]
fn convnext_trains_with_timms_recipe_and_transfers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("imgs");
    for (class, base) in [("dark", 40u8), ("light", 200u8)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..8u8 {
            let img = image::RgbImage::from_fn(36, 36, |x, y| {
                let v = base.wrapping_add(((x + y) as u8).wrapping_mul(i + 1) % 30);
                image::Rgb([v, v / 2, 255 - v])
            });
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let spec = format!("folder:{}", data.display());
    let run = tmp.path().join("cx");
    let o = cnn(
        &[
            "train",
            "--data",
            &spec,
            "--arch",
            "convnext_atto",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--optimizer",
            "adamw",
            "--lr",
            "0.004",
            "--weight-decay",
            "0.05",
            "--no-decay-norms",
            "--schedule",
            "warmup-cosine",
            "--out",
            run.to_str().unwrap(),
            "-q",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let trainer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("last/trainer.json")).unwrap()).unwrap();
    assert_eq!(trainer["config"]["optimizer"]["no_decay_norms_biases"], true);
    let weights = run.join("last/model.safetensors");
    let o = cnn(
        &[
            "finetune",
            "--weights",
            weights.to_str().unwrap(),
            "--arch",
            "convnext_atto",
            "--data",
            &spec,
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--out",
            tmp.path().join("ft").to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("skipped head.fc.weight"), "{}", stdout(&o));
    fails_with(
        &["train", "--arch", "convnext_atto", "--epochs", "1"],
        tmp.path(),
        "needs images of at least 32×32",
    );
}
