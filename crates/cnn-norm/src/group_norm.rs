//! `nn.GroupNorm` and `nn.InstanceNorm2d`.

use crate::Statistics;
use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};
use ndarray::ArrayViewD;

use crate::common::{
    backward_with, batch_moments, channels, check_settings, forward_fused, forward_with,
    AffineParams, NormCache, RunningStats,
};
use crate::{rstd, AffineAxes, NormAxes};

/// Settings of a [`GroupNorm`] layer, with PyTorch's defaults
/// (`nn.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormConfig {
    /// Groups `G`; must divide `num_channels`.
    pub num_groups: usize,
    /// Channels `C`.
    pub num_channels: usize,
    /// Added to the variance. Default `1e-5`.
    pub eps: f64,
    /// Learnable per-channel γ and β. Default `true`.
    pub affine: bool,
}

impl GroupNormConfig {
    /// PyTorch's defaults for `num_groups` groups of `num_channels` channels.
    pub fn new(num_groups: usize, num_channels: usize) -> Self {
        GroupNormConfig { num_groups, num_channels, eps: 1e-5, affine: true }
    }
    cnn_tensor::setters! {
        /// Another eps.
        with_eps: eps: f64;
        /// With or without γ and β.
        with_affine: affine: bool;
    }
}

/// Group normalization: each sample over groups of `C/G` channels and all
/// spatial positions, with a per-channel γ and β. Independent of the batch,
/// so it works for batches of one, where BatchNorm cannot.
///
/// Keys: `weight`, `bias` (when `affine`).
#[derive(Debug, Clone)]
pub struct GroupNorm<T: Float = f32> {
    groups: usize,
    channels: usize,
    eps: f64,
    affine: Option<AffineParams<T>>,
    cache: Option<NormCache<T>>,
}

impl<T: Float> GroupNorm<T> {
    /// `nn.GroupNorm` from its settings.
    ///
    /// # Errors
    /// [`Error::Config`] when `num_groups` does not divide `num_channels`, either is zero, or eps is not positive.
    pub fn new(config: GroupNormConfig) -> Result<Self> {
        let GroupNormConfig { num_groups: groups, num_channels: channels, eps, affine } = config;
        if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
            return Err(Error::config(
                "group_norm",
                format!("num_groups {groups} must be positive and divide num_channels {channels}"),
            ));
        }
        check_settings("group_norm", eps, None)?;
        Ok(GroupNorm {
            groups,
            channels,
            eps,
            affine: affine.then(|| AffineParams::new(&[channels])),
            cache: None,
        })
    }

    /// The number of groups the channels are split into.
    pub fn num_groups(&self) -> usize {
        self.groups
    }

    /// The ε added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl<T: Float> Layer<T> for GroupNorm<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let c = channels("group_norm", x.shape(), 2, usize::MAX, self.channels)?;
        let n = x.shape()[0];
        let rest: usize = x.shape()[2..].iter().product();
        let axes = NormAxes { outer: 1, groups: n * self.groups, inner: c / self.groups * rest };
        let affine =
            self.affine.as_ref().map(|a| (a, AffineAxes { outer: n, features: c, inner: rest }));
        let (y, cache) =
            forward_fused("group_norm", x, axes, self.eps, affine, mode == Mode::Train)?;
        self.cache = cache;
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        self.backward_view(dy.view())
    }

    fn backward_view(&mut self, dy: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
        let cache = self.cache.take().ok_or(Error::NoForward { op: "group_norm" })?;
        backward_with("group_norm", cache, dy, self.affine.as_mut())
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        if let Some(a) = self.affine.as_mut() {
            a.visit_mut(prefix, f);
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<T>)) {
        if let Some(a) = self.affine.as_ref() {
            a.visit(prefix, f);
        }
    }
}

/// Settings of an [`InstanceNorm2d`] layer, with PyTorch's defaults
/// (`nn.InstanceNorm2d(num_features, eps=1e-5, momentum=0.1, affine=False,
/// track_running_stats=False)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceNormConfig {
    /// Channels `C`.
    pub num_features: usize,
    /// Added to the variance. Default `1e-5`.
    pub eps: f64,
    /// Weight of the new batch in the running statistics. Default `Some(0.1)`;
    /// `None` is a cumulative average.
    pub momentum: Option<f64>,
    /// Learnable per-channel γ and β. Default `false`.
    pub affine: bool,
    /// Keep running statistics and use them in eval mode. Default `false`.
    pub track_running_stats: bool,
}

impl InstanceNormConfig {
    /// PyTorch's defaults for `num_features` channels.
    pub fn new(num_features: usize) -> Self {
        InstanceNormConfig {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: false,
            track_running_stats: false,
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

/// Instance normalization: each sample and channel over (H, W). γ/β and
/// running statistics are optional and off by default, as in PyTorch; with
/// running statistics, eval mode uses them (their update averages the
/// per-instance statistics over the batch).
///
/// Keys: `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked` (when enabled).
#[derive(Debug, Clone)]
pub struct InstanceNorm2d<T: Float = f32> {
    channels: usize,
    eps: f64,
    momentum: Option<f64>,
    affine: Option<AffineParams<T>>,
    running: Option<RunningStats<T>>,
    cache: Option<NormCache<T>>,
}

impl<T: Float> InstanceNorm2d<T> {
    /// `nn.InstanceNorm2d` from its settings.
    ///
    /// # Errors
    /// [`Error::Config`] for zero features, a non-positive eps or momentum outside [0, 1].
    pub fn new(config: InstanceNormConfig) -> Result<Self> {
        let InstanceNormConfig { num_features, eps, momentum, affine, track_running_stats } =
            config;
        if num_features == 0 {
            return Err(Error::config("instance_norm2d", "num_features must be positive"));
        }
        check_settings("instance_norm2d", eps, momentum)?;
        Ok(InstanceNorm2d {
            channels: num_features,
            eps,
            momentum,
            affine: affine.then(|| AffineParams::new(&[num_features])),
            running: track_running_stats.then(|| RunningStats::new(num_features)),
            cache: None,
        })
    }

    /// The ε added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl<T: Float> Layer<T> for InstanceNorm2d<T> {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let c = channels("instance_norm2d", x.shape(), 4, 4, self.channels)?;
        let n = x.shape()[0];
        let hw = x.shape()[2] * x.shape()[3];
        let axes = NormAxes { outer: 1, groups: n * c, inner: hw };
        let train = mode == Mode::Train;
        let use_batch = train || self.running.is_none();
        // Running statistics in eval when kept, the instance's otherwise.
        let (mean, rstd_v) = match self.running.as_ref().filter(|_| !use_batch) {
            Some(running) => {
                let rm: Vec<T> = running.mean.value().iter().copied().collect();
                let rv: Vec<T> =
                    rstd(&running.var.value().iter().copied().collect::<Vec<T>>(), self.eps);
                ((0..n * c).map(|g| rm[g % c]).collect(), (0..n * c).map(|g| rv[g % c]).collect())
            }
            None => {
                let (mean, var) = batch_moments("instance_norm2d", &x, axes, train)?;
                if let (true, Some(running)) = (train, self.running.as_mut()) {
                    let m = T::of(hw as f64);
                    let per_channel = |v: &[T], unbias: bool| -> Vec<T> {
                        (0..c)
                            .map(|ch| {
                                let s: T =
                                    (0..n).map(|i| v[i * c + ch]).fold(T::zero(), |a, b| a + b);
                                let s = if unbias { s * m / (m - T::one()) } else { s };
                                s / T::of(n as f64)
                            })
                            .collect()
                    };
                    let (bm, bv) = (per_channel(&mean, false), per_channel(&var, true));
                    running.update(self.momentum, &bm, &bv);
                }
                (mean, rstd(&var, self.eps))
            }
        };
        let affine =
            self.affine.as_ref().map(|a| (a, AffineAxes { outer: n, features: c, inner: hw }));
        let stats = if use_batch { Statistics::Batch } else { Statistics::Running };
        let (y, cache) =
            forward_with("instance_norm2d", x, axes, (mean, rstd_v), affine, stats, mode, None)?;
        self.cache = cache;
        Ok(y)
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        self.backward_view(dy.view())
    }

    fn backward_view(&mut self, dy: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
        let cache = self.cache.take().ok_or(Error::NoForward { op: "instance_norm2d" })?;
        backward_with("instance_norm2d", cache, dy, self.affine.as_mut())
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
}
