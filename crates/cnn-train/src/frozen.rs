//! Training past a frozen backbone: the frozen part runs in eval mode and
//! backward stops where it begins; or its features are computed once.
//!
//! Freezing (`cnn_nn::freeze`) marks parameters untrainable. That alone, as
//! in PyTorch, would still let the backbone's BatchNorm statistics move in
//! train mode and would still run backward through every frozen layer. Here
//! the leading children of a model that have nothing to train form its
//! *frozen prefix*: [`crate::compute_gradients`] runs them in
//! [`Mode::Eval`] (no caches, running statistics untouched, no dropout) and
//! sends the gradient back only through the children after them. A frozen
//! BatchNorm after that point keeps its statistics too (`BatchNorm::is_frozen`).

use cnn_data::{DataLoader, TensorDataset};
use cnn_tensor::{ArrayD, Error, Float, IxDyn, Layer, Mode, Param, Result, Wiring};

/// How many leading children of `model` have no trainable parameter: the
/// frozen prefix. 0 unless the model is a chain of children
/// ([`Wiring::Chain`]): only there can the first ones run by themselves.
pub fn frozen_prefix<T: Float>(model: &mut dyn Layer<T>) -> usize {
    if model.wiring() != Wiring::Chain {
        return 0;
    }
    let mut k = 0;
    for (_, child) in model.children_mut() {
        let mut trainable = false;
        child.visit("", &mut |_, p| trainable |= p.trainable && !p.buffer);
        if trainable {
            break;
        }
        k += 1;
    }
    k
}

/// Where training stops going back: the frozen prefix of `model`, then,
/// when the first child after it is itself a container with a frozen
/// prefix, that child's, and so on (`[4, 1]`: the first four children
/// frozen, then the first child of the fifth). `[0]` when nothing at the
/// top is frozen.
pub fn frozen_boundary<T: Float>(model: &mut dyn Layer<T>) -> Vec<usize> {
    if model.wiring() != Wiring::Chain {
        // Only a chain's children can run by themselves (not a residual block's).
        return vec![0];
    }
    let k = frozen_prefix(model);
    let mut path = vec![k];
    if let Some((_, child)) = model.children_mut().into_iter().nth(k) {
        let inner = frozen_boundary(child);
        if inner != [0] {
            path.extend(inner);
        }
    }
    path
}

/// A train-mode forward that runs everything before the `boundary`
/// ([`frozen_boundary`]) in eval mode.
pub(crate) fn forward_past_frozen<T: Float>(
    layer: &mut dyn Layer<T>,
    mut x: ArrayD<T>,
    boundary: &[usize],
) -> Result<ArrayD<T>> {
    let (k, rest) = match boundary {
        [] | [0] => return layer.forward(x, Mode::Train),
        [k, rest @ ..] => (*k, rest),
    };
    for (i, (_, child)) in layer.children_mut().into_iter().enumerate() {
        x = match i.cmp(&k) {
            std::cmp::Ordering::Less => child.forward(x, Mode::Eval)?,
            std::cmp::Ordering::Equal if !rest.is_empty() => forward_past_frozen(child, x, rest)?,
            _ => child.forward(x, Mode::Train)?,
        };
    }
    Ok(x)
}

/// Backward from the output back to the `boundary`, and no further.
pub(crate) fn backward_to_frozen<T: Float>(
    layer: &mut dyn Layer<T>,
    dy: ArrayD<T>,
    boundary: &[usize],
) -> Result<()> {
    let (k, rest) = match boundary {
        [] | [0] => return layer.backward(dy).map(|_| ()),
        [k, rest @ ..] => (*k, rest),
    };
    let mut children = layer.children_mut();
    let mut dy = dy;
    for (_, child) in children.iter_mut().skip(k + usize::from(!rest.is_empty())).rev() {
        dy = child.backward(dy)?;
    }
    if let (false, Some((_, child))) = (rest.is_empty(), children.get_mut(k)) {
        backward_to_frozen(&mut **child, dy, rest)?;
    }
    Ok(())
}

/// The outputs of the first `frozen` children of `model` (eval mode) for
/// every sample of `loader`, as a dataset of `[d, 1, 1]` features with the
/// loader's labels, and the features' own shape (`[512]` after a flatten).
///
/// A linear probe without augmentation sees the same features every epoch,
/// so it computes them once and trains the head on them ([`FeatureHead`]).
///
/// # Errors
/// Whatever the loader or the model returns; [`Error::Config`] for an empty loader.
pub fn extract_features(
    model: &mut dyn Layer<f32>,
    frozen: usize,
    loader: &DataLoader,
) -> Result<(TensorDataset, Vec<usize>)> {
    let (mut values, mut labels, mut shape) = (Vec::new(), Vec::new(), None::<Vec<usize>>);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let mut x = batch.images.into_dyn();
        for (_, child) in model.children_mut().into_iter().take(frozen) {
            x = child.forward(x, Mode::Eval)?;
        }
        let per_sample = x.shape()[1..].to_vec();
        if shape.get_or_insert_with(|| per_sample.clone()) != &per_sample {
            return Err(Error::shape("extract_features", "feature shapes differ between batches"));
        }
        values.extend(x.as_standard_layout().iter().copied());
        labels.extend(batch.labels);
    }
    let shape = shape.ok_or_else(|| Error::config("extract_features", "the loader is empty"))?;
    let d = shape.iter().product();
    let classes = loader.dataset().classes().to_vec();
    Ok((TensorDataset::new([d, 1, 1], values, labels, classes)?, shape))
}

/// The children of `model` from `from` on, fed with cached features
/// ([`extract_features`]): what [`crate::Trainer::fit`] trains in a cached
/// linear probe. Its parameters are the whole model's, under their keys, so
/// checkpoints hold the whole network.
pub struct FeatureHead<'a> {
    model: &'a mut dyn Layer<f32>,
    from: usize,
    feature_shape: Vec<usize>,
}

impl<'a> FeatureHead<'a> {
    /// The head of `model` after its first `from` children, taking features of `feature_shape`.
    pub fn new(model: &'a mut dyn Layer<f32>, from: usize, feature_shape: Vec<usize>) -> Self {
        FeatureHead { model, from, feature_shape }
    }
}

impl Layer<f32> for FeatureHead<'_> {
    fn forward(&mut self, x: ArrayD<f32>, mode: Mode) -> Result<ArrayD<f32>> {
        let mut shape = vec![x.shape()[0]];
        shape.extend(&self.feature_shape);
        let mut x = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&shape))
            .map_err(|e| Error::shape("feature_head", e.to_string()))?;
        for (_, child) in self.model.children_mut().into_iter().skip(self.from) {
            x = child.forward(x, mode)?;
        }
        Ok(x)
    }

    fn backward(&mut self, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut dy = dy;
        for (_, child) in self.model.children_mut().into_iter().skip(self.from).rev() {
            dy = child.backward(dy)?;
        }
        Ok(dy)
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<f32>)) {
        self.model.visit_mut(prefix, f);
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<f32>)) {
        self.model.visit(prefix, f);
    }

    fn reseed(&mut self, seed: u64) {
        self.model.reseed(seed);
    }

    fn sync_batch_norm(
        &mut self,
        group: Option<std::sync::Arc<dyn cnn_tensor::collective::Collective>>,
    ) {
        self.model.sync_batch_norm(group);
    }
}
