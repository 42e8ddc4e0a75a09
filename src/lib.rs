//! `cnn`: convolutional networks on the CPU, with every forward and backward
//! written by hand and checked against PyTorch.
//!
//! This facade re-exports the workspace's crates under short names
//! ([`tensor`], [`init`], [`conv`], [`norm`], [`act`], [`nn`], [`models`], [`optim`], [`augment`], [`data`], [`train`]) and gathers the everyday items in
//! [`prelude`]. Depend on a single crate (`cnn-conv`, `cnn-tensor`, …)
//! instead when that is all you need.
//!
//! ```
//! use cnn::prelude::*;
//!
//! let mut rng = seeded_rng(0);
//! let mut conv = Conv2d::<f32>::new(Conv2dConfig::new(1, 8, 3).with_padding(1), &mut rng)?;
//! let mut pool = GlobalAvgPool2d::new();
//! let mut fc = Linear::<f32>::new(LinearConfig::new(8, 10), &mut rng)?;
//!
//! let x = cnn::tensor::random::normal(&[4, 1, 8, 8], 0.0, 1.0, &mut rng);
//! let features = pool.forward(conv.forward(x, Mode::Train)?, Mode::Train)?;
//! let logits = fc.forward(features.into_shape_with_order(vec![4, 8])?, Mode::Train)?;
//! assert_eq!(logits.shape(), &[4, 10]);
//! # Ok::<(), cnn::tensor::Error>(())
//! ```

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

/// The items most programs use, for `use cnn::prelude::*`.
pub mod prelude {
    pub use cnn_act::{Act, Activation, DropPath, Dropout};
    pub use cnn_conv::{
        AvgPool2d, Conv2d, Conv2dConfig, Conv2dOptions, GlobalAvgPool2d, MaxPool2d, Pool2dOptions,
    };
    pub use cnn_data::{DataLoader, Dataset, Digits};
    pub use cnn_init::{FanMode, Nonlinearity};
    pub use cnn_nn::{
        count_params, freeze, load_state_dict, save_state_dict, unfreeze, BasicBlock, Flatten,
        Identity, Linear, LinearConfig, Residual, SaveDtype, Sequential,
    };
    pub use cnn_norm::{
        BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm2d, InstanceNormConfig,
        LayerNorm, LayerNorm2d, LayerNorm2dConfig, LayerNormConfig,
    };
    pub use cnn_optim::{Optimizer, ParamGroup, Rule, Schedule};
    pub use cnn_tensor::gradcheck::{check_layer, FixedSeed, GradCheckConfig};
    pub use cnn_tensor::random::seeded_rng;
    pub use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};
    pub use cnn_train::{
        evaluate, load_pretrained, predict, set_transfer_mode, PretrainedOptions, ProgressMode,
        TrainConfig, Trainer, TransferMode, TuneConfig, Tuner,
    };
}
