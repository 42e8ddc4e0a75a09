//! Fused inference: a BatchNorm in eval mode folded into the convolution
//! before it, `W'[o] = W[o]·scale[o]`, `b'[o] = b[o]·scale[o] + shift[o]`
//! (`scale = γ/√(var + ε)`, `shift = β − mean·scale`), computed once and
//! kept until the weights or the norm change.

use cnn_tensor::{Error, Float, Result};
use ndarray::{Array4, ArrayView4};

use crate::weight_cache::{bytes, WeightCache};

/// A per-channel map `y = x·scale + shift`: what a BatchNorm does in eval
/// mode (`cnn_norm::BatchNorm::eval_scale_shift`), to be folded into a conv.
#[derive(Debug, Clone, Copy)]
pub struct ChannelAffine<'a, T> {
    /// `γ/√(var + ε)` per output channel.
    pub scale: &'a [T],
    /// `β − mean·scale` per output channel.
    pub shift: &'a [T],
}

/// What a fold was computed from: weight, bias, scale, shift.
type Sources<T> = (Vec<T>, Option<Vec<T>>, Vec<T>, Vec<T>);

/// The folded weights of one conv and one norm, and what they came from.
#[derive(Debug, Clone, Default)]
pub(crate) struct FoldCache<T: Float> {
    /// Copies of the sources (weight, bias, scale, shift), compared on every
    /// call: the layers' parameters are public fields, so nothing else says they changed.
    source: Option<Sources<T>>,
    /// `W'`, laid out as the conv's weight.
    weight: Option<Array4<T>>,
    /// `b'`.
    bias: Vec<T>,
    /// Winograd's transform of `W'`, cleared whenever `W'` is recomputed.
    pub(crate) winograd: WeightCache<T>,
}

impl<T: Float> FoldCache<T> {
    /// `(W', b')` for these sources, recomputed only when one of them changed.
    ///
    /// # Errors
    /// [`Error::Shape`] when `norm` has not one value per output channel.
    pub(crate) fn get(
        &mut self,
        w: ArrayView4<'_, T>,
        b: Option<&[T]>,
        norm: ChannelAffine<'_, T>,
    ) -> Result<(ArrayView4<'_, T>, &[T], &mut WeightCache<T>)> {
        let c_out = w.shape()[0];
        if norm.scale.len() != c_out || norm.shift.len() != c_out {
            return Err(Error::shape(
                "conv2d_fold",
                format!(
                    "the norm has {} scales and {} shifts, the conv {c_out} output channels",
                    norm.scale.len(),
                    norm.shift.len()
                ),
            ));
        }
        let w = w.as_standard_layout();
        let ws = w.as_slice().expect("standard layout is contiguous");
        // Bytewise, as the weight cache: NaN equals itself, and memcmp is fast.
        let same = self.source.as_ref().is_some_and(|(sw, sb, ss, st)| {
            bytes(sw) == bytes(ws)
                && sb.as_deref().map(bytes) == b.map(bytes)
                && bytes(ss) == bytes(norm.scale)
                && bytes(st) == bytes(norm.shift)
        });
        if !same {
            let per = ws.len() / c_out.max(1);
            let mut folded = w.to_owned();
            let fs = folded.as_slice_mut().expect("a new array is contiguous");
            for (o, row) in fs.chunks_mut(per.max(1)).enumerate().take(c_out) {
                row.iter_mut().for_each(|v| *v *= norm.scale[o]);
            }
            self.bias = (0..c_out)
                .map(|o| b.map_or(T::zero(), |b| b[o]) * norm.scale[o] + norm.shift[o])
                .collect();
            self.weight = Some(folded);
            self.source =
                Some((ws.to_vec(), b.map(<[T]>::to_vec), norm.scale.to_vec(), norm.shift.to_vec()));
            self.winograd = WeightCache::trusting();
        }
        let weight = self.weight.as_ref().expect("set above").view();
        Ok((weight, &self.bias, &mut self.winograd))
    }
}
