//! Optimizers and learning-rate schedules with PyTorch's exact rules.
//!
//! [`Optimizer`] applies a [`Rule`] (SGD with momentum, dampening, Nesterov
//! and weight decay; Adam; AdamW) to every trainable parameter of a
//! [`cnn_tensor::Layer`], found by its `state_dict` key; [`ParamGroup`]s give
//! parameters their own lr and weight decay; frozen parameters and buffers
//! are never touched. [`Schedule`] gives the lr of each iteration.
//!
//! ```
//! use cnn_optim::{Optimizer, ParamGroup, Rule, Schedule};
//! use cnn_tensor::{random, Layer, Mode};
//! use cnn_nn::{Linear, LinearConfig};
//!
//! let mut rng = random::seeded_rng(0);
//! let mut fc = Linear::<f32>::new(LinearConfig::new(4, 2), &mut rng)?;
//! let mut opt = Optimizer::new(Rule::sgd(0.9), 0.1, 5e-4)?
//!     .with_group(ParamGroup::norms_and_biases(0.1))?; // no decay on the bias
//! let schedule = Schedule::WarmupCosine { warmup_steps: 5, start_factor: 0.1, total_steps: 100, min_lr: 0.0 };
//! for step in 0..3 {
//!     opt.schedule(&schedule, step);
//!     let y = fc.forward(random::normal(&[8, 4], 0.0, 1.0, &mut rng), Mode::Train)?;
//!     fc.backward(y)?; // the gradient of ½‖y‖²
//!     opt.step(&mut fc)?;
//!     opt.zero_grad(&mut fc);
//! }
//! # Ok::<(), cnn_tensor::Error>(())
//! ```

mod group;
mod optimizer;
mod schedule;
mod state_file;

pub use group::ParamGroup;
pub use optimizer::{Optimizer, ParamState, Rule};
pub use schedule::Schedule;
