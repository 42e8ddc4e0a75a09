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

/// How a container's forward feeds its children ([`Layer::wiring`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wiring {
    /// Each child takes the previous one's output, the first the input, and
    /// the last one's output is the container's (`Sequential`).
    Chain,
    /// Each child takes the container's input (a residual block: its main
    /// branch and its projection), and the container combines their outputs.
    Branches,
    /// Anything else (a leaf, or a container that wires its children
    /// otherwise, such as `ConvNeXtBlock`'s permutes around its MLP).
    Other,
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

    /// This layer as [`std::any::Any`] to read it: what lets a walk that only
    /// reads (ONNX export) recognise the layer types it maps; `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// The direct children, as [`Layer::children_mut`] gives them, to read:
    /// walks that only read the tree (export) go through it. A container
    /// implements both; empty by default.
    fn children(&self) -> Vec<(String, &dyn Layer<T>)> {
        Vec::new()
    }

    /// The direct children of a container, by name, in `state_dict` order:
    /// the one method a container implements for every walk over the tree
    /// (re-seeding, synced BatchNorm, [`Layer::replace_child`], summaries,
    /// zero-init, the frozen prefix, fused-inference counts), which are
    /// written once over it. Empty for a layer without children.
    ///
    /// A child named `""` is transparent: its own children's keys sit
    /// directly under this layer's prefix (a residual block's main branch:
    /// `layer1.0.conv1`, not `layer1.0.main.conv1`).
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Layer<T>)> {
        Vec::new()
    }

    /// How the forward of a container feeds its [`Layer::children_mut`]:
    /// what lets a walk run children on their own (summaries show their
    /// output shapes; the trainer runs a frozen prefix in eval mode).
    /// [`Wiring::Other`] by default: nothing assumed.
    fn wiring(&self) -> Wiring {
        Wiring::Other
    }

    /// Replaces the child at a dotted path (`"fc"`, `"classifier.6"`) and returns
    /// the old one: how a pretrained network gets a new head. The default
    /// follows the path through [`Layer::children_mut`] (transparent children
    /// included); the last step needs a container that owns its children as
    /// boxes (`Sequential`), which overrides this to swap one.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when there is no child at that path, or the
    /// container holding it cannot swap it.
    fn replace_child(
        &mut self,
        path: &str,
        layer: Box<dyn Layer<T>>,
    ) -> crate::Result<Box<dyn Layer<T>>> {
        let (first, rest) = path.split_once('.').map_or((path, None), |(a, b)| (a, Some(b)));
        let type_name = self.type_name();
        let mut children = self.children_mut();
        let names: Vec<String> = children.iter().map(|(n, _)| n.clone()).collect();
        if let Some((_, child)) = children.iter_mut().find(|(n, _)| n == first) {
            return match rest {
                Some(rest) => child.replace_child(rest, layer),
                None => Err(crate::Error::config(
                    "replace_child",
                    format!(
                        "{type_name} holds {first:?} inline and cannot swap it for another layer"
                    ),
                )),
            };
        }
        if let Some((_, child)) = children.iter_mut().find(|(n, _)| n.is_empty()) {
            return child.replace_child(path, layer);
        }
        Err(crate::Error::config(
            "replace_child",
            format!("{type_name} has no child {first:?}; children: {names:?}"),
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
    /// each child of [`Layer::children_mut`]; BatchNorm keeps it.
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

/// Joins a key prefix and a local name as PyTorch does: `"layer1.0" + "conv1"`;
/// an empty name (a transparent child, [`Layer::children_mut`]) is the prefix itself.
pub fn join_key(prefix: &str, name: &str) -> String {
    if name.is_empty() {
        prefix.to_string()
    } else if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
