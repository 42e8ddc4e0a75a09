//! Fused inference (conv + BatchNorm + ReLU as one convolution in eval mode)
//! against the layers run one by one, on every model of this crate.
#![allow(clippy::unwrap_used)]

use cnn_models::{
    alexnet, cifar_resnet, convnext, resnet18, resnet50, small_cnn, vgg, CifarResNetConfig,
    ConvNeXtConfig, VggConfig,
};
use cnn_nn::{count_fused, fusable, with_fusion, FusionCount, Sequential};
use cnn_tensor::random::{normal, seeded_rng};
use cnn_tensor::{ArrayD, Error, Layer, Mode};

/// Max |a − b| over max |b|.
fn rel(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Every norm given a non-trivial γ, β and running statistics: two train
/// forwards (batch statistics feed the running ones), then random affines.
fn settle(net: &mut Sequential<f32>, x: &ArrayD<f32>) {
    for _ in 0..2 {
        net.forward(x.clone(), Mode::Train).unwrap();
    }
    let mut rng = seeded_rng(7);
    net.visit_mut("", &mut |k, p| {
        let norm = k.contains("bn") || k.contains("downsample.1") || k.starts_with("features.");
        if norm && p.value().ndim() == 1 && (k.ends_with("weight") || k.ends_with("bias")) {
            let noise: ArrayD<f32> = normal(p.value().shape(), 0.0, 0.3, &mut rng);
            let new_value = p.value() + &noise;
            p.set_value(new_value);
        }
    });
}

fn models() -> Vec<(&'static str, Sequential<f32>, Vec<usize>)> {
    let mut rng = seeded_rng(0);
    vec![
        ("small_cnn", small_cnn(1, [28, 28], 10, &mut rng).unwrap(), vec![3, 1, 28, 28]),
        (
            "cifar_resnet20",
            cifar_resnet(&CifarResNetConfig::new(20), &mut rng).unwrap(),
            vec![2, 3, 32, 32],
        ),
        ("resnet18", resnet18(10, &mut rng).unwrap(), vec![2, 3, 64, 64]),
        ("resnet50", resnet50(10, &mut rng).unwrap(), vec![1, 3, 64, 64]),
        (
            "vgg11",
            vgg(&VggConfig::new(11).with_num_classes(10), &mut rng).unwrap(),
            vec![1, 3, 32, 32],
        ),
        (
            "vgg11_bn",
            vgg(&VggConfig::new(11).with_batch_norm(true).with_num_classes(10), &mut rng).unwrap(),
            vec![2, 3, 32, 32],
        ),
        ("alexnet", alexnet(10, &mut rng).unwrap(), vec![1, 3, 64, 64]),
        (
            "convnext_atto",
            convnext(&ConvNeXtConfig::named("atto").unwrap().with_num_classes(10), &mut rng)
                .unwrap(),
            vec![2, 3, 32, 32],
        ),
    ]
}

/// `(convs, folded norms, ReLU epilogues, fused ConvNeXt MLPs)` of one eval
/// forward, counted by hand from each architecture (torchvision's and timm's
/// layer lists).
fn expected_fusion(name: &str) -> (usize, usize, usize, usize) {
    match name {
        // Three stages of two conv-bn-relu blocks (28×28 input).
        "small_cnn" => (6, 6, 6, 0),
        // stem + 9 blocks × 2 convs + 2 projections; ReLU after the stem and
        // each block's first conv (the second's ReLU follows the sum).
        "cifar_resnet20" => (21, 21, 10, 0),
        // stem + 8 blocks × 2 + 3 projections.
        "resnet18" => (20, 20, 9, 0),
        // stem + 16 blocks × 3 + 4 projections; ReLU after conv1 and conv2 of each.
        "resnet50" => (53, 53, 33, 0),
        // 8 convs, each followed by a ReLU; no norm.
        "vgg11" => (8, 0, 8, 0),
        "vgg11_bn" => (8, 8, 8, 0),
        "alexnet" => (5, 0, 5, 0),
        // The stem and three downsampling convs; the blocks' depthwise convs
        // are followed by a LayerNorm, which does not fold. 2 + 2 + 6 + 2
        // blocks, each with its MLP fused.
        "convnext_atto" => (4, 0, 0, 12),
        _ => panic!("no expected fusion count for {name}"),
    }
}

#[test]
fn fused_inference_equals_the_layers_one_by_one_on_every_model() {
    for (name, mut net, shape) in models() {
        let x: ArrayD<f32> = normal(&shape, 0.0, 1.0, &mut seeded_rng(3));
        settle(&mut net, &x);
        let (unfused, none) =
            count_fused(|| with_fusion(false, || net.forward(x.clone(), Mode::Eval)));
        let (fused, count) = count_fused(|| net.forward(x.clone(), Mode::Eval));
        let (unfused, fused) = (unfused.unwrap(), fused.unwrap());
        let err = rel(&fused, &unfused);
        assert!(err <= 1e-4, "{name}: fused differs from unfused by {err:e}");
        // Fusion engaged, on every conv the structure offers: a fused path
        // that fell back to the layers one by one would pass the comparison.
        assert_eq!(none, FusionCount::default(), "{name}: with_fusion(false) fused");
        assert_eq!(count, fusable(&mut net), "{name}: fused runs against the structure's");
        let want = expected_fusion(name);
        assert_eq!((count.convs, count.norms, count.relus, count.mlps), want, "{name}: fused runs");
        if want.1 == 0 {
            // Nothing folded: the same operations on the same values.
            assert_eq!(fused, unfused, "{name}: fused without folds differs");
        }
        // Again: the folded weights come from the cache now.
        let again = net.forward(x.clone(), Mode::Eval).unwrap();
        assert_eq!(again, fused, "{name}: a second fused call");
    }
}

/// Changing a conv weight or a norm's running statistics after an eval call
/// is seen by the next one (the folded weights are recomputed), and backward
/// after an eval forward is an error whether or not it was fused.
#[test]
fn changed_weights_invalidate_the_folded_ones() {
    let mut rng = seeded_rng(1);
    let mut net: Sequential<f32> = cifar_resnet(&CifarResNetConfig::new(8), &mut rng).unwrap();
    let x: ArrayD<f32> = normal(&[2, 3, 16, 16], 0.0, 1.0, &mut seeded_rng(4));
    settle(&mut net, &x);
    let before = net.forward(x.clone(), Mode::Eval).unwrap();
    for key in ["layer1.0.conv1.weight", "layer1.0.bn2.running_mean", "bn1.weight", "conv1.weight"]
    {
        net.visit_mut("", &mut |k, p| {
            if k == key {
                p.value_mut().iter_mut().step_by(3).for_each(|v| *v += 0.5);
            }
        });
        let fused = net.forward(x.clone(), Mode::Eval).unwrap();
        let unfused = with_fusion(false, || net.forward(x.clone(), Mode::Eval)).unwrap();
        assert!(rel(&fused, &unfused) <= 1e-4, "after changing {key}");
        assert!(rel(&fused, &before) > 1e-4, "changing {key} changed nothing");
    }
    // Train forward, then eval (fused): backward has nothing to go back through.
    net.forward(x.clone(), Mode::Train).unwrap();
    let y = net.forward(x.clone(), Mode::Eval).unwrap();
    let err = net.backward(ArrayD::ones(y.raw_dim())).unwrap_err();
    assert!(matches!(err, Error::NoForward { .. }), "{err}");
}

/// The read-only visitor and the mutable one give the same keys, in the same
/// order, with the same values, on every model; buffers carry no gradient.
#[test]
fn read_only_and_mutable_visitors_agree_on_every_model() {
    for (name, mut net, _) in models() {
        let mut read: Vec<(String, Vec<usize>, bool)> = Vec::new();
        net.visit("", &mut |k, p| read.push((k.to_string(), p.value().shape().to_vec(), p.buffer)));
        let mut written: Vec<(String, Vec<usize>, bool)> = Vec::new();
        net.visit_mut("", &mut |k, p| {
            written.push((k.to_string(), p.value().shape().to_vec(), p.buffer));
        });
        assert!(!read.is_empty(), "{name}");
        assert_eq!(read, written, "{name}");
        net.visit("", &mut |k, p| {
            let expected: &[usize] = if p.buffer { &[0] } else { p.value().shape() };
            assert_eq!(p.grad.shape(), expected, "{name} {k}");
        });
    }
}

/// The same architecture with `net`'s values, built afresh: no weights
/// prepared for eval yet.
fn rebuilt(net: &Sequential<f32>, cfg: &CifarResNetConfig) -> Sequential<f32> {
    let mut values = Vec::new();
    net.visit("", &mut |_, p| values.push(p.value().clone()));
    let mut copy = cifar_resnet(cfg, &mut seeded_rng(99)).unwrap();
    let mut values = values.into_iter();
    copy.visit_mut("", &mut |_, p| p.set_value(values.next().unwrap()));
    copy
}

/// The weights a layer prepares for eval (packed, Winograd-transformed,
/// folded with the next norm) are rebuilt after every way a weight can
/// change: an optimizer step, `load_state_dict`, `visit_mut`. Each time the
/// net's eval outputs, fused and not, equal bit for bit those of a net built
/// afresh with the same values, which has nothing cached: a cache that missed
/// a change would give the old weights' outputs. (A write through a layer's
/// field is tested on `Conv2d` itself, in cnn-conv's tests.)
#[test]
fn cached_eval_weights_follow_every_way_a_weight_can_change() {
    let cfg = CifarResNetConfig::new(8);
    let mut net: Sequential<f32> = cifar_resnet(&cfg, &mut seeded_rng(2)).unwrap();
    let x: ArrayD<f32> = normal(&[2, 3, 16, 16], 0.0, 1.0, &mut seeded_rng(5));
    settle(&mut net, &x);
    let eval = |net: &mut Sequential<f32>| {
        let fused = net.forward(x.clone(), Mode::Eval).unwrap();
        (fused, with_fusion(false, || net.forward(x.clone(), Mode::Eval)).unwrap())
    };
    let mut before = eval(&mut net);
    let mut check = |net: &mut Sequential<f32>, what: &str| {
        let now = eval(net);
        assert_eq!(now, eval(&mut rebuilt(net, &cfg)), "{what}: eval used stale weights");
        assert_ne!(now.0, before.0, "{what} changed nothing");
        before = now;
    };

    // An optimizer step (after a train forward, which also moves the running statistics).
    let mut opt = cnn_optim::Optimizer::new(cnn_optim::Rule::sgd(0.9), 0.05, 0.0).unwrap();
    opt.zero_grad(&mut net);
    let logits = net.forward(x.clone(), Mode::Train).unwrap();
    let (_, dlogits) = cnn_tensor::cross_entropy(&logits, &[1, 7], 0.0).unwrap();
    net.backward(dlogits).unwrap();
    opt.step(&mut net).unwrap();
    check(&mut net, "an optimizer step");
    // The step alone this time (the same gradients again): the running
    // statistics, which the folds compare by value, stay as they were.
    opt.step(&mut net).unwrap();
    check(&mut net, "a step with no forward");

    // load_state_dict from another net of the same architecture.
    let scratch = cnn_test_support::temp_dir("fusion-load");
    let path = scratch.path().join("other.safetensors");
    let mut other = cifar_resnet(&cfg, &mut seeded_rng(3)).unwrap();
    settle(&mut other, &x);
    cnn_nn::save_state_dict(&other, &path, cnn_nn::SaveDtype::F32).unwrap();
    cnn_nn::load_state_dict(&mut net, &path, cnn_nn::LoadMode::Strict).unwrap();
    check(&mut net, "load_state_dict");

    // visit_mut, on one conv weight only.
    net.visit_mut("", &mut |k, p| {
        if k == "layer2.0.conv2.weight" {
            p.value_mut().iter_mut().step_by(5).for_each(|v| *v *= -1.0);
        }
    });
    check(&mut net, "visit_mut");
}

/// Training runs each 2-D BatchNorm and the ReLU after it as one pass over
/// the output (the ReLU's signs written by the norm's kernel), and their
/// backwards as one (the signs applied inside the norm's two passes): the
/// logits, dx, every gradient and the running statistics equal, bit for bit,
/// the layers run one by one; the fused pairs are the stem's and each
/// block's first (the second ReLU follows the residual sum), both ways.
#[test]
fn fused_training_equals_the_layers_one_by_one() {
    let cfg = CifarResNetConfig::new(8);
    let x: ArrayD<f32> = normal(&[4, 3, 16, 16], 0.0, 1.0, &mut seeded_rng(8));
    let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let step = |fuse: bool| {
        let mut net: Sequential<f32> = cifar_resnet(&cfg, &mut seeded_rng(6)).unwrap();
        let (out, count) = count_fused(|| {
            with_fusion(fuse, || {
                let logits = net.forward(x.clone(), Mode::Train).unwrap();
                let (_, d) = cnn_tensor::cross_entropy(&logits, &[0, 1, 2, 3], 0.0).unwrap();
                let dx = net.backward(d).unwrap();
                (bits(&logits), bits(&dx))
            })
        });
        let mut state = Vec::new();
        net.visit("", &mut |k, p| state.push((k.to_string(), bits(p.value()), bits(&p.grad))));
        (out, state, (count.norm_relus, count.norm_relu_backwards))
    };
    let (fused, fused_state, pairs) = step(true);
    let (plain, plain_state, none) = step(false);
    assert_eq!((pairs, none), ((1 + 3, 1 + 3), (0, 0)), "the stem's pair and 3 blocks' first");
    assert_eq!(fused, plain, "logits and dx");
    assert_eq!(fused_state, plain_state, "weights, gradients and running statistics");
}
