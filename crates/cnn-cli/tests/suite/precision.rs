//! `--precision bf16` end to end: recorded in the run, kept on resume (and
//! refused beside `--resume`), the same numbers on the portable path as on
//! the machine's best SIMD level, eval in the run's precision, and
//! `cnn compare` drawing an f32 and a bf16 run side by side.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::{
    assert_png_not_blank, cnn, fails_with, last_line, metrics_without_timings, stdout, tensors,
};

fn train(args: &[&str], out: &Path, cwd: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut all = vec!["train", "--epochs", "1", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cnn"));
    cmd.args(&all).args(["--threads", "2"]).current_dir(cwd).stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{all:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn bf16_runs_are_recorded_kept_and_the_same_on_every_level() {
    let tmp = cnn_test_support::temp_dir("precision");
    let cwd = tmp.path();
    let (f32_run, bf16_run, portable) = (cwd.join("f32"), cwd.join("bf16"), cwd.join("portable"));
    train(&[], &f32_run, cwd, &[]);
    let o = train(&["--precision", "bf16"], &bf16_run, cwd, &[]);
    assert!(
        stdout(&o).lines().next().unwrap().contains("in bf16 mixed precision"),
        "{}",
        stdout(&o)
    );
    let trainer = std::fs::read_to_string(bf16_run.join("last/trainer.json")).unwrap();
    assert!(trainer.contains("\"precision\": \"bf16\""), "recorded in trainer.json");
    let model = |run: &Path| tensors(&run.join("last/model.safetensors"));
    assert_ne!(model(&f32_run), model(&bf16_run), "bf16 changes the numbers");

    // Capped at AVX2 (no AVX512-BF16), the same bits: the bf16 products
    // through the f32 kernels, the f32 Winograd layer in the same kernels at
    // AVX2 and AVX-512. (Here, without AVX-512, AVX2 is the best level.)
    let avx2 = cwd.join("avx2");
    train(&["--precision", "bf16"], &avx2, cwd, &[("CNN_SIMD", "avx2")]);
    assert_eq!(model(&avx2), model(&bf16_run));
    // The portable level (no SIMD at all) computes the same bf16 bits too;
    // with every conv in im2col, since the digits net's 32-channel 3x3 layer
    // runs Winograd in f32, whose sums group otherwise in matrixmultiply.
    let im2col = [("CNN_CONV_ALGORITHM", "im2col")];
    let best = cwd.join("bf16_im2col");
    train(&["--precision", "bf16"], &best, cwd, &im2col);
    train(&["--precision", "bf16"], &portable, cwd, &[im2col[0], ("CNN_SIMD", "portable")]);
    assert_eq!(model(&portable), model(&best));
    assert_eq!(metrics_without_timings(&portable), metrics_without_timings(&best));

    // --precision beside --resume is refused: the run keeps its own.
    let run = bf16_run.to_str().unwrap();
    fails_with(&["train", "--resume", run, "--precision", "f32"], cwd, "cannot be used with");

    // eval uses the run's precision by default and says so; f32 on request.
    let e = cnn(&["eval", "--run", run], cwd);
    assert!(e.status.success());
    assert!(stdout(&e).contains("products in bf16"), "{}", stdout(&e));
    let e32 = cnn(&["eval", "--run", run, "--precision", "f32"], cwd);
    assert!(stdout(&e32).contains("products in f32"), "{}", stdout(&e32));
    fails_with(&["eval", "--run", run, "--precision", "fp16"], cwd, "not a precision");

    let png = cwd.join("cmp.png");
    let c = cnn(&["compare", f32_run.to_str().unwrap(), run, "--out", png.to_str().unwrap()], cwd);
    assert!(c.status.success());
    let text = stdout(&c);
    assert!(
        text.contains("f32 (f32): 1 epoch,") && text.contains("bf16 (bf16): 1 epoch,"),
        "{text}"
    );
    assert_eq!(last_line(&c), format!("drew 2 runs in {}", png.display()));
    assert_png_not_blank(&png);
    fails_with(&["compare", cwd.to_str().unwrap()], cwd, "no checkpoint");
}
