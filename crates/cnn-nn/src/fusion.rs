//! Fused inference: in eval mode, a `Conv2d` followed by a `BatchNorm2d`
//! (with running statistics) and a ReLU runs as one convolution, the norm
//! folded into its weights and bias (computed once, recomputed when either
//! layer's parameters change) and the ReLU applied to each output tile while
//! it is in cache. `Sequential` finds these runs of layers; `BasicBlock` and
//! `Bottleneck` use them for their convolutions. Outputs equal the layers run
//! one by one within f32 rounding; [`with_fusion`] turns it off to compare.

use std::cell::Cell;

use cnn_act::{Act, Activation};
use cnn_conv::{ChannelAffine, Conv2d, Epilogue};
use cnn_norm::BatchNorm;
use cnn_tensor::{switches, ArrayD, Error, Float, Layer, Mode, Result};
use ndarray::{Array4, ArrayView4, Ix4};

thread_local! {
    static ENABLED: Cell<Option<bool>> = const { Cell::new(None) };
    /// What the fused forwards of this thread did, for [`count_fused`].
    static COUNT: Cell<FusionCount> =
        const {
            Cell::new(FusionCount {
                convs: 0,
                norms: 0,
                relus: 0,
                mlps: 0,
                norm_relus: 0,
                norm_relu_backwards: 0,
            })
        };
}

/// What fused inference did over some forwards ([`count_fused`]): how many
/// convolutions ran fused, how many BatchNorms were folded into them, how
/// many ReLUs ran as their epilogue, and how many ConvNeXt blocks ran their
/// MLP fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FusionCount {
    /// Convolutions run through the fused path.
    pub convs: usize,
    /// BatchNorms folded into a convolution's weights.
    pub norms: usize,
    /// ReLUs applied in a convolution's epilogue.
    pub relus: usize,
    /// ConvNeXt blocks whose MLP ran with its activation, layer scale and
    /// residual sum in the products' epilogues (and no copy of the input).
    pub mlps: usize,
    /// In training: ReLUs applied by the 2-D BatchNorm before them, in the
    /// same pass over the output (`BatchNorm::forward_relu`).
    pub norm_relus: usize,
    /// In training: ReLU backwards folded into the 2-D BatchNorm's before
    /// them (`BatchNorm::backward_relu`).
    pub norm_relu_backwards: usize,
}

/// Runs `f` and counts what fused inference did inside it on this thread:
/// the check that fusion engaged, not only that its output is right.
pub fn count_fused<R>(f: impl FnOnce() -> R) -> (R, FusionCount) {
    let before = COUNT.with(Cell::get);
    let r = f();
    let after = COUNT.with(Cell::get);
    let count = FusionCount {
        convs: after.convs - before.convs,
        norms: after.norms - before.norms,
        relus: after.relus - before.relus,
        mlps: after.mlps - before.mlps,
        norm_relus: after.norm_relus - before.norm_relus,
        norm_relu_backwards: after.norm_relu_backwards - before.norm_relu_backwards,
    };
    (r, count)
}

/// Records one fused convolution in this thread's [`FusionCount`].
fn record(norm: bool, relu: bool) {
    COUNT.with(|c| {
        let mut n = c.get();
        n.convs += 1;
        n.norms += usize::from(norm);
        n.relus += usize::from(relu);
        c.set(n);
    });
}

/// Records one ConvNeXt block run fused in this thread's [`FusionCount`].
pub(crate) fn record_mlp() {
    COUNT.with(|c| {
        let mut n = c.get();
        n.mlps += 1;
        c.set(n);
    });
}

/// Whether `a` then `b` are a 2-D BatchNorm and a ReLU, which a train-mode
/// forward runs as one pass ([`norm_relu_train`]).
pub(crate) fn is_norm_relu<T: Float>(a: &mut dyn Layer<T>, b: &mut dyn Layer<T>) -> bool {
    kind(a) == Kind::Norm && kind(b) == Kind::Relu
}

/// `relu(bn(x))` in training, in one pass over the output: the norm keeps
/// what its backward needs, the ReLU layer the signs (written by the norm's
/// kernel into the ReLU's own buffer), so both backwards run unchanged.
/// Layers checked by [`is_norm_relu`].
pub(crate) fn norm_relu_train<T: Float>(
    bn: &mut dyn Layer<T>,
    relu: &mut dyn Layer<T>,
    x: ArrayD<T>,
) -> Result<ArrayD<T>> {
    let bn: &mut BatchNorm<T> = downcast(bn);
    let act: &mut Act<T> = downcast(relu);
    let shape = x.shape().to_vec();
    let y = act.forward_in(&shape, |signs| bn.forward_relu(x, Mode::Train, signs))?;
    COUNT.with(|c| {
        let mut n = c.get();
        n.norm_relus += 1;
        c.set(n);
    });
    Ok(y)
}

/// The backward of `relu(bn(x))` in training (fused or not in the
/// forward): the ReLU's signs lent to the norm, whose backward applies them
/// on the way (`BatchNorm::backward_relu`). Layers checked by [`is_norm_relu`].
pub(crate) fn norm_relu_backward<T: Float>(
    bn: &mut dyn Layer<T>,
    relu: &mut dyn Layer<T>,
    dy: ArrayD<T>,
) -> Result<ArrayD<T>> {
    let bn: &mut BatchNorm<T> = downcast(bn);
    let act: &mut Act<T> = downcast(relu);
    let dx = act.backward_in(dy.shape(), |signs| bn.backward_relu(dy.view(), signs))?;
    COUNT.with(|c| {
        let mut n = c.get();
        n.norm_relu_backwards += 1;
        c.set(n);
    });
    Ok(dx)
}

/// How many of each layer kind fused inference can take, found through
/// [`Layer::children_mut`]: the convolutions (every one runs fused), the
/// 2-D BatchNorms right after one in a chain and the ReLUs right after those
/// (or right after a conv), and the ConvNeXt blocks. What [`count_fused`]
/// should report for one eval-mode forward of `model`.
pub fn fusable<T: Float>(model: &mut dyn Layer<T>) -> FusionCount {
    let mut count = FusionCount::default();
    if model.as_any_mut().is_some_and(|a| a.is::<crate::ConvNeXtBlock<T>>()) {
        count.mlps = 1;
        return count;
    }
    let chain = model.wiring() == cnn_tensor::Wiring::Chain;
    let mut children = model.children_mut();
    let mut i = 0;
    while i < children.len() {
        if chain && kind(&mut *children[i].1) == Kind::Conv {
            let norm = i + 1 < children.len() && kind(&mut *children[i + 1].1) == Kind::Norm;
            let at = i + 1 + usize::from(norm);
            let relu = at < children.len() && kind(&mut *children[at].1) == Kind::Relu;
            count.convs += 1;
            count.norms += usize::from(norm);
            count.relus += usize::from(relu);
            i = at + usize::from(relu);
            continue;
        }
        let inner = fusable(&mut *children[i].1);
        count.convs += inner.convs;
        count.norms += inner.norms;
        count.relus += inner.relus;
        count.mlps += inner.mlps;
        i += 1;
    }
    count
}

/// Whether forwards on this thread fuse (eval: conv + BatchNorm + ReLU and
/// ConvNeXt's MLP; training: BatchNorm + ReLU): [`with_fusion`]'s setting,
/// else `CNN_FUSION` (`off` turns it off; [`cnn_tensor::switches::FUSION`]), else on.
pub fn fusion_enabled() -> bool {
    static ENV: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    ENABLED
        .with(|e| e.get())
        .or_else(|| switches::FUSION.cached(&ENV, switches::parse_on_off))
        .unwrap_or(true)
}

/// Runs `f` with fusion on or off on this thread (restored after, even on
/// panic): `with_fusion(false, || net.forward(x, Mode::Eval))` runs every
/// layer by itself, in eval mode and in training.
pub fn with_fusion<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    switches::scoped(&ENABLED, enabled, f)
}

/// `relu?(bn(conv(x)))` in one pass (eval mode): the norm folded into the
/// conv when it has running statistics, else applied after it.
pub(crate) fn conv_bn<T: Float>(
    conv: &mut Conv2d<T>,
    bn: &mut BatchNorm<T>,
    relu: Option<&mut Act<T>>,
    x: ArrayView4<'_, T>,
) -> Result<Array4<T>> {
    let Some((scale, shift)) = bn.eval_scale_shift().filter(|_| bn.is_2d()) else {
        // Batch statistics in eval mode: nothing to fold; the layers one by one.
        let y = conv.forward_fused(x, None, Epilogue::None)?;
        let mut y = bn.forward(y.into_dyn(), Mode::Eval)?;
        if let Some(act) = relu {
            y = act.forward(y, Mode::Eval)?;
        }
        return to4("batch_norm2d", y);
    };
    bn.clear_cache();
    let epilogue = match relu {
        Some(act) => {
            act.clear_cache();
            Epilogue::Relu
        }
        None => Epilogue::None,
    };
    let y =
        conv.forward_fused(x, Some(ChannelAffine { scale: &scale, shift: &shift }), epilogue)?;
    record(true, epilogue == Epilogue::Relu);
    Ok(y)
}

/// A 4-D array, or an error naming `op`.
pub(crate) fn to4<T: Float>(op: &'static str, x: ArrayD<T>) -> Result<Array4<T>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality::<Ix4>().map_err(|_| {
        Error::shape(op, format!("input must be 4-D [N, C, H, W], got {}-D {shape:?}", shape.len()))
    })
}

/// What a layer is, for finding fusable runs.
#[derive(PartialEq)]
enum Kind {
    Conv,
    Norm,
    Relu,
    Other,
}

fn kind<T: Float>(layer: &mut dyn Layer<T>) -> Kind {
    let Some(any) = layer.as_any_mut() else { return Kind::Other };
    if any.is::<Conv2d<T>>() {
        Kind::Conv
    } else if any.downcast_ref::<BatchNorm<T>>().is_some_and(BatchNorm::is_2d) {
        Kind::Norm
    } else if any.downcast_ref::<Act<T>>().is_some_and(|a| a.activation == Activation::Relu) {
        Kind::Relu
    } else {
        Kind::Other
    }
}

fn downcast<L: 'static, T: Float>(layer: &mut dyn Layer<T>) -> &mut L {
    layer.as_any_mut().and_then(|a| a.downcast_mut::<L>()).expect("kind checked")
}

/// The fusable run at the start of `layers`, if any (a conv, then an
/// optional 2-D BatchNorm, then an optional ReLU): how many layers it covers
/// and its output on `x`. Layers past the run are untouched.
pub(crate) fn run_fused<T: Float>(
    layers: &mut [&mut dyn Layer<T>],
    x: &ArrayD<T>,
) -> Result<Option<(usize, Array4<T>)>> {
    if layers.is_empty() || kind(&mut *layers[0]) != Kind::Conv {
        return Ok(None);
    }
    let Ok(x4) = x.view().into_dimensionality::<Ix4>() else { return Ok(None) };
    let norm = layers.len() > 1 && kind(&mut *layers[1]) == Kind::Norm;
    let relu_at = 1 + usize::from(norm);
    let relu = layers.len() > relu_at && kind(&mut *layers[relu_at]) == Kind::Relu;
    let (head, tail) = layers.split_at_mut(1);
    let conv: &mut Conv2d<T> = downcast(&mut *head[0]);
    let (bn, tail) = if norm {
        let (b, t) = tail.split_at_mut(1);
        (Some(downcast::<BatchNorm<T>, T>(&mut *b[0])), t)
    } else {
        (None, tail)
    };
    let act = if relu { Some(downcast::<Act<T>, T>(&mut *tail[0])) } else { None };
    let used = relu_at + usize::from(relu);
    let y = match bn {
        Some(bn) => conv_bn(conv, bn, act, x4)?,
        None => {
            let epilogue = match act {
                Some(act) => {
                    act.clear_cache();
                    Epilogue::Relu
                }
                None => Epilogue::None,
            };
            let y = conv.forward_fused(x4, None, epilogue)?;
            record(false, epilogue == Epilogue::Relu);
            y
        }
    };
    Ok(Some((used, y)))
}
