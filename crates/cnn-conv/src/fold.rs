//! Fused inference: a BatchNorm in eval mode folded into the convolution
//! before it, `W'[o] = W[o]·scale[o]`, `b'[o] = b[o]·scale[o] + shift[o]`
//! (`scale = γ/√(var + ε)`, `shift = β − mean·scale`), computed once and
//! kept until the weights or the norm change.

use cnn_tensor::{Error, Float, Result, Version};
use ndarray::{Array4, ArrayView4};

use crate::weight_cache::{bytes, Prepared, WeightCache};

/// A per-channel map `y = x·scale + shift`: what a BatchNorm does in eval
/// mode (`cnn_norm::BatchNorm::eval_scale_shift`), to be folded into a conv.
#[derive(Debug, Clone, Copy)]
pub struct ChannelAffine<'a, T> {
    /// `γ/√(var + ε)` per output channel.
    pub scale: &'a [T],
    /// `β − mean·scale` per output channel.
    pub shift: &'a [T],
}

/// The versions of the conv's weight and bias (`Param::version`).
pub(crate) type ConvVersions = (Version, Option<Version>);

/// What a fold was computed from: the conv's versions, the norm's scale and
/// shift (compared bytewise on every call: one value per channel, computed
/// afresh from the norm's statistics by the caller).
type Sources<T> = (ConvVersions, Vec<T>, Vec<T>);

/// The folded weights of one conv and one norm, and what they came from.
#[derive(Debug, Clone, Default)]
pub(crate) struct FoldCache<T: Float> {
    /// What `W'` and `b'` were computed from.
    source: Option<Sources<T>>,
    /// `W'`, laid out as the conv's weight.
    weight: Option<Array4<T>>,
    /// `b'`.
    bias: Vec<T>,
    /// A version of `W'` of its own, new at each recomputation: the key of
    /// `prepared`.
    version: Option<Version>,
    /// Winograd's or the im2col path's packing of `W'`.
    pub(crate) prepared: WeightCache<T>,
}

impl<T: Float> FoldCache<T> {
    /// `(W', b')` for these sources (`w` and `b` at `versions`), recomputed
    /// only when one of them changed, with the cache of `W'` prepared for the
    /// kernels and the version it is keyed by.
    ///
    /// # Errors
    /// [`Error::Shape`] when `norm` has not one value per output channel.
    pub(crate) fn get(
        &mut self,
        w: ArrayView4<'_, T>,
        b: Option<&[T]>,
        versions: ConvVersions,
        norm: ChannelAffine<'_, T>,
    ) -> Result<(ArrayView4<'_, T>, &[T], Prepared<'_, T>)> {
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
        // Bytewise: NaN equals itself.
        let same = self.source.as_ref().is_some_and(|(sv, ss, st)| {
            *sv == versions && bytes(ss) == bytes(norm.scale) && bytes(st) == bytes(norm.shift)
        });
        if !same {
            let w = w.as_standard_layout();
            let ws = w.as_slice().expect("standard layout is contiguous");
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
            self.source = Some((versions, norm.scale.to_vec(), norm.shift.to_vec()));
            self.version = Some(Version::fresh());
        }
        let weight = self.weight.as_ref().expect("set above").view();
        let version = self.version.expect("set with the weight");
        Ok((weight, &self.bias, (&mut self.prepared, version)))
    }
}
