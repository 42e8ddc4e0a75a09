//! safetensors state dicts: round trip, and clear errors for files that do not fit.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use cnn_models::{cifar_resnet, CifarResNetConfig, Shortcuts};
use cnn_nn::{load_state_dict, save_state_dict, SaveDtype};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{Error, Layer, Mode};

/// A test's own temporary directory, removed with its files when the test ends.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        Scratch(cnn_test_support::temp_dir("state-dict"))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

#[test]
fn save_then_load_gives_identical_outputs() {
    let scratch = Scratch::new();
    for (dtype, name) in [(SaveDtype::F32, "f32.safetensors"), (SaveDtype::F64, "f64.safetensors")]
    {
        let path = scratch.path(name);
        let mut a = cifar_resnet::<f64, _>(
            &CifarResNetConfig::new(8).with_widths([4, 4, 8]),
            &mut seeded_rng(1),
        )
        .unwrap();
        // Train-mode steps move the running statistics away from their init.
        a.forward(normal(&[4, 3, 8, 8], 1.0, 2.0, &mut seeded_rng(2)), Mode::Train).unwrap();
        save_state_dict(&a, &path, dtype).unwrap();
        let mut b = cifar_resnet::<f64, _>(
            &CifarResNetConfig::new(8).with_widths([4, 4, 8]),
            &mut seeded_rng(99),
        )
        .unwrap();
        let report = load_state_dict(&mut b, &path, cnn_nn::LoadMode::Strict).unwrap();
        assert!(report.is_exact(), "{report}");
        let x = normal(&[2, 3, 8, 8], 0.0, 1.0, &mut seeded_rng(3));
        let (ya, yb) =
            (a.forward(x.clone(), Mode::Eval).unwrap(), b.forward(x, Mode::Eval).unwrap());
        if dtype == SaveDtype::F64 {
            assert_eq!(ya, yb);
        } else {
            let err = ya.iter().zip(&yb).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
            assert!(err < 1e-5, "f32 round trip differs by {err}");
        }
    }
}

#[test]
fn files_that_do_not_fit_are_clear_errors() {
    let scratch = Scratch::new();
    let path = scratch.path("resnet8.safetensors");
    let mut small = cifar_resnet::<f32, _>(
        &CifarResNetConfig::new(8).with_widths([4, 4, 8]),
        &mut seeded_rng(1),
    )
    .unwrap();
    save_state_dict(&small, &path, SaveDtype::F32).unwrap();

    // Deeper model: keys missing from the file.
    let mut deeper = cifar_resnet::<f32, _>(
        &CifarResNetConfig::new(14).with_widths([4, 4, 8]),
        &mut seeded_rng(1),
    )
    .unwrap();
    let e = load_state_dict(&mut deeper, &path, cnn_nn::LoadMode::Strict).unwrap_err().to_string();
    assert!(e.contains("missing keys: layer1.1.conv1.weight"), "{e}");
    let report = load_state_dict(&mut deeper, &path, cnn_nn::LoadMode::Lenient).unwrap();
    assert!(!report.missing.is_empty() && report.unexpected.is_empty() && report.loaded > 0);

    // Shallower model: unexpected keys in the file.
    let mut plain = cifar_resnet::<f32, _>(
        &CifarResNetConfig::new(8).with_widths([4, 4, 8]).with_shortcuts(Shortcuts::Plain),
        &mut seeded_rng(1),
    )
    .unwrap();
    let e = load_state_dict(&mut plain, &path, cnn_nn::LoadMode::Strict).unwrap_err().to_string();
    assert!(e.contains("unexpected keys: layer2.0.downsample.0.weight"), "{e}");

    // Another head: shape mismatches, by key.
    let mut other = cifar_resnet::<f32, _>(
        &CifarResNetConfig::new(8).with_widths([4, 4, 8]).with_num_classes(7),
        &mut seeded_rng(1),
    )
    .unwrap();
    let e = load_state_dict(&mut other, &path, cnn_nn::LoadMode::Strict).unwrap_err().to_string();
    assert!(e.contains("fc.weight: model [7, 8], file [10, 8]"), "{e}");

    // Truncated bytes and garbage: an error, never a panic.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let bad = scratch.path("truncated.safetensors");
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        assert!(
            matches!(
                load_state_dict(&mut small, &bad, cnn_nn::LoadMode::Strict),
                Err(Error::Format { .. })
            ),
            "cut at {cut}"
        );
    }
    assert!(matches!(
        load_state_dict(&mut small, &scratch.path("absent.safetensors"), cnn_nn::LoadMode::Strict),
        Err(Error::Io { .. })
    ));
}

#[test]
fn an_unsupported_dtype_is_refused() {
    let scratch = Scratch::new();
    let data: Vec<u8> = vec![0; 16 * 3 * 3 * 3 * 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![16, 3, 3, 3], &data)
            .unwrap();
    let bytes = safetensors::serialize(vec![("conv1.weight", view)], None).unwrap();
    let path = scratch.path("i32.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let mut net = cifar_resnet::<f32, _>(&CifarResNetConfig::new(20), &mut seeded_rng(1)).unwrap();
    let e = load_state_dict(&mut net, &path, cnn_nn::LoadMode::Lenient).unwrap_err().to_string();
    assert!(e.contains("conv1.weight: dtype I32 is not supported"), "{e}");
}

#[test]
fn absent_batch_counters_are_kept_as_pytorch_does() {
    let scratch = Scratch::new();
    // timm's and many published checkpoints leave out num_batches_tracked.
    let path = scratch.path("no_counters.safetensors");
    let mut source = cnn_models::cifar_resnet::<f32, _>(
        &cnn_models::CifarResNetConfig::new(8),
        &mut seeded_rng(0),
    )
    .unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    source.visit_mut("", &mut |k, p| {
        if !k.ends_with("num_batches_tracked") {
            let bytes = p.value().iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((k.to_string(), p.value().shape().to_vec(), bytes));
        }
    });
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut model = cnn_models::cifar_resnet::<f32, _>(
        &cnn_models::CifarResNetConfig::new(8),
        &mut seeded_rng(1),
    )
    .unwrap();
    let report = load_state_dict(&mut model, &path, cnn_nn::LoadMode::Strict).unwrap();
    // One counter per BatchNorm: the stem, two per block (three blocks), two projections.
    assert_eq!(report.defaulted.len(), 9, "{report}");
    assert!(
        report.to_string().ends_with("; 9 num_batches_tracked counters absent, kept"),
        "{report}"
    );
    assert!(report.missing.is_empty());
}

#[test]
fn half_precision_files_load_converted() {
    let scratch = Scratch::new();
    // f16 bits of 1, −2, 0.5, 1/3 (nearest), 2⁻¹⁴ (smallest normal), 2⁻²⁴ (smallest subnormal).
    let bits: [u16; 6] = [0x3c00, 0xc000, 0x3800, 0x3555, 0x0400, 0x0001];
    let want: [f32; 6] = [1.0, -2.0, 0.5, 0.333_251_95, 6.103_515_6e-5, 5.960_464_5e-8];
    let weight: Vec<u8> = (0..12).flat_map(|i| bits[i % 6].to_le_bytes()).collect();
    let bias: Vec<u8> = (0..3).flat_map(|i| bits[5 - i].to_le_bytes()).collect();
    let views = vec![
        (
            "0.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![3, 4], &weight)
                .unwrap(),
        ),
        (
            "0.bias".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![3], &bias).unwrap(),
        ),
    ];
    let path = scratch.path("f16.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut net = cnn_nn::Sequential::<f32>::new()
        .push(cnn_nn::Linear::new(cnn_nn::LinearConfig::new(4, 3), &mut seeded_rng(0)).unwrap());
    let report = load_state_dict(&mut net, &path, cnn_nn::LoadMode::Strict).unwrap();
    assert_eq!(report.loaded, 2);
    net.visit_mut("", &mut |k, p| {
        let got: Vec<f32> = p.value().iter().copied().collect();
        let expect: Vec<f32> = if k == "0.weight" {
            (0..12).map(|i| want[i % 6]).collect()
        } else {
            (0..3).map(|i| want[5 - i]).collect()
        };
        assert_eq!(got, expect, "{k}");
    });
    let dict = cnn_nn::StateDict::read(&path).unwrap();
    assert_eq!(dict.converted_dtypes(), [("F16".to_string(), 2)]);
}

#[test]
fn a_wrapper_prefix_on_every_key_is_named_in_one_line() {
    let scratch = Scratch::new();
    let path = scratch.path("dataparallel.safetensors");
    let mut source = cnn_models::cifar_resnet::<f32, _>(
        &cnn_models::CifarResNetConfig::new(8),
        &mut seeded_rng(0),
    )
    .unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    source.visit_mut("", &mut |k, p| {
        let (dtype, bytes) = if k.ends_with("num_batches_tracked") {
            (
                safetensors::Dtype::I64,
                p.value().iter().flat_map(|&v| (v as i64).to_le_bytes()).collect(),
            )
        } else {
            (safetensors::Dtype::F32, p.value().iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        tensors.push((format!("module.{k}"), dtype, p.value().shape().to_vec(), bytes));
    });
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (k.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut model = cnn_models::cifar_resnet::<f32, _>(
        &cnn_models::CifarResNetConfig::new(8),
        &mut seeded_rng(1),
    )
    .unwrap();
    let e = load_state_dict(&mut model, &path, cnn_nn::LoadMode::Strict).unwrap_err().to_string();
    assert!(e.ends_with("every key starts with \"module.\" (a wrapper such as DataParallel's); strip it: StateDict::strip_prefix, or cnn finetune --strip-prefix module."), "{e}");
    assert!(e.len() < 300, "one short line: {e}");
}
