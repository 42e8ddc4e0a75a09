//! Convolution settings and the shape arithmetic every conv kernel shares.

use cnn_tensor::{Error, Result};

const OP: &str = "conv2d";

/// Stride, padding, dilation and groups of a 2-D convolution, per axis `[h, w]`
/// (`F.conv2d`'s keyword arguments). Defaults: stride 1, padding 0, dilation 1, groups 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dOptions {
    /// Step between output positions, `[h, w]`.
    pub stride: [usize; 2],
    /// Zeros added on each side, `[h, w]`.
    pub padding: [usize; 2],
    /// Spacing between kernel taps, `[h, w]`.
    pub dilation: [usize; 2],
    /// Channel groups: input and output channels are split into this many
    /// independent convolutions (`groups == in_channels` is depthwise).
    pub groups: usize,
    /// How to compute it (not a PyTorch argument; the results agree within
    /// rounding). Default [`ConvAlgorithm::Auto`].
    pub algorithm: ConvAlgorithm,
}

/// The algorithm a 3×3 stride-1 convolution runs (others always use im2col,
/// or the direct depthwise kernel).
///
/// With `Auto` the environment variable `CNN_CONV_ALGORITHM` (same names:
/// `auto`, `im2col`, `winograd`, `winograd2`, `winograd4`) can force one for
/// the whole process, where it applies; the shape rule is in docs/conv.md.
/// Winograd computes in f32 under a bf16 scope too (`cnn_tensor::with_precision`;
/// its transforms would magnify bf16's rounding), and `Auto` makes the same
/// choice in both precisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConvAlgorithm {
    /// Winograd F(4×4, 3×3) where the shape rule says it is faster, else im2col.
    #[default]
    Auto,
    /// im2col + GEMM always.
    Im2col,
    /// Winograd, the default tile (F(4×4, 3×3)); an error on other convolutions.
    Winograd,
    /// Winograd F(2×2, 3×3): 2.25× fewer multiplies, smaller rounding error.
    Winograd2,
    /// Winograd F(4×4, 3×3): 4× fewer multiplies.
    Winograd4,
}

impl ConvAlgorithm {
    /// Parses a `CNN_CONV_ALGORITHM` value (case-insensitive).
    pub fn parse(s: &str) -> Option<ConvAlgorithm> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(ConvAlgorithm::Auto),
            "im2col" => Some(ConvAlgorithm::Im2col),
            "winograd" => Some(ConvAlgorithm::Winograd),
            "winograd2" | "f2" => Some(ConvAlgorithm::Winograd2),
            "winograd4" | "f4" => Some(ConvAlgorithm::Winograd4),
            _ => None,
        }
    }
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            algorithm: ConvAlgorithm::Auto,
        }
    }
}

impl Conv2dOptions {
    /// The same stride on both axes.
    pub fn with_stride(self, s: usize) -> Self {
        Conv2dOptions { stride: [s, s], ..self }
    }
    /// The same padding on both axes.
    pub fn with_padding(self, p: usize) -> Self {
        Conv2dOptions { padding: [p, p], ..self }
    }
    /// The same dilation on both axes.
    pub fn with_dilation(self, d: usize) -> Self {
        Conv2dOptions { dilation: [d, d], ..self }
    }
    cnn_tensor::setters! {
        /// Channel groups.
        with_groups: groups: usize;
        /// The algorithm (see [`ConvAlgorithm`]).
        with_algorithm: algorithm: ConvAlgorithm;
    }

    /// Checks that stride, dilation and groups are positive: the one place
    /// both [`ConvGeometry::new`] and `Conv2d::new` ask.
    ///
    /// # Errors
    /// [`Error::Config`] naming `op` and the settings.
    pub fn check(&self, op: &'static str) -> Result<()> {
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.groups == 0 {
            return Err(Error::config(
                op,
                format!(
                    "stride {:?}, dilation {:?} and groups {} must be positive",
                    self.stride, self.dilation, self.groups
                ),
            ));
        }
        Ok(())
    }

    /// Why `groups` cannot split `c_in` input and `c_out` output channels, if it cannot.
    pub(crate) fn groups_mismatch(&self, c_in: usize, c_out: usize) -> Option<String> {
        (!c_in.is_multiple_of(self.groups) || !c_out.is_multiple_of(self.groups)).then(|| {
            format!(
                "groups={} must divide input channels {c_in} and output channels {c_out}",
                self.groups
            )
        })
    }
}

/// Output length along one axis: `⌊(len + 2·pad − dil·(k − 1) − 1) / stride⌋ + 1`.
/// `None` when the (dilated) kernel does not fit in the padded input, or the
/// kernel, stride or dilation is zero.
pub fn conv_out_len(
    len: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    if kernel == 0 || dilation == 0 {
        return None;
    }
    let span = dilation * (kernel - 1) + 1;
    let padded = len + 2 * pad;
    (padded >= span && stride > 0).then(|| (padded - span) / stride + 1)
}

/// Every size of one convolution, checked once and shared by the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// The options the sizes came from.
    pub opts: Conv2dOptions,
}

impl ConvGeometry {
    /// Checks an input `[n, c_in, h, w]` against a weight `[c_out, c_in/groups, kh, kw]`.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero stride, dilation or group count;
    /// [`Error::Shape`] for zero sizes, channels that do not fit the groups or
    /// the weight, and a kernel larger than the padded input.
    pub fn new(x: &[usize], weight: &[usize], opts: &Conv2dOptions) -> Result<Self> {
        if x.len() != 4 {
            return Err(Error::shape(
                OP,
                format!("input must be 4-D [N, C, H, W], got {}-D {x:?}", x.len()),
            ));
        }
        if weight.len() != 4 {
            return Err(Error::shape(
                OP,
                format!(
                    "weight must be 4-D [out, in/groups, kh, kw], got {}-D {weight:?}",
                    weight.len()
                ),
            ));
        }
        let o = opts;
        o.check(OP)?;
        if x.contains(&0) {
            return Err(Error::shape(OP, format!("input {x:?} has a zero-size dimension")));
        }
        if weight.contains(&0) {
            return Err(Error::shape(OP, format!("weight {weight:?} has a zero-size dimension")));
        }
        let (n, c_in, h, w) = (x[0], x[1], x[2], x[3]);
        let (c_out, cg, kh, kw) = (weight[0], weight[1], weight[2], weight[3]);
        if let Some(msg) = o.groups_mismatch(c_in, c_out) {
            return Err(Error::shape(OP, msg));
        }
        if cg * o.groups != c_in {
            return Err(Error::shape(
                OP,
                format!(
                    "input has {c_in} channels, weight expects {} (groups={})",
                    cg * o.groups,
                    o.groups
                ),
            ));
        }
        let ho = conv_out_len(h, kh, o.stride[0], o.padding[0], o.dilation[0]);
        let wo = conv_out_len(w, kw, o.stride[1], o.padding[1], o.dilation[1]);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            return Err(Error::shape(
                OP,
                format!(
                    "kernel {kh}x{kw} (dilation {:?}) is larger than the padded input {}x{}",
                    o.dilation,
                    h + 2 * o.padding[0],
                    w + 2 * o.padding[1]
                ),
            ));
        };
        Ok(ConvGeometry { n, c_in, h, w, c_out, kh, kw, ho, wo, opts: *opts })
    }

    /// Input channels per group.
    pub fn c_in_g(&self) -> usize {
        self.c_in / self.opts.groups
    }
    /// Output channels per group.
    pub fn c_out_g(&self) -> usize {
        self.c_out / self.opts.groups
    }
    /// Rows of a group's im2col matrix: `c_in/groups · kh · kw`.
    pub fn col_rows(&self) -> usize {
        self.c_in_g() * self.kh * self.kw
    }
    /// Output positions per sample: `ho · wo`.
    pub fn out_area(&self) -> usize {
        self.ho * self.wo
    }
    /// Output shape `[n, c_out, ho, wo]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.c_out, self.ho, self.wo]
    }
    /// Forward multiply-adds times two: `2·n·c_out·ho·wo·(c_in/groups)·kh·kw`.
    pub fn flops(&self) -> u64 {
        2 * (self.n * self.c_out * self.out_area() * self.col_rows()) as u64
    }
    /// Checks an upstream gradient against the output shape.
    ///
    /// # Errors
    /// [`Error::Shape`] naming both shapes.
    pub fn check_dy(&self, dy: &[usize]) -> Result<()> {
        if dy != self.out_shape() {
            return Err(Error::shape(
                OP,
                format!("dy is {dy:?}, expected the output shape {:?}", self.out_shape()),
            ));
        }
        Ok(())
    }

    /// Checks a bias length against the output channels.
    ///
    /// # Errors
    /// [`Error::Shape`] naming both.
    pub fn check_bias(&self, bias_len: Option<usize>) -> Result<()> {
        match bias_len {
            Some(len) if len != self.c_out => Err(Error::shape(
                OP,
                format!("bias has {len} entries, weight has {} output channels", self.c_out),
            )),
            _ => Ok(()),
        }
    }

    /// dx of a stride-1, undilated convolution as a forward convolution of
    /// `dy`: `[N, C_out, Ho, Wo] → [N, C_in, H, W]`, padding `k − 1 − p`, the
    /// kernel as [`ConvGeometry::dx_weight`] gives it. `None` for other strides
    /// or dilations, or padding of `k` or more.
    pub fn dx_as_forward(&self) -> Option<ConvGeometry> {
        let o = self.opts;
        let unit = o.stride == [1, 1] && o.dilation == [1, 1];
        if !unit || o.padding[0] >= self.kh || o.padding[1] >= self.kw {
            return None;
        }
        let padding = [self.kh - 1 - o.padding[0], self.kw - 1 - o.padding[1]];
        Some(ConvGeometry {
            c_in: self.c_out,
            h: self.ho,
            w: self.wo,
            c_out: self.c_in,
            ho: self.h,
            wo: self.w,
            opts: Conv2dOptions { padding, ..o },
            ..*self
        })
    }

    /// The kernel of [`ConvGeometry::dx_as_forward`]: `w'[c, o, i, j] = w[o, c,
    /// kh − 1 − i, kw − 1 − j]` within each group (flipped, channel axes swapped).
    pub fn dx_weight<T: Copy>(&self, w: &[T]) -> Vec<T> {
        let (cg, cog, taps) = (self.c_in_g(), self.c_out_g(), self.kh * self.kw);
        let mut wt = w.to_vec();
        for grp in 0..self.opts.groups {
            for o in 0..cog {
                for c in 0..cg {
                    let src = &w[((grp * cog + o) * cg + c) * taps..][..taps];
                    let dst = &mut wt[((grp * cg + c) * cog + o) * taps..][..taps];
                    dst.iter_mut().zip(src.iter().rev()).for_each(|(d, &s)| *d = s);
                }
            }
        }
        wt
    }

    /// Whether im2col would only copy the input (1x1 kernel, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.opts.stride == [1, 1] && self.opts.padding == [0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_len_matches_pytorch_formula() {
        assert_eq!(conv_out_len(224, 7, 2, 3, 1), Some(112));
        assert_eq!(conv_out_len(13, 5, 2, 2, 2), Some(5));
        assert_eq!(conv_out_len(2, 5, 1, 1, 1), None);
    }

    #[test]
    fn messages_name_expected_and_found() {
        let o = Conv2dOptions::default();
        let e = ConvGeometry::new(&[1, 3, 8, 8], &[4, 4, 3, 3], &o).unwrap_err();
        assert_eq!(e.to_string(), "conv2d: input has 3 channels, weight expects 4 (groups=1)");
        let e = ConvGeometry::new(&[1, 3, 8], &[4, 3, 3, 3], &o).unwrap_err();
        assert!(e.to_string().contains("input must be 4-D"), "{e}");
        let e = ConvGeometry::new(&[1, 4, 8, 8], &[6, 2, 3, 3], &o.with_groups(3)).unwrap_err();
        assert!(e.to_string().contains("groups=3 must divide"), "{e}");
        let e = ConvGeometry::new(&[1, 3, 2, 2], &[4, 3, 5, 5], &o.with_padding(1)).unwrap_err();
        assert!(e.to_string().contains("larger than the padded input 4x4"), "{e}");
        let e = ConvGeometry::new(&[0, 3, 8, 8], &[4, 3, 3, 3], &o).unwrap_err();
        assert!(e.to_string().contains("zero-size"), "{e}");
        assert!(ConvGeometry::new(&[1, 3, 8, 8], &[4, 3, 3, 3], &o.with_stride(0)).is_err());
    }
}

#[cfg(test)]
mod dx_tests {
    use super::*;

    #[test]
    fn dx_as_forward_swaps_sizes_and_mirrors_padding() {
        let o = Conv2dOptions::default().with_padding(1).with_groups(2);
        let g = ConvGeometry::new(&[3, 4, 9, 7], &[6, 2, 3, 5], &o).unwrap();
        let t = g.dx_as_forward().unwrap();
        assert_eq!((t.c_in, t.h, t.w, t.c_out, t.ho, t.wo), (6, 9, 5, 4, 9, 7));
        assert_eq!(t.opts.padding, [1, 3]);
        // Kernel [o, c, i, j] → [c, o, 2 − i, 4 − j] within each group.
        let w: Vec<usize> = (0..6 * 2 * 15).collect();
        let wt = g.dx_weight(&w);
        let at = |o: usize, c: usize, i: usize, j: usize| ((o * 2 + c) * 3 + i) * 5 + j;
        let at_t = |c: usize, o: usize, i: usize, j: usize| ((c * 3 + o) * 3 + i) * 5 + j;
        // group 1: output channel 4 (local 1), input channel 3 (local 1).
        assert_eq!(wt[at_t(3, 1, 0, 0)], w[at(4, 1, 2, 4)]);
        for strided in [o.with_stride(2), o.with_dilation(2), o.with_padding(3)] {
            assert!(ConvGeometry::new(&[3, 4, 9, 9], &[6, 2, 3, 3], &strided)
                .unwrap()
                .dx_as_forward()
                .is_none());
        }
    }
}

#[cfg(test)]
mod out_len_tests {
    use super::conv_out_len;

    #[test]
    fn conv_out_len_refuses_zero_sizes() {
        assert_eq!(conv_out_len(8, 3, 1, 1, 1), Some(8));
        assert_eq!(conv_out_len(8, 0, 1, 1, 1), None);
        assert_eq!(conv_out_len(8, 3, 0, 1, 1), None);
        assert_eq!(conv_out_len(8, 3, 1, 1, 0), None);
        assert_eq!(conv_out_len(2, 5, 1, 0, 1), None);
    }
}
