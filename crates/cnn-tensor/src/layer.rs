//! The `Layer` trait every layer implements, and the train/eval `Mode`.

use ndarray::ArrayD;

use crate::{Float, Param, Result};

/// Whether a forward pass trains (keeps what backward needs, uses batch
/// statistics, drops out) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Training: caches for backward.
    #[default]
    Train,
    /// Inference: caches nothing.
    Eval,
}

/// A differentiable layer that owns its parameters (PyTorch's `nn.Module`).
///
/// The contract, as in llm.c: `forward` in [`Mode::Train`] keeps the few
/// things `backward` needs; `backward` returns dL/dx and adds (`+=`) dL/dθ
/// into each [`Param::grad`]; `backward` with nothing cached is an
/// [`crate::Error::NoForward`], never a panic or a silent zero.
pub trait Layer<T: Float = f32>: Send {
    /// Output for `x`; in [`Mode::Train`] keeps what [`Layer::backward`] needs.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] when `x` does not fit the layer.
    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>>;

    /// dL/dx for the last train-mode forward, given dL/dy; adds dL/dθ into the grads.
    ///
    /// # Errors
    /// [`crate::Error::NoForward`] without a train-mode forward first,
    /// [`crate::Error::Shape`] when `dy` is not the shape of that forward's output.
    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>>;

    /// Calls `f` on every parameter and buffer under its PyTorch `state_dict`
    /// key (`prefix` joined with the local name by a dot), in PyTorch's order,
    /// to read them: saving a state dict, counting parameters, summaries.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>));

    /// As [`Layer::visit`], with each parameter mutable: loading weights,
    /// optimizer steps, freezing. Must give the same keys in the same order.
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>));

    /// dL/dx as [`Layer::backward`], from a borrowed `dy`: a residual block
    /// hands its main branch the gradient it also passes to the shortcut, so
    /// layers that need not own `dy` (BatchNorm) override this to skip a copy.
    ///
    /// # Errors
    /// As [`Layer::backward`].
    fn backward_view(&mut self, dy: ndarray::ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
        self.backward(dy.to_owned())
    }

    /// Sets every gradient to zero.
    fn zero_grad(&mut self) {
        self.visit_mut("", &mut |_, p| p.zero_grad());
    }

    /// The layer's Rust type, for summaries (`cnn_conv::layers::Conv2d<f32>`).
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }

    /// This layer as [`std::any::Any`], for containers that look for layer
    /// types they know (fused inference finds a `Conv2d` followed by a
    /// `BatchNorm` this way); `None` by default.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }

    /// The direct children, by name, of a container whose forward applies them
    /// in this order and nothing else (`Sequential`); empty for every other
    /// layer, containers of another shape included (a residual block adds a
    /// shortcut, so running its children as a chain would be wrong). Model
    /// summaries, re-seeding and the trainer's frozen-prefix logic walk it.
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<T>)> {
        Vec::new()
    }

    /// Replaces the child at a dotted path (`"fc"`, `"classifier.6"`) and returns
    /// the old one: how a pretrained network gets a new head. Containers
    /// implement it; other layers have no children to replace.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when there is no child at that path.
    fn replace_child(
        &mut self,
        path: &str,
        _layer: Box<dyn Layer<T>>,
    ) -> crate::Result<Box<dyn Layer<T>>> {
        Err(crate::Error::config(
            "replace_child",
            format!("{} has no child {path:?}", self.type_name()),
        ))
    }

    /// Re-seeds every random layer below this one (dropout masks) from `seed`.
    ///
    /// A trainer calls it before each step with a seed drawn from (run seed,
    /// step), so the masks depend on the step alone and a resumed run draws
    /// exactly the masks of one that never stopped. The default hands each
    /// child of [`Layer::children_mut`] its own seed; layers that draw random
    /// numbers override it.
    fn reseed(&mut self, seed: u64) {
        for (i, (_, child)) in self.children_mut().into_iter().enumerate() {
            child.reseed(crate::random::mix_seed(seed, i as u64));
        }
    }

    /// Makes every BatchNorm below this layer take its train-mode statistics
    /// over all ranks of `group` (PyTorch's `SyncBatchNorm`), or, with
    /// `None`, over this process's batch again. The default hands `group` to
    /// each child of [`Layer::children_mut`]; BatchNorm keeps it; containers of
    /// another shape (a residual block) hand it to their branches.
    fn sync_batch_norm(
        &mut self,
        group: Option<std::sync::Arc<dyn crate::collective::Collective>>,
    ) {
        for (_, child) in self.children_mut() {
            child.sync_batch_norm(group.clone());
        }
    }

    /// Number of trainable scalars.
    fn num_trainable(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, p| {
            if p.trainable {
                n += p.len();
            }
        });
        n
    }
}

/// Joins a key prefix and a local name as PyTorch does: `"layer1.0" + "conv1"`.
pub fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
