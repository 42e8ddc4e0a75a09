//! `nn.BatchNorm1d` / `nn.BatchNorm2d`.

use crate::Statistics;
use std::sync::Arc;

use cnn_tensor::collective::Collective;
use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};
use ndarray::ArrayViewD;

use crate::common::{
    backward_by, backward_with, batch_moments, channels, check_settings, forward_with,
    AffineParams, NormCache, RunningStats,
};
use crate::{rstd, AffineAxes, NormAxes};

/// Settings of a [`BatchNorm`] layer, with PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Channels `C`.
    pub num_features: usize,
    /// Added to the variance. Default `1e-5`.
    pub eps: f64,
    /// Weight of the new batch in the running statistics. Default `Some(0.1)`;
    /// `None` is a cumulative average over all batches seen.
    pub momentum: Option<f64>,
    /// Learnable γ and β. Default `true`.
    pub affine: bool,
    /// Keep running statistics and use them in eval mode. Default `true`;
    /// with `false` batch statistics are used in both modes.
    pub track_running_stats: bool,
}

impl BatchNormConfig {
    /// PyTorch's defaults for `num_features` channels.
    pub fn new(num_features: usize) -> Self {
        BatchNormConfig {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
    cnn_tensor::setters! {
        /// Another eps.
        with_eps: eps: f64;
        /// Another momentum (`None`: cumulative average).
        with_momentum: momentum: Option<f64>;
        /// With or without γ and β.
        with_affine: affine: bool;
        /// With or without running statistics.
        with_track_running_stats: track_running_stats: bool;
    }
}

/// Batch normalization: per channel over (N, H, W) for `[N, C, H, W]`
/// (`BatchNorm::new_2d`), or over (N, L) for `[N, C]` / `[N, C, L]` (`BatchNorm::new_1d`).
///
/// Keys: `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`.
///
/// Synced ([`Layer::sync_batch_norm`], PyTorch's `SyncBatchNorm`): in
/// training the statistics are those of the whole global batch, spread over
/// the ranks of a [`Collective`]. Forward adds the per-channel sums across
/// ranks, then the sums of squared deviations from the global mean (two
/// passes, as [`crate::moments`], so f32 stays accurate); backward adds the
/// two per-channel gradient sums ([`crate::grad_sums`]). The running
/// statistics get the global ones, so every rank keeps the same.
#[derive(Debug, Clone)]
pub struct BatchNorm<T: Float = f32> {
    /// The settings.
    pub config: BatchNormConfig,
    affine: Option<AffineParams<T>>,
    running: Option<RunningStats<T>>,
    ranks: (usize, usize),
    op: &'static str,
    cache: Option<NormCache<T>>,
    group: Option<Arc<dyn Collective>>,
    /// Values per channel over all ranks in the last synced forward (the global `N·H·W`).
    synced_count: usize,
}

impl<T: Float> BatchNorm<T> {
    /// `nn.BatchNorm2d`: inputs `[N, C, H, W]`.
    ///
    /// # Errors
    /// [`Error::Config`] for zero features, a non-positive eps or momentum outside [0, 1].
    pub fn new_2d(config: BatchNormConfig) -> Result<Self> {
        Self::build(config, (4, 4), "batch_norm2d")
    }

    /// `nn.BatchNorm1d`: inputs `[N, C]` or `[N, C, L]`.
    ///
    /// # Errors
    /// As [`BatchNorm::new_2d`].
    pub fn new_1d(config: BatchNormConfig) -> Result<Self> {
        Self::build(config, (2, 3), "batch_norm1d")
    }

    fn build(config: BatchNormConfig, ranks: (usize, usize), op: &'static str) -> Result<Self> {
        if config.num_features == 0 {
            return Err(Error::config(op, "num_features must be positive"));
        }
        check_settings(op, config.eps, config.momentum)?;
        let c = config.num_features;
        Ok(BatchNorm {
            config,
            affine: config.affine.then(|| AffineParams::new(&[c])),
            running: config.track_running_stats.then(|| RunningStats::new(c)),
            ranks,
            op,
            cache: None,
            group: None,
            synced_count: 0,
        })
    }

    /// Whether the layer is frozen: it has γ and β and neither is trainable
    /// (as [`cnn_tensor::Param::trainable`] after `cnn_nn::freeze`). A frozen
    /// layer normalizes with its running statistics in train mode too and
    /// leaves them unchanged, as timm's `FrozenBatchNorm2d` does: freezing a
    /// pretrained backbone must not let its statistics drift to the new data.
    /// Without affine parameters a layer is never frozen.
    pub fn is_frozen(&self) -> bool {
        self.running.is_some()
            && self.affine.as_ref().is_some_and(|a| !a.weight.trainable && !a.bias.trainable)
    }

    /// The per-channel map this layer applies in eval mode, `y = x·scale + shift`
    /// with `scale = γ/√(var + ε)` and `shift = β − mean·scale` (γ = 1, β = 0
    /// without affine parameters): what fused inference folds into the
    /// convolution before it. `None` without running statistics (eval mode
    /// then normalizes with the batch's own, which no fold can do).
    pub fn eval_scale_shift(&self) -> Option<(Vec<T>, Vec<T>)> {
        let running = self.running.as_ref()?;
        let var: Vec<T> = running.var.value().iter().copied().collect();
        let rstd = rstd(&var, self.config.eps);
        let (gamma, beta) = match &self.affine {
            Some(a) => (
                a.weight.value().iter().copied().collect(),
                a.bias.value().iter().copied().collect(),
            ),
            None => (vec![T::one(); rstd.len()], vec![T::zero(); rstd.len()]),
        };
        let scale: Vec<T> = rstd.iter().zip(&gamma).map(|(&r, &g): (&T, &T)| r * g).collect();
        let shift = running
            .mean
            .value()
            .iter()
            .zip(&scale)
            .zip(&beta)
            .map(|((&m, &s), &b): ((&T, &T), &T)| b - m * s)
            .collect();
        Some((scale, shift))
    }

    /// Whether this is `BatchNorm2d` (inputs `[N, C, H, W]`).
    pub fn is_2d(&self) -> bool {
        self.ranks == (4, 4)
    }

    /// Drops what the last train-mode forward kept for backward, as an
    /// eval-mode forward does: for a container that applied this layer
    /// folded into another (fused inference) instead of calling it.
    pub fn clear_cache(&mut self) {
        self.cache = None;
    }

    /// The group whose ranks share the batch statistics, when synced.
    pub fn sync_group(&self) -> Option<&Arc<dyn Collective>> {
        self.group.as_ref()
    }

    /// Mean and biased variance per channel over every rank's batch, and the
    /// number of values behind them.
    fn synced_moments(
        &self,
        group: &dyn Collective,
        x: &ArrayD<T>,
        axes: NormAxes,
    ) -> Result<(Vec<T>, Vec<T>, usize)> {
        let xs = x.as_standard_layout();
        let xs = xs.as_slice().ok_or_else(|| Error::shape(self.op, "input is not contiguous"))?;
        // [Σx per channel…, values on this rank]
        let mut sums: Vec<f64> = crate::group_sums(xs, axes)?.iter().map(|v| v.as_f64()).collect();
        sums.push(axes.count() as f64);
        group.sum_f64(&mut sums)?;
        let count = sums.pop().unwrap_or(0.0);
        if count <= 1.0 {
            return Err(Error::shape(
                self.op,
                format!(
                    "expected more than 1 value per channel over all ranks when training, got input {:?} on each",
                    x.shape()
                ),
            ));
        }
        let mean: Vec<T> = sums.iter().map(|&s| T::of(s / count)).collect();
        let mut sq: Vec<f64> =
            crate::group_squares(xs, axes, &mean)?.iter().map(|v| v.as_f64()).collect();
        group.sum_f64(&mut sq)?;
        let var = sq.iter().map(|&q| T::of(q / count)).collect();
        Ok((mean, var, count as usize))
    }

    /// Backward of a synced forward: the two gradient sums added across ranks.
    fn synced_backward(
        &mut self,
        group: &dyn Collective,
        cache: NormCache<T>,
        dy: ArrayViewD<'_, T>,
    ) -> Result<ArrayD<T>> {
        let count = self.synced_count as f64;
        backward_by(self.op, cache, dy, self.affine.as_mut(), |xs, dys, cache, view| {
            let (axes, mean, rstd) = (cache.axes, &cache.mean, &cache.rstd);
            let local = crate::grad_sums(xs, dys, axes, mean, rstd, view.as_ref())?;
            // [Σg per channel…, Σg·x̂ per channel…]
            let mut sums: Vec<f64> = local.iter().map(|p| p.0.as_f64()).collect();
            sums.extend(local.iter().map(|p| p.1.as_f64()));
            group.sum_f64(&mut sums)?;
            let c = local.len();
            let coef: Vec<(T, T)> =
                (0..c).map(|k| (T::of(sums[k] / count), T::of(sums[c + k] / count))).collect();
            crate::normalize_backward_from(xs, dys, axes, mean, rstd, view, &coef)
        })
    }

    /// The running mean and variance, when tracked.
    pub fn running_stats(&self) -> Option<(&ArrayD<T>, &ArrayD<T>)> {
        self.running.as_ref().map(|r| (r.mean.value(), r.var.value()))
    }
}

impl<T: Float> BatchNorm<T> {
    /// `relu(bn(x))` in one pass over the output: each plane is normalized
    /// and rectified while in cache, and the ReLU's signs are written into
    /// `positive` (`x`'s length: `cnn_act::Act::forward_in` lends its own),
    /// for the ReLU's backward; this layer's backward is unchanged. Bit for
    /// bit this norm then `cnn_act`'s ReLU. What `Sequential` runs for a
    /// BatchNorm followed by a ReLU in training.
    ///
    /// # Errors
    /// As [`Layer::forward`], and [`Error::Shape`] when `positive` is not `x`'s length.
    pub fn forward_relu(
        &mut self,
        x: ArrayD<T>,
        mode: Mode,
        positive: &mut [u8],
    ) -> Result<ArrayD<T>> {
        // Before the statistics: a refused call leaves the running ones as they were.
        if positive.len() != x.len() {
            return Err(Error::shape(
                self.op,
                format!("a sign mask of {} for an input of {}", positive.len(), x.len()),
            ));
        }
        self.forward_then(x, mode, Some(positive))
    }

    /// The backward of [`BatchNorm::forward_relu`] (or of this norm then a
    /// ReLU whose signs are `positive`): the ReLU's backward folded into the
    /// norm's, which reads `x` and `dy` twice instead of the ReLU's masking
    /// pass and the norm's three. Bit for bit the ReLU's backward then
    /// [`Layer::backward`]. What `Sequential` runs for a BatchNorm followed by
    /// a ReLU in training.
    ///
    /// # Errors
    /// As [`Layer::backward`], and [`Error::Shape`] when `positive` is not `dy`'s length.
    pub fn backward_relu(&mut self, dy: ArrayViewD<'_, T>, positive: &[u8]) -> Result<ArrayD<T>> {
        if positive.len() != dy.len() {
            return Err(Error::shape(
                self.op,
                format!("a sign mask of {} for a gradient of {}", positive.len(), dy.len()),
            ));
        }
        let cache = self.cache.take().ok_or(Error::NoForward { op: self.op })?;
        if self.group.is_some() || cache.stats != Statistics::Batch {
            // Synced sums or fixed statistics: the ReLU's backward first, then as unfused.
            let dy = dy.as_standard_layout();
            let masked = dy.iter().zip(positive).map(|(&g, &m)| if m != 0 { g } else { T::zero() });
            let masked = ArrayD::from_shape_vec(dy.raw_dim(), masked.collect())
                .map_err(|e| Error::shape(self.op, e.to_string()))?;
            self.cache = Some(cache);
            return self.backward_view(masked.view());
        }
        backward_by(self.op, cache, dy, self.affine.as_mut(), |xs, dys, cache, view| {
            let (axes, mean, rstd) = (cache.axes, &cache.mean, &cache.rstd);
            crate::normalize_backward_relu(xs, dys, positive, axes, mean, rstd, view)
        })
    }

    /// The forward, then ReLU when `relu` holds a sign buffer.
    fn forward_then(
        &mut self,
        x: ArrayD<T>,
        mode: Mode,
        relu: Option<&mut [u8]>,
    ) -> Result<ArrayD<T>> {
        let c = channels(self.op, x.shape(), self.ranks.0, self.ranks.1, self.config.num_features)?;
        let n = x.shape()[0];
        let inner: usize = x.shape()[2..].iter().product();
        let axes = NormAxes { outer: n, groups: c, inner };
        let affine_axes = AffineAxes { outer: n, features: c, inner };
        let train = mode == Mode::Train;
        let use_batch = (train && !self.is_frozen()) || self.running.is_none();
        // Running statistics in eval (and when frozen), the batch's otherwise.
        let (mean, rstd_v) = match self.running.as_ref().filter(|_| !use_batch) {
            Some(running) => {
                let mean = running.mean.value().iter().copied().collect();
                let var: Vec<T> = running.var.value().iter().copied().collect();
                (mean, rstd(&var, self.config.eps))
            }
            None => {
                let (mean, var, count) = match self.group.clone().filter(|_| train) {
                    Some(group) => self.synced_moments(&*group, &x, axes)?,
                    None => {
                        let (mean, var) = batch_moments(self.op, &x, axes, train)?;
                        (mean, var, axes.count())
                    }
                };
                self.synced_count = count;
                if let (true, Some(running)) = (train, self.running.as_mut()) {
                    let m = T::of(count as f64);
                    let unbiased: Vec<T> = var.iter().map(|&v| v * m / (m - T::one())).collect();
                    running.update(self.config.momentum, &mean, &unbiased);
                }
                (mean, rstd(&var, self.config.eps))
            }
        };
        let affine = self.affine.as_ref().map(|a| (a, affine_axes));
        let stats = if use_batch { Statistics::Batch } else { Statistics::Running };
        let (y, cache) = forward_with(self.op, x, axes, (mean, rstd_v), affine, stats, mode, relu)?;
        self.cache = cache;
        Ok(y)
    }
}

impl<T: Float> Layer<T> for BatchNorm<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        self.forward_then(x, mode, None)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        self.backward_view(dy.view())
    }

    fn backward_view(&mut self, dy: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
        let cache = self.cache.take().ok_or(Error::NoForward { op: self.op })?;
        match self.group.clone().filter(|_| cache.stats == Statistics::Batch) {
            Some(group) => self.synced_backward(&*group, cache, dy),
            None => backward_with(self.op, cache, dy, self.affine.as_mut()),
        }
    }

    fn sync_batch_norm(&mut self, group: Option<Arc<dyn Collective>>) {
        self.group = group;
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        if let Some(a) = self.affine.as_mut() {
            a.visit_mut(prefix, f);
        }
        if let Some(r) = self.running.as_mut() {
            r.visit_mut(prefix, f);
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        if let Some(a) = self.affine.as_ref() {
            a.visit(prefix, f);
        }
        if let Some(r) = self.running.as_ref() {
            r.visit(prefix, f);
        }
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}
