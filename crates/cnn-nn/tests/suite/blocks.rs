//! Residual blocks and containers against central differences, and their keys.

#![allow(clippy::unwrap_used)]

use cnn_nn::{BasicBlock, Bottleneck, Flatten, Sequential};
use cnn_nn::{Linear, LinearConfig};
use cnn_tensor::gradcheck::{check_layer, FixedSeed, GradCheckConfig};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{ArrayD, Error, Layer, Mode};

#[test]
fn blocks_pass_the_gradient_checker() {
    let mut rng = seeded_rng(1);
    let cfg = GradCheckConfig { max_entries_per_tensor: 30, ..Default::default() };
    let x = normal(&[2, 4, 6, 6], 0.0, 1.0, &mut rng);
    let mut blocks: Vec<(&str, Box<dyn Layer<f64>>)> = vec![
        ("basic, identity shortcut", Box::new(BasicBlock::new(4, 4, 1, &mut rng).unwrap())),
        ("basic, projection", Box::new(BasicBlock::new(4, 6, 2, &mut rng).unwrap())),
        ("basic, plain", Box::new(BasicBlock::plain(4, 6, 2, &mut rng).unwrap())),
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
    let mut block: cnn_nn::Residual<f32> = Bottleneck::new(8, 4, 2, &mut rng).unwrap();
    let mut keys = Vec::new();
    block.visit_mut("layer2.0", &mut |k, _| keys.push(k.to_string()));
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
    layer.visit_mut("", &mut |k, p| {
        if k.ends_with("gamma") {
            let new_value = normal(p.value().shape(), 0.5, 0.2, &mut rng);
            p.set_value(new_value);
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

    /// A block with `block`'s values, built afresh: nothing cached.
    fn rebuilt(block: &ConvNeXtBlock<f32>, cfg: ConvNeXtBlockConfig) -> ConvNeXtBlock<f32> {
        let mut values = Vec::new();
        block.visit("", &mut |_, p| values.push(p.value().clone()));
        let mut copy = ConvNeXtBlock::new(cfg, 0, &mut seeded_rng(99)).unwrap();
        let mut values = values.into_iter();
        copy.visit_mut("", &mut |_, p| p.set_value(values.next().unwrap()));
        copy
    }

    /// Eval mode runs the block fused (GELU on fc1's output blocks, γ and
    /// the residual on fc2's, no copy of the input), with the same bits as
    /// the layers one by one, on small maps (samples side by side in one
    /// product) and large ones, with and without γ; after a weight changes,
    /// the packed weights kept between eval calls are rebuilt.
    #[test]
    fn fused_eval_equals_the_layers_one_by_one() {
        use cnn_nn::{count_fused, with_fusion};
        for (n, hw, gamma) in [(3, 4, true), (2, 24, true), (2, 5, false)] {
            let cfg = ConvNeXtBlockConfig::new(8).with_ls_init_value(gamma.then_some(0.5));
            let mut block = ConvNeXtBlock::<f32>::new(cfg, 3, &mut seeded_rng(4)).unwrap();
            let x: ArrayD<f32> = normal(&[n, 8, hw, hw], 0.0, 1.0, &mut seeded_rng(5));
            let (fused, count) = count_fused(|| block.forward(x.clone(), Mode::Eval).unwrap());
            assert_eq!(count.mlps, 1, "the fused path ran");
            let unfused = with_fusion(false, || block.forward(x.clone(), Mode::Eval)).unwrap();
            assert_eq!(fused, unfused, "{n}x{hw}x{hw}, gamma {gamma}");
            block.visit_mut("", &mut |k, p| {
                if k == "mlp.fc1.weight" || k == "mlp.fc2.bias" {
                    p.value_mut().iter_mut().step_by(3).for_each(|v| *v += 0.25);
                }
            });
            let changed = block.forward(x.clone(), Mode::Eval).unwrap();
            assert_ne!(changed, fused, "the change shows");
            let fresh = rebuilt(&block, cfg).forward(x.clone(), Mode::Eval).unwrap();
            assert_eq!(changed, fresh, "stale packed weights after a change");
        }
    }
}

/// A `Sequential`'s children by name: get, insert, remove, and `Identity` in
/// place of a removed head.
#[test]
fn sequential_children_by_name() {
    use cnn_nn::Identity;
    let mut rng = seeded_rng(5);
    let mut net = Sequential::<f64>::new()
        .push_named("fc1", Linear::new(LinearConfig::new(4, 3), &mut rng).unwrap())
        .push_named("fc2", Linear::new(LinearConfig::new(3, 2), &mut rng).unwrap());
    assert_eq!(net.get("fc2").unwrap().num_trainable(), 3 * 2 + 2);
    assert!(net.get("fc3").is_none());
    net.get_mut("fc1").unwrap().visit_mut("", &mut |_, p| p.value_mut().fill(0.0));
    net.insert(1, "act", Identity::new()).unwrap();
    assert_eq!(net.names().collect::<Vec<_>>(), ["fc1", "act", "fc2"]);
    let e = net.insert(1, "fc2", Identity::new()).unwrap_err();
    assert!(e.to_string().contains(r#"a child named "fc2" exists"#), "{e}");
    let e = net.insert(9, "x", Identity::new()).unwrap_err();
    assert!(e.to_string().contains("insert at 9 in a container of 3 children"), "{e}");
    let head = net.remove("fc2").unwrap();
    assert_eq!(head.num_trainable(), 8);
    let Err(e) = net.remove("fc2") else { panic!("removed twice") };
    assert!(e.to_string().contains(r#"no child named "fc2"; children: ["fc1", "act"]"#), "{e}");
    let x = normal(&[2, 4], 0.0, 1.0, &mut rng);
    assert_eq!(net.forward(x, Mode::Train).unwrap(), ArrayD::<f64>::zeros(vec![2, 3]));

    // Identity passes values and gradients through, and keeps the Layer contract.
    let mut id = Identity::new();
    let x = normal(&[3, 2], 0.0, 1.0, &mut rng);
    let report = check_layer(&mut id, &x, 1, &GradCheckConfig::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert!(matches!(Layer::<f64>::backward(&mut id, x.clone()), Err(Error::NoForward { .. })));
    Layer::<f64>::forward(&mut id, x.clone(), Mode::Train).unwrap();
    let e = Layer::<f64>::backward(&mut id, ArrayD::zeros(vec![2, 2])).unwrap_err();
    assert!(e.to_string().contains("dy is [2, 2], expected the output shape [3, 2]"), "{e}");
}

/// A residual block built by hand from the combinator: gradients check, the
/// shortcut's keys sit under `downsample`, and zero_init_residual finds the
/// branch's last norm through the structure.
#[test]
fn residual_combinator_by_hand() {
    use cnn_act::Act;
    use cnn_conv::{Conv2d, Conv2dConfig};
    use cnn_nn::{Residual, Shortcut};
    use cnn_norm::{BatchNorm, BatchNormConfig};
    let mut rng = seeded_rng(6);
    let main = Sequential::<f64>::new()
        .push_named(
            "conv",
            Conv2d::new(Conv2dConfig::new(3, 4, 3).with_padding(1), &mut rng).unwrap(),
        )
        .push_named("norm", BatchNorm::new_2d(BatchNormConfig::new(4)).unwrap());
    let proj = Sequential::new().push(Conv2d::new(Conv2dConfig::new(3, 4, 1), &mut rng).unwrap());
    let mut block = Residual::new(main, Shortcut::Projection(proj)).with_post(Act::relu());
    let mut keys = Vec::new();
    block.visit("", &mut |k, _| keys.push(k.to_string()));
    assert_eq!(&keys[..4], ["conv.weight", "conv.bias", "norm.weight", "norm.bias"]);
    assert!(keys.contains(&"downsample.0.weight".to_string()), "{keys:?}");
    let x = normal(&[2, 3, 5, 5], 0.0, 1.0, &mut rng);
    let cfg = GradCheckConfig { max_entries_per_tensor: 20, ..Default::default() };
    let report = check_layer(&mut block, &x, 2, &cfg).unwrap();
    assert!(report.passed(), "{report}");
    assert!(block.zero_init_residual());
    block.visit("", &mut |k, p| {
        if k == "norm.weight" {
            assert!(p.value().iter().all(|&v| v == 0.0));
        }
    });
    let mut plain = Residual::new(Sequential::<f64>::new(), Shortcut::Identity);
    assert!(!plain.zero_init_residual());
    assert_eq!(plain.forward(x.clone(), Mode::Train).unwrap(), &x * 2.0);
}

mod linear {
    use cnn_nn::{Linear, LinearConfig};
    use cnn_tensor::gradcheck::{check_layer, GradCheckConfig};
    use cnn_tensor::random;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(cnn_test_support::proptest_config(64))]

        /// `nn.Linear` over any leading axes, with and without a bias.
        #[test]
        fn linear_layer_gradients(rows in 1..4usize, fin in 1..6usize, fout in 1..5usize, bias: bool, seed in 0u64..1000) {
            let mut rng = random::seeded_rng(seed);
            let mut layer = Linear::<f64>::new(LinearConfig::new(fin, fout).with_bias(bias), &mut rng).unwrap();
            let x = random::normal(&[rows, 2, fin], 0.0, 1.0, &mut rng);
            let report = check_layer(&mut layer, &x, seed, &GradCheckConfig::default()).unwrap();
            prop_assert!(report.passed(), "{report}");
        }

    }
}

/// `PixelLinear`'s weight gradient, summed over blocks of samples in
/// parallel: bitwise the same on 1, 2 and 3 threads, and within rounding
/// of the sum written out sample by sample (f64, 1e-12), bias included.
#[test]
fn pixel_linear_gradients_are_the_sum_on_any_thread_count() {
    // Small maps side by side in one product; a large map a product of its own.
    for (n, h, w) in [(37, 3, 4), (3, 24, 24)] {
        pixel_linear_case(n, h, w);
    }
}

fn pixel_linear_case(n: usize, h: usize, w: usize) {
    use cnn_nn::PixelLinear;
    let mut rng = seeded_rng(4);
    let (i, o) = (5, 7);
    let x: ArrayD<f64> = normal(&[n, i, h, w], 0.0, 1.0, &mut rng);
    let dy: ArrayD<f64> = normal(&[n, o, h, w], 0.0, 1.0, &mut rng);
    let weight: ArrayD<f64> = normal(&[o, i], 0.0, 1.0, &mut rng);
    let grads = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut layer = PixelLinear::new(weight.clone()).unwrap();
            layer.bias.set_value(normal(&[o], 0.0, 1.0, &mut seeded_rng(5)));
            let y = layer.forward(x.clone(), Mode::Train).unwrap();
            let dx = layer.backward(dy.clone()).unwrap();
            (y, dx, layer.weight.grad.clone(), layer.bias.grad.clone())
        })
    };
    let one = grads(1);
    for threads in [2, 3] {
        assert_eq!(grads(threads), one, "{threads} threads");
    }
    let (y, _, dw, db) = one;
    for oc in 0..o {
        for ic in 0..i {
            let mut want = 0.0;
            for s in 0..n {
                for p in 0..h * w {
                    want += dy[[s, oc, p / w, p % w]] * x[[s, ic, p / w, p % w]];
                }
            }
            let err = (dw[[oc, ic]] - want).abs();
            assert!(err <= 1e-12 * want.abs().max(1.0), "{n}x{h}x{w} dW[{oc}, {ic}]");
        }
        let want_db: f64 = dy.index_axis(ndarray::Axis(1), oc).sum();
        assert!((db[[oc]] - want_db).abs() <= 1e-12 * want_db.abs().max(1.0));
        let b = normal::<f64, _>(&[o], 0.0, 1.0, &mut seeded_rng(5))[[oc]];
        let want_y: f64 = (0..i).map(|ic| weight[[oc, ic]] * x[[0, ic, 1, 2]]).sum::<f64>() + b;
        assert!((y[[0, oc, 1, 2]] - want_y).abs() <= 1e-12 * want_y.abs().max(1.0));
    }
}
