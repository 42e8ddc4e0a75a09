//! timm's `LayerNorm2d`: LayerNorm over the channels of each pixel.

use cnn_tensor::{ArrayD, Error, Float, Layer, Mode, Param, Result};

use crate::LayerNorm;

/// LayerNorm over the channel axis of each pixel of an NCHW tensor, with a
/// per-channel γ and β (timm's `LayerNorm2d`, ConvNeXt's norm; eps 1e-6 there).
///
/// The same kernel as [`LayerNorm`] on the channels-last view: `[N, C, H, W]`
/// is permuted to `[N, H, W, C]`, normalized over its last axis (statistics
/// view `[1, N·H·W, C]`), and permuted back; backward does the same to `dy`.
///
/// Keys: `weight`, `bias`.
///
/// # Shapes
/// `x: [N, C, H, W]` → `y: [N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct LayerNorm2d<T: Float = f32> {
    channels: usize,
    inner: LayerNorm<T>,
}

impl<T: Float> LayerNorm2d<T> {
    /// LayerNorm2d over `channels` channels with `eps` (timm: 1e-6).
    ///
    /// # Errors
    /// [`Error::Config`] for zero channels or a non-positive eps.
    pub fn new(channels: usize, eps: f64) -> Result<Self> {
        let inner = LayerNorm::new(&[channels], eps, true)
            .map_err(|e| Error::config("layer_norm2d", e.to_string()))?;
        Ok(LayerNorm2d { channels, inner })
    }
}

/// `[N, A, B, C]` with axes permuted by `order`, made contiguous.
fn permute<T: Float>(x: ArrayD<T>, order: [usize; 4]) -> ArrayD<T> {
    x.permuted_axes(order.to_vec()).as_standard_layout().into_owned()
}

impl<T: Float> Layer<T> for LayerNorm2d<T> {
    fn forward(&mut self, x: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        if x.ndim() != 4 || x.shape()[1] != self.channels || x.is_empty() {
            return Err(Error::shape(
                "layer_norm2d",
                format!("input must be [N, {}, H, W], got {:?}", self.channels, x.shape()),
            ));
        }
        let y = self.inner.forward(permute(x, [0, 2, 3, 1]), mode)?;
        Ok(permute(y, [0, 3, 1, 2]))
    }

    fn backward(&mut self, dy: ArrayD<T>) -> Result<ArrayD<T>> {
        if dy.ndim() != 4 {
            return Err(Error::shape(
                "layer_norm2d",
                format!("dy must be [N, C, H, W], got {:?}", dy.shape()),
            ));
        }
        let dx = self.inner.backward(permute(dy, [0, 2, 3, 1]))?;
        Ok(permute(dx, [0, 3, 1, 2]))
    }

    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        self.inner.visit(prefix, f);
    }
}
