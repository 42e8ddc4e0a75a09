//! `cnn`: convolutional networks on the CPU, with every forward and backward
//! written by hand and checked against PyTorch.
//!
//! This facade re-exports the workspace's crates under short names and
//! gathers the everyday items in [`prelude`]. Depend on a single crate
//! (`cnn-conv`, `cnn-tensor`, …) instead when that is all you need. The
//! crates' own pages (built by `cargo doc -p cnn --open`, which documents
//! them too) hold the details:
//!
//! | module | crate | what is in it |
//! | --- | --- | --- |
//! | [`tensor`] | `cnn-tensor` | [`Layer`](tensor::Layer), [`Param`](tensor::Param), [`Error`](tensor::Error), GEMM, the linear op, [`cross_entropy`](tensor::cross_entropy), the [`gradcheck`](tensor::gradcheck) |
//! | [`init`] | `cnn-init` | Kaiming, Xavier, PyTorch's default init, the activation probe |
//! | [`conv`] | `cnn-conv` | [`Conv2d`](conv::Conv2d) (im2col, Winograd, depthwise), pooling, their naive twins |
//! | [`norm`] | `cnn-norm` | [`BatchNorm`](norm::BatchNorm), [`GroupNorm`](norm::GroupNorm), [`LayerNorm`](norm::LayerNorm), InstanceNorm: one kernel over chosen axes |
//! | [`act`] | `cnn-act` | ReLU, LeakyReLU, GELU, Sigmoid, Tanh, [`Dropout`](act::Dropout), DropPath |
//! | [`nn`] | `cnn-nn` | [`Sequential`](nn::Sequential), [`Residual`](nn::Residual), [`Linear`](nn::Linear), [`save_state_dict`](nn::save_state_dict) / [`load_state_dict`](nn::load_state_dict), [`summary`](nn::summary) |
//! | [`models`] | `cnn-models` | [`resnet18`](models::resnet18) … ResNet-152, CIFAR ResNets, VGG, AlexNet, ConvNeXt, with torchvision's and timm's keys |
//! | [`optim`] | `cnn-optim` | [`Optimizer`](optim::Optimizer) (SGD, Adam, AdamW), parameter groups, [`Schedule`](optim::Schedule)s |
//! | [`augment`] | `cnn-augment` | torchvision-style transforms (crop, flip, color jitter, normalize, …) |
//! | [`data`] | `cnn-data` | [`Digits`](data::Digits) (embedded), MNIST-style IDX, CIFAR, image folders, the deterministic [`DataLoader`](data::DataLoader) |
//! | [`train`] | `cnn-train` | [`Trainer`](train::Trainer), checkpoints and exact resume, [`evaluate`](train::evaluate), the tuning recipe, transfer learning ([`load_pretrained`](train::load_pretrained)) |
//!
//! # A tour
//!
//! **Build a network**: layers are built from configs with PyTorch's
//! defaults and `with_*` builders, and composed by [`Sequential`](nn::Sequential):
//!
//! ```
//! use cnn::prelude::*;
//!
//! let rng = &mut seeded_rng(0);
//! let mut net = Sequential::<f32>::new()
//!     .push_named("conv", Conv2d::new(Conv2dConfig::new(1, 8, 3).with_padding(1), rng)?)
//!     .push_named("bn", BatchNorm::new_2d(BatchNormConfig::new(8))?)
//!     .push_named("relu", Act::relu())
//!     .push_named("pool", GlobalAvgPool2d::new())
//!     .push_named("flatten", Flatten::new())
//!     .push_named("fc", Linear::new(LinearConfig::new(8, 10), rng)?);
//! assert_eq!(count_params(&net), (8 * 9 + 8 + 2 * 8 + 8 * 10 + 10, 186));
//! # Ok::<(), Error>(())
//! ```
//!
//! **Train it**, by hand (forward, [`cross_entropy`](tensor::cross_entropy),
//! backward, an optimizer step) or with a [`Trainer`](train::Trainer), which
//! adds schedules, checkpoints with exact resume, progress and curves:
//!
//! ```
//! use std::sync::Arc;
//! use cnn::prelude::*;
//! use cnn::tensor::cross_entropy;
//!
//! # let rng = &mut seeded_rng(0);
//! # let mut net = Sequential::<f32>::new()
//! #     .push(Conv2d::new(Conv2dConfig::new(1, 8, 3).with_padding(1), rng)?)
//! #     .push(Act::relu()).push(GlobalAvgPool2d::new()).push(Flatten::new())
//! #     .push(Linear::new(LinearConfig::new(8, 10), rng)?);
//! let (train, _test) = Digits::load()?.split(0.2, 0)?;
//! let loader = DataLoader::new(Arc::new(train), 64, 0)?;
//! let mut opt = Optimizer::new(Rule::sgd(0.9), 0.05, 0.0)?;
//! for batch in loader.epoch(0).take(5) {
//!     let batch = batch?;
//!     opt.zero_grad(&mut net);
//!     let logits = net.forward(batch.images.into_dyn(), Mode::Train)?;
//!     let (loss, dlogits) = cross_entropy(&logits, &batch.labels, 0.0)?;
//!     net.backward(dlogits)?;
//!     opt.step(&mut net)?;
//!     assert!(loss.is_finite());
//! }
//! // The same with a Trainer (what `cnn train` runs):
//! // Trainer::new(TrainConfig::default().with_epochs(15)).fit(&mut net, &loader, None)?;
//! # Ok::<(), Error>(())
//! ```
//!
//! **Save and load it** as a safetensors `state_dict` that PyTorch reads:
//!
//! ```
//! # use cnn::prelude::*;
//! # let rng = &mut seeded_rng(0);
//! # let net = Sequential::<f32>::new().push_named("fc", Linear::new(LinearConfig::new(8, 10), rng)?);
//! # let mut net2 = Sequential::<f32>::new().push_named("fc", Linear::new(LinearConfig::new(8, 10), &mut seeded_rng(1))?);
//! let dir = std::env::temp_dir().join(format!("cnn-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| Error::Io { context: "mkdir".into(), source: e })?;
//! let path = dir.join("net.safetensors");
//! save_state_dict(&net, &path, SaveDtype::F32)?;
//! let report = load_state_dict(&mut net2, &path, cnn::nn::LoadMode::Strict)?; // strict: every key and shape
//! assert!(report.is_exact());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Error>(())
//! ```
//!
//! **Start from torchvision's weights** (a file saved with
//! `safetensors.torch.save_file(model.state_dict(), ...)`): the backbone's
//! keys must all match, the head is replaced for your classes, and
//! [`set_transfer_mode`](train::set_transfer_mode) freezes what a linear
//! probe freezes (BatchNorm included):
//!
//! ```no_run
//! use cnn::prelude::*;
//!
//! let mut net = cnn::models::resnet18::<f32, _>(1000, &mut seeded_rng(0))?;
//! let report = load_pretrained(&mut net, "resnet18.safetensors".as_ref(), 10, &PretrainedOptions::default())?;
//! println!("{report}");
//! set_transfer_mode(&mut net, &TransferMode::LinearProbe, "fc")?;
//! # Ok::<(), Error>(())
//! ```
//!
//! **Check a gradient** of a layer you wrote, as every layer here is checked:
//!
//! ```
//! use cnn::prelude::*;
//!
//! let mut gn = GroupNorm::<f64>::new(GroupNormConfig::new(2, 4))?;
//! let x = cnn::tensor::random::normal(&[2, 4, 3, 3], 0.0, 1.0, &mut seeded_rng(0));
//! let report = check_layer(&mut gn, &x, 1, &GradCheckConfig::default())?;
//! assert!(report.passed(), "{report}"); // also: backward adds, a second forward replaces the cache
//! # Ok::<(), Error>(())
//! ```
//!
//! The command-line tool `cnn` (crate `cnn-cli`) runs the same: `cnn train`,
//! `cnn tune`, `cnn finetune`, `cnn eval`. docs/ in the repository has a page
//! per crate, the design, the benchmarks and the parity record.

pub use cnn_act as act;
pub use cnn_augment as augment;
pub use cnn_conv as conv;
pub use cnn_data as data;
pub use cnn_init as init;
pub use cnn_models as models;
pub use cnn_nn as nn;
pub use cnn_norm as norm;
pub use cnn_optim as optim;
pub use cnn_tensor as tensor;
pub use cnn_train as train;

/// The items a training program uses, for `use cnn::prelude::*` (each links
/// to its crate's page).
pub mod prelude {
    #[doc(no_inline)]
    pub use cnn_act::{Act, Activation, DropPath, Dropout};
    #[doc(no_inline)]
    pub use cnn_augment::{Compose, Normalize, RandomCrop, RandomHorizontalFlip};
    #[doc(no_inline)]
    pub use cnn_conv::{
        AvgPool2d, Conv2d, Conv2dConfig, Conv2dOptions, GlobalAvgPool2d, MaxPool2d, Pool2dOptions,
    };
    #[doc(no_inline)]
    pub use cnn_data::{DataLoader, Dataset, Digits, ImageFolder};
    #[doc(no_inline)]
    pub use cnn_init::{FanMode, Nonlinearity};
    #[doc(no_inline)]
    pub use cnn_models::{cifar_resnet, resnet18, resnet50};
    #[doc(no_inline)]
    pub use cnn_nn::{
        count_params, freeze, load_state_dict, save_state_dict, unfreeze, BasicBlock, Flatten,
        Identity, Linear, LinearConfig, Residual, SaveDtype, Sequential,
    };
    #[doc(no_inline)]
    pub use cnn_norm::{
        BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm2d, InstanceNormConfig,
        LayerNorm, LayerNorm2d, LayerNorm2dConfig, LayerNormConfig,
    };
    #[doc(no_inline)]
    pub use cnn_optim::{Optimizer, ParamGroup, Rule, Schedule};
    #[doc(no_inline)]
    pub use cnn_tensor::gradcheck::{check_layer, FixedSeed, GradCheckConfig};
    #[doc(no_inline)]
    pub use cnn_tensor::random::seeded_rng;
    #[doc(no_inline)]
    pub use cnn_tensor::{cross_entropy, ArrayD, Error, Float, Layer, Mode, Param, Result};
    #[doc(no_inline)]
    pub use cnn_train::{
        evaluate, load_checkpoint, load_pretrained, predict, save_checkpoint, set_transfer_mode,
        PretrainedOptions, ProgressMode, TrainConfig, Trainer, TransferMode, TuneConfig, Tuner,
    };
}
