//! Residual blocks and containers against central differences, and their keys.

#![allow(clippy::unwrap_used)]

use cnn_nn::{BasicBlock, Bottleneck, Flatten, Sequential};
use cnn_tensor::gradcheck::{check_layer, FixedSeed, GradCheckConfig};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{Error, Layer, Linear, LinearConfig, Mode};

#[test]
fn blocks_pass_the_gradient_checker() {
    let mut rng = seeded_rng(1);
    let cfg = GradCheckConfig { max_entries_per_tensor: 30, ..Default::default() };
    let x = normal(&[2, 4, 6, 6], 0.0, 1.0, &mut rng);
    let mut blocks: Vec<(&str, Box<dyn Layer<f64>>)> = vec![
        ("basic, identity shortcut", Box::new(BasicBlock::new(4, 4, 1, true, &mut rng).unwrap())),
        ("basic, projection", Box::new(BasicBlock::new(4, 6, 2, true, &mut rng).unwrap())),
        ("basic, plain", Box::new(BasicBlock::new(4, 6, 2, false, &mut rng).unwrap())),
        ("bottleneck, projection", Box::new(Bottleneck::new(4, 2, 2, &mut rng).unwrap())),
        ("bottleneck, identity", Box::new(Bottleneck::new(8, 2, 1, &mut rng).unwrap())),
    ];
    for (name, block) in &mut blocks {
        let input = if name.ends_with("identity") && name.starts_with("bottleneck") {
            normal(&[2, 8, 6, 6], 0.0, 1.0, &mut seeded_rng(2))
        } else {
            x.clone()
        };
        let report = check_layer(block.as_mut(), &input, 3, &cfg).unwrap();
        assert!(report.passed(), "{name}: {report}");
    }
}

#[test]
fn keys_and_replacement() {
    let mut rng = seeded_rng(4);
    let mut block = Bottleneck::<f32>::new(8, 4, 2, &mut rng).unwrap();
    let mut keys = Vec::new();
    block.visit("layer2.0", &mut |k, _| keys.push(k.to_string()));
    assert_eq!(keys[0], "layer2.0.conv1.weight");
    assert!(keys.contains(&"layer2.0.bn3.running_var".to_string()));
    assert_eq!(keys.last().unwrap(), "layer2.0.downsample.1.num_batches_tracked");

    let mut net = Sequential::<f32>::new()
        .push(Flatten::new())
        .push_named("fc", Linear::new(LinearConfig::new(12, 5), &mut rng).unwrap());
    net.replace("fc", Linear::new(LinearConfig::new(12, 3), &mut rng).unwrap()).unwrap();
    let y = net.forward(normal(&[2, 3, 2, 2], 0.0, 1.0, &mut rng), Mode::Train).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    let e = net.replace("head", Flatten::new()).err().unwrap();
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains(r#"no child named "head""#),
        "{e}"
    );
}

/// γ of every block set to random values near 0.5 so the branch counts.
fn randomize_gamma(layer: &mut dyn Layer<f64>, seed: u64) {
    let mut rng = seeded_rng(seed);
    layer.visit("", &mut |k, p| {
        if k.ends_with("gamma") {
            p.value = normal(p.value.shape(), 0.5, 0.2, &mut rng);
        }
    });
}

mod convnext {
    use super::*;
    use cnn_nn::{ConvNeXtBlock, ConvNeXtBlockConfig};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(cnn_test_support::proptest_config(12))]

        #[test]
        fn block_gradients(c in 2..5usize, h in 2..6usize, w in 2..6usize, conv_mlp: bool, drop in prop::sample::select(vec![0.0, 0.5]), seed in 0u64..1000) {
            let cfg = ConvNeXtBlockConfig::new(c).with_conv_mlp(conv_mlp).with_drop_path(drop);
            let mut block = FixedSeed(ConvNeXtBlock::<f64>::new(cfg, seed, &mut seeded_rng(seed)).unwrap(), seed);
            randomize_gamma(&mut block, seed);
            let x = normal(&[3, c, h, w], 0.0, 1.0, &mut seeded_rng(seed + 1));
            let gc = GradCheckConfig { max_entries_per_tensor: 20, ..Default::default() };
            let report = check_layer(&mut block, &x, seed, &gc).unwrap();
            prop_assert!(report.passed(), "{report}");
        }
    }
}
