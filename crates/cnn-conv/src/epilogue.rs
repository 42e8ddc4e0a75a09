//! What a convolution does to its output while it is still in cache: the
//! bias, then an epilogue (nothing, or ReLU, the last step of fused
//! inference); and the bias's gradient, the one part of the backward pass
//! every algorithm shares. The folded BatchNorm affine reaches a kernel as
//! weights and bias (`fold.rs`), so it needs no epilogue of its own.

use cnn_tensor::Float;
use ndarray::{Array1, ArrayViewMut2};
use std::ops::Range;

use crate::ConvGeometry;

/// What a convolution applies to each output tile while it is still in
/// cache, after the bias: nothing, or ReLU (`max(v, 0)`, 0 for NaN, as the
/// `Act` layer), the epilogue of fused inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Epilogue {
    /// `y = conv(x) + b`.
    #[default]
    None,
    /// `y = relu(conv(x) + b)`.
    Relu,
}

/// `max(v, 0)`, 0 for NaN: the `Act` layer's ReLU.
#[inline(always)]
pub(crate) fn relu<T: Float>(v: T) -> T {
    if v > T::zero() {
        v
    } else {
        T::zero()
    }
}

/// [`relu`] over a slice.
pub(crate) fn relu_in_place<T: Float>(ys: &mut [T]) {
    ys.iter_mut().for_each(|v| *v = relu(*v));
}

/// The bias and epilogue of a forward, applied to each tile as it is made.
#[derive(Clone, Copy)]
pub(crate) struct Finish<'a, T> {
    /// `b[o]` per output channel, if the conv has a bias.
    pub(crate) bias: Option<&'a [T]>,
    /// What follows the bias.
    pub(crate) epilogue: Epilogue,
}

impl<T: Float> Finish<'_, T> {
    /// `y[o, ·] ← epilogue(y[o, ·] + b[o])` on a tile whose rows are output
    /// channels `channels`, while it is in cache.
    pub(crate) fn apply(&self, mut tile: ArrayViewMut2<'_, T>, channels: Range<usize>) {
        if self.bias.is_none() && self.epilogue == Epilogue::None {
            return;
        }
        for (mut row, oc) in tile.rows_mut().into_iter().zip(channels) {
            let row = row.as_slice_mut().expect("tile rows are contiguous");
            let b = self.bias.map_or(T::zero(), |b| b[oc]);
            match self.epilogue {
                Epilogue::None => row.iter_mut().for_each(|v| *v += b),
                Epilogue::Relu => row.iter_mut().for_each(|v| *v = relu(*v + b)),
            }
        }
    }
}

/// `db[o] = Σ_{n,p,q} dy[n, o, p, q]`, samples added in order.
pub(crate) fn bias_grad<T: Float>(g: &ConvGeometry, dys: &[T]) -> Array1<T> {
    let mut db = Array1::<T>::zeros(g.c_out);
    for dy_n in dys.chunks(g.c_out * g.out_area()) {
        for (d, dy_c) in db.iter_mut().zip(dy_n.chunks(g.out_area())) {
            *d += cnn_tensor::sum(dy_c);
        }
    }
    db
}
