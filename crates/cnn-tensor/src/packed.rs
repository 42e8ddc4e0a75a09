//! GEMM with a left operand packed once and reused: `C ← A·B + β·C`.
//!
//! A convolution multiplies the same weight matrix by one im2col tile after
//! another; matrixmultiply re-packs the weight on every call. Here the weight
//! is packed once ([`PackedLhs`]) and each call only packs its right operand.
//! With f32 at SIMD level AVX-512 the product runs in a register-blocked
//! micro-kernel of `MR × 16·NV` accumulators (the panel shape picked per CPU
//! vendor and per matrix, to waste the least padding); at level AVX2 in its
//! 256-bit twin on `6 × 16` panels (12 accumulators of the 16 registers);
//! on the portable level, and for f64, it is matrixmultiply's GEMM. Each
//! entry of `C` is one chain of fused multiply-adds over `k` in order,
//! whatever the panel or the vector width, so results never depend on how
//! callers split work between threads, and the AVX2 and AVX-512 kernels give
//! the same bits.
//!
//! Under [`Precision::Bf16`](crate::precision::Precision) (a
//! [`with_precision`](crate::precision::with_precision) scope when `A` is
//! packed), f32 products round `A` and `B` to bf16 and sum in f32, each
//! multiply-add's subnormal result flushed: [`crate::bf16::gemm_reference`]
//! bit for bit, at every SIMD level (the same panels and order of sums,
//! a scalar kernel at the portable level).

use std::ops::Range;

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::{gemm, Error, Float, Result};

/// Depth of one pass over `k`. Measured on 2048² (one thread): 128 → 160
/// GFLOP/s, 256 → 191, 512 → 203, 1024 → 219: fewer passes over `C` beat
/// keeping the right panel in L1. Conv shapes (K ≤ 2304) were indifferent.
pub(crate) const KC: usize = 1024;
/// Rows of `A` per block: `MC × KC` f32 (384 KiB) stays in L2.
const MC: usize = 384;

/// Panel shapes of the micro-kernel on AMD cores (and unknown vendors):
/// `(MR, NV)`, `NR = 16·NV` columns, 24 accumulators each. The first wins
/// ties: 8 x 48 measured fastest on 2048² on the AMD EPYC here (202 GFLOP/s
/// on one core, against 194 for 4 x 96 and 189 for 12 x 32).
const SHAPES_AMD: [(usize, usize); 3] = [(8, 3), (4, 6), (12, 2)];

/// Panel shapes on Intel server cores: two 512-bit FMA ports of 4 cycles
/// latency need 8 independent FMAs in flight, so the first choice has more
/// accumulators (14 x 32: 28) and fewer loads per FMA (16 per 28) than 8 x 48. Not yet measured on an Intel machine (no lent
/// machine in the session that wrote it): `sgemm/panel_*` in benches/conv.rs
/// times every shape, and `CNN_GEMM_PANEL` overrides the choice.
const SHAPES_INTEL: [(usize, usize); 3] = [(14, 2), (8, 3), (6, 4)];

/// Panel shape at SIMD level AVX2: 6 rows × 16 columns, two 256-bit vectors
/// a row, is 12 accumulators, 2 loads of `B` and a broadcast of `A` in the
/// 16 ymm registers (the shape of BLIS's Haswell sgemm kernel).
const SHAPES_AVX2: [(usize, usize); 1] = [(6, 1)];

/// The widest panel of [`PANELS`], in columns.
const MAX_NR: usize = max_over_panels(false);

/// The most accumulators of a panel of [`PANELS`] (`MR·NR`).
pub(crate) const MAX_TILE: usize = max_over_panels(true);

/// The largest `NR` (or `MR·NR` when `tile`) over [`PANELS`], at compile time.
const fn max_over_panels(tile: bool) -> usize {
    let (mut i, mut most) = (0, 0);
    while i < PANELS.len() {
        let (mr, nr) = (PANELS[i].0, 16 * PANELS[i].1);
        let v = if tile { mr * nr } else { nr };
        if v > most {
            most = v;
        }
        i += 1;
    }
    most
}

/// Every panel shape the micro-kernel is compiled for.
pub const PANELS: [(usize, usize); 7] = [(8, 3), (4, 6), (12, 2), (14, 2), (6, 4), (16, 1), (6, 1)];

/// The panel shapes to choose from on this CPU: `CNN_GEMM_PANEL=MRxNR` (one of
/// [`PANELS`], e.g. `8x48`) if set, else the table of the CPU's vendor.
fn shapes() -> &'static [(usize, usize)] {
    static FORCED: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    let forced = crate::switches::GEMM_PANEL.cached(&FORCED, |v| {
        let (m, n) = v.split_once('x')?;
        let (mr, nr) = (m.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?);
        (nr % 16 == 0 && PANELS.contains(&(mr, nr / 16))).then_some((mr, nr / 16))
    });
    static ONE: std::sync::OnceLock<[(usize, usize); 1]> = std::sync::OnceLock::new();
    match forced {
        Some(shape) => ONE.get_or_init(|| [shape]),
        None if crate::simd::level() < crate::simd::SimdLevel::Avx512 => &SHAPES_AVX2,
        None => match crate::simd::vendor() {
            crate::simd::CpuVendor::Intel => &SHAPES_INTEL,
            _ => &SHAPES_AMD,
        },
    }
}

/// A left operand `A: [m, k]`, packed for repeated products `A·B`.
#[derive(Debug, Clone)]
pub struct PackedLhs<T: Float> {
    m: usize,
    k: usize,
    /// `(MR, NV)` of the micro-kernel, when it is used.
    shape: Option<(usize, usize)>,
    /// Panels of `MR` rows: `data[((p / MR)·k + kk)·MR + p % MR] = A[p, kk]`, zero-padded rows.
    data: Vec<T>,
    /// The matrix itself, for the matrixmultiply path (empty when the micro-kernel runs).
    plain: Array2<T>,
    /// Whether products round to bf16 (f32 packed under a bf16 scope): then
    /// `data` holds the rounded values and every `B` is rounded as it is packed.
    bf16: bool,
    /// `data` as bf16 pairs for the AVX512-BF16 kernel (`crate::packed_pairs`),
    /// when a bf16 operand is packed where that kernel runs; else empty.
    pub(crate) pairs: Vec<u32>,
    /// The smallest biased exponent of `data`'s nonzero values
    /// ([`crate::bf16::round_and_min_exponent`]): with `B`'s, whether the
    /// flushing kernel is needed ([`crate::bf16::needs_flush`]). 255 for f32
    /// operands.
    min_exp: u32,
}

/// Whether `T` is f32 and a micro-kernel may run: the SIMD level
/// ([`crate::simd::level`], capped by `CNN_SIMD`) is AVX2 (with FMA) or AVX-512.
fn kernel_f32<T: Float>() -> bool {
    cfg!(target_arch = "x86_64")
        && T::as_f32(&[]).is_some()
        && crate::simd::level() >= crate::simd::SimdLevel::Avx2
}

/// Whether a product packed now rounds to bf16: `T` is f32 under a bf16
/// scope. Every level runs it (a scalar kernel at the portable level); on a
/// CPU other than x86-64 products stay f32.
fn packs_bf16<T: Float>() -> bool {
    cfg!(target_arch = "x86_64") && crate::precision::bf16_for::<T>()
}

/// Whether the micro-kernel runs for `T` (f32 at AVX2 or AVX-512, or any
/// level in bf16).
fn kernel_for<T: Float>(bf16: bool) -> bool {
    bf16 || kernel_f32::<T>()
}

/// `values` rounded to bf16 in place, when `T` is f32 (the packed operands
/// of a bf16 product), and the smallest exponent of the rounded values
/// (255 when `T` is not f32): one pass, while the values are in cache.
fn round_for_bf16<T: Float>(values: &mut [T]) -> u32 {
    T::as_f32_mut(values).map_or(255, crate::bf16::round_and_min_exponent)
}

#[cfg(test)]
thread_local! {
    /// Tests: pack bf16 operands as pairs below AVX512-BF16 too, so that the
    /// pair kernel's data path runs (in its scalar twin) on any CPU.
    pub(crate) static PAIRS_EVERYWHERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `data` (rounded, in panels of `mr` rows over `k`) as pairs, when the
/// AVX512-BF16 kernel runs here; else empty.
fn pairs_of<T: Float>(data: &[T], k: usize, mr: usize) -> Vec<u32> {
    let native = crate::simd::level() >= crate::simd::SimdLevel::Avx512Bf16;
    #[cfg(test)]
    let native = native || PAIRS_EVERYWHERE.with(std::cell::Cell::get);
    match T::as_f32(data) {
        #[cfg(target_arch = "x86_64")]
        Some(d) if native && k > 0 => crate::packed_pairs::lhs_pairs(d, k, mr),
        _ => Vec::new(),
    }
}

impl<T: Float> PackedLhs<T> {
    /// Packs `a` for products with right operands of about `typical_n` columns
    /// (the panel shape is chosen to waste the least padding on `m × typical_n`).
    pub fn new(a: ArrayView2<'_, T>, typical_n: usize) -> Self {
        Self::pack(a, Self::panel_for(a.nrows(), typical_n))
    }

    /// The panel `(MR, NV)` that [`PackedLhs::new`] chooses for an `m`-row
    /// matrix and right operands of about `typical_n` columns (the one that
    /// wastes the least padding), or `None` when products run in matrixmultiply.
    pub fn panel_for(m: usize, typical_n: usize) -> Option<(usize, usize)> {
        kernel_for::<T>(packs_bf16::<T>()).then(|| {
            let padded = |(mr, nv): (usize, usize)| {
                m.div_ceil(mr) * mr * typical_n.max(1).div_ceil(16 * nv) * 16 * nv
            };
            shapes().iter().copied().min_by_key(|&s| padded(s)).unwrap_or((8, 3))
        })
    }

    /// Where `A[p, kk]` of a `k`-column matrix lives in the packed data of
    /// panels of `mr` rows: `((p / mr)·k + kk)·mr + p % mr`. The data holds
    /// `⌈m / mr⌉·mr·k` values, zero in the padding rows.
    pub fn packed_index(p: usize, kk: usize, k: usize, mr: usize) -> usize {
        ((p / mr) * k + kk) * mr + p % mr
    }

    /// A packed `m × k` operand from data already laid out for `panel` (see
    /// [`PackedLhs::packed_index`]): for a producer that can write the panels
    /// directly, instead of a matrix that [`PackedLhs::new`] then copies.
    ///
    /// # Errors
    /// [`Error::Config`] when the micro-kernel does not run for `T` here or
    /// `panel` is not one of [`PANELS`]; [`Error::Shape`] when `data` has the
    /// wrong length.
    pub fn from_panels(m: usize, k: usize, panel: (usize, usize), data: Vec<T>) -> Result<Self> {
        let bf16 = packs_bf16::<T>();
        if !kernel_for::<T>(bf16) || !PANELS.contains(&panel) {
            return Err(Error::config(
                "gemm_packed",
                format!("panel {panel:?}: the micro-kernel does not run here or has no such panel"),
            ));
        }
        let want = m.div_ceil(panel.0) * panel.0 * k;
        if data.len() != want {
            return Err(Error::shape(
                "gemm_packed",
                format!(
                    "packed data has {} values, a {m}x{k} matrix in panels of {} rows needs {want}",
                    data.len(),
                    panel.0
                ),
            ));
        }
        Ok(Self::with_data(m, k, Some(panel), data, Array2::zeros((0, 0)), bf16))
    }

    /// Packs `a` for the micro-kernel panel `(MR, NV)` (one of [`PANELS`]),
    /// whatever the CPU's table says: for benchmarks that compare panel shapes.
    /// Without the micro-kernel (f64, or SIMD level below AVX-512) the shape is ignored.
    ///
    /// # Errors
    /// [`Error::Config`] for a shape not in [`PANELS`].
    pub fn with_panel(a: ArrayView2<'_, T>, panel: (usize, usize)) -> Result<Self> {
        if !PANELS.contains(&panel) {
            return Err(Error::config(
                "gemm_packed",
                format!("panel {panel:?} is not one of {PANELS:?} (MR, NR/16)"),
            ));
        }
        Ok(Self::pack(a, kernel_for::<T>(packs_bf16::<T>()).then_some(panel)))
    }

    /// Packs `a` in panels of `shape`, rounded to bf16 under a bf16 scope.
    fn pack(a: ArrayView2<'_, T>, shape: Option<(usize, usize)>) -> Self {
        let (m, k) = a.dim();
        let mut data = Vec::new();
        if let Some((mr, _)) = shape {
            data = vec![T::zero(); m.div_ceil(mr) * mr * k];
            for (p, row) in a.rows().into_iter().enumerate() {
                for (kk, &v) in row.iter().enumerate() {
                    data[Self::packed_index(p, kk, k, mr)] = v;
                }
            }
        }
        let plain = if shape.is_some() { Array2::zeros((0, 0)) } else { a.to_owned() };
        Self::with_data(m, k, shape, data, plain, shape.is_some() && packs_bf16::<T>())
    }

    /// The operand from its panels (or its plain matrix): for a bf16
    /// product, `data` rounded, its smallest exponent and its pairs (where
    /// the AVX512-BF16 kernel runs) are derived here, once.
    fn with_data(
        m: usize,
        k: usize,
        shape: Option<(usize, usize)>,
        mut data: Vec<T>,
        plain: Array2<T>,
        bf16: bool,
    ) -> Self {
        let (mut pairs, mut min_exp) = (Vec::new(), 255);
        if let (Some((mr, _)), true) = (shape, bf16) {
            min_exp = round_for_bf16(&mut data);
            pairs = pairs_of(&data, k, mr);
        }
        PackedLhs { m, k, shape, data, plain, bf16, pairs, min_exp }
    }

    /// Whether products with `T` run in this crate's micro-kernel (f32 at SIMD
    /// level AVX2 or AVX-512, or f32 at any level under a bf16 scope) rather
    /// than in matrixmultiply.
    pub fn uses_kernel() -> bool {
        kernel_for::<T>(packs_bf16::<T>())
    }

    /// The precision of this operand's products: bf16 when it was packed
    /// (as f32) under a bf16 scope, else f32.
    pub fn precision(&self) -> crate::precision::Precision {
        if self.bf16 {
            crate::precision::Precision::Bf16
        } else {
            crate::precision::Precision::F32
        }
    }

    /// Rows of `A`.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Columns of `A`.
    pub fn cols(&self) -> usize {
        self.k
    }
}

impl<T: Float> PackedLhs<T> {
    /// The layout in which [`gemm_prepacked`] reads a right operand of `n`
    /// columns, when products run in the micro-kernel (`None` on the
    /// matrixmultiply path): for a producer that writes `B` straight into
    /// it (an im2col into panels) instead of a matrix that is then packed.
    pub fn rhs_panels(&self, n: usize) -> Option<RhsPanels> {
        self.shape.map(|(_, nv)| RhsPanels { k: self.k, n, nr: 16 * nv })
    }
}

/// Where each value of a right operand `B: [k, n]` lives once packed for
/// the micro-kernel ([`PackedLhs::rhs_panels`]): slabs of up to `KC` rows of
/// `k`, each a run of panels of `NR` columns, a panel `kc` rows of `NR`
/// contiguous values. Columns past `n` (up to a whole panel) must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RhsPanels {
    k: usize,
    n: usize,
    nr: usize,
}

impl RhsPanels {
    /// Values the packed operand holds: `k · ⌈n / NR⌉ · NR`.
    #[inline]
    pub fn len(&self) -> usize {
        self.k * self.padded_cols()
    }

    /// Whether the operand has no values (`k` or `n` is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Columns including the zero padding of the last panel: `⌈n / NR⌉ · NR`.
    #[inline]
    pub fn padded_cols(&self) -> usize {
        self.n.div_ceil(self.nr) * self.nr
    }

    /// `NR`, the width of a panel: a multiple of 16, so the 16 values
    /// `B[kk, col..col + 16]` of a `col` that is a multiple of 16 are contiguous.
    #[inline]
    pub fn width(&self) -> usize {
        self.nr
    }

    /// The rows `kk0 .. kk0 + kc` of the slab that holds row `kk`, and where it starts.
    #[inline]
    pub fn slab(&self, kk: usize) -> (usize, usize, usize) {
        let k0 = kk / KC * KC;
        (k0, KC.min(self.k - k0), k0 * self.padded_cols())
    }

    /// Index of `B[kk, col]` in the packed values (`col < ⌈n / NR⌉ · NR`).
    #[inline]
    pub fn index(&self, kk: usize, col: usize) -> usize {
        let (k0, kc, start) = self.slab(kk);
        start + ((col / self.nr) * kc + (kk - k0)) * self.nr + col % self.nr
    }
}

/// `C ← A·B + β·C` with `B` already packed in the layout of
/// [`PackedLhs::rhs_panels`] (`packed`, at least [`RhsPanels::len`] values):
/// the same numbers as [`gemm_packed`] on the matrix `B`.
///
/// # Errors
/// [`Error::Config`] when products with `a` do not run in the micro-kernel;
/// [`Error::Shape`] when `packed` is too short or `c` is not `[a.rows(), n]`.
pub fn gemm_prepacked<T: Float>(
    a: &PackedLhs<T>,
    packed: &[T],
    n: usize,
    beta: T,
    c: ArrayViewMut2<'_, T>,
) -> Result<()> {
    let Some(layout) = a.rhs_panels(n) else {
        return Err(Error::config("gemm_prepacked", "the micro-kernel does not run for this A"));
    };
    if packed.len() < layout.len() || c.dim() != (a.m, n) {
        return Err(Error::shape(
            "gemm_prepacked",
            format!(
                "A is {}x{}, B packed has {} values (needs {}) for {n} columns, C is {:?}",
                a.m,
                a.k,
                packed.len(),
                layout.len(),
                c.dim()
            ),
        ));
    }
    if a.bf16 {
        // The producer wrote f32 values: round a copy, as packing would have.
        let mut rounded = crate::scratch::Scratch::<T>::take(layout.len());
        let buf = rounded.vec_mut();
        buf[..layout.len()].copy_from_slice(&packed[..layout.len()]);
        let b_exp = round_for_bf16(&mut buf[..layout.len()]);
        multiply_prepacked(a, 0..a.m, (buf, b_exp), (a.k, n), beta, c);
        return Ok(());
    }
    multiply_prepacked(a, 0..a.m, (packed, 255), (a.k, n), beta, c);
    Ok(())
}

/// `C ← A·B + β·C` where the right operand `B: [k, n]` is produced one
/// panel at a time, just before the micro-kernel reads it:
/// `fill(panel, k0, kc, buf)` writes rows `k0 .. k0 + kc` of columns
/// `panel·NR .. (panel + 1)·NR` of `B` into `buf` (`kc·NR` values, row by
/// row: `buf[r·NR + l] = B[k0 + r, panel·NR + l]`, zero past column `n`),
/// with `NR` = [`RhsPanels::width`] of [`PackedLhs::rhs_panels`]. A panel
/// goes from `fill` to the kernel through L1: no packed copy of the whole
/// of `B` passes through L2 (an im2col fused into the product). The same
/// numbers as [`gemm_prepacked`] on the same `B`.
///
/// # Errors
/// As [`gemm_prepacked`], but for `packed`.
pub fn gemm_panels_by<T: Float>(
    a: &PackedLhs<T>,
    n: usize,
    beta: T,
    c: ArrayViewMut2<'_, T>,
    fill: impl FnMut(usize, usize, usize, &mut [T]),
) -> Result<()> {
    let layout = panels_for_product(a, n, &c)?;
    let mut fill = fill;
    if a.k == 0 {
        empty_product(beta, c);
        return Ok(());
    }
    if a.m > MC {
        // Row blocks of A would each need every panel: produce all of B first.
        let mut packed = crate::scratch::Scratch::<T>::take(layout.len());
        let buf = packed.vec_mut();
        let panels = layout.padded_cols() / layout.width();
        let (mut k0, mut b_exp) = (0, 255);
        while k0 < a.k {
            let (_, kc, start) = layout.slab(k0);
            let size = kc * layout.width();
            for (panel, part) in buf[start..start + size * panels].chunks_mut(size).enumerate() {
                fill(panel, k0, kc, part);
                if a.bf16 {
                    b_exp = b_exp.min(round_for_bf16(part));
                }
            }
            k0 += kc;
        }
        multiply_prepacked(a, 0..a.m, (buf, b_exp), (a.k, n), beta, c);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if let Some((mr, nv)) = a.shape {
        let mut c = c;
        if beta != T::zero() && beta != T::one() {
            c.mapv_inplace(|v| v * beta);
        }
        // SAFETY: `shape` is Some only for f32, at SIMD level AVX2 or AVX-512 or in bf16
        // (checked in `new`).
        unsafe { x86::gemm_f32_by(a, n, beta != T::zero(), c, mr, nv, &mut fill) };
    }
    Ok(())
}

/// The panel layout of a product `A·B` (`B` with `n` columns) into `c`, made
/// panel by panel: the checks of [`gemm_panels_by`] and its split twin.
fn panels_for_product<T: Float>(
    a: &PackedLhs<T>,
    n: usize,
    c: &ArrayViewMut2<'_, T>,
) -> Result<RhsPanels> {
    let Some(layout) = a.rhs_panels(n) else {
        return Err(Error::config("gemm_panels_by", "the micro-kernel does not run for this A"));
    };
    if c.dim() != (a.m, n) {
        return Err(Error::shape(
            "gemm_panels_by",
            format!("A is {}x{}, B has {n} columns, C is {:?}", a.m, a.k, c.dim()),
        ));
    }
    Ok(layout)
}

/// `C ← A·B + β·C` with `A` packed; `scratch` holds the packed `B` between calls.
///
/// # Errors
/// [`Error::Shape`] when the dimensions disagree.
pub fn gemm_packed<T: Float>(
    a: &PackedLhs<T>,
    b: ArrayView2<'_, T>,
    beta: T,
    c: ArrayViewMut2<'_, T>,
    scratch: &mut Vec<T>,
) -> Result<()> {
    check_dims(a, &b, &c)?;
    multiply(a, 0..a.m, b, beta, c, scratch);
    Ok(())
}

/// How [`gemm_packed_split`] cuts one product into tasks: `rows × cols`
/// blocks of `C`, each computed whole by one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmSplit {
    /// Blocks of rows of `C` (rounded to the micro-kernel's panels of rows).
    pub rows: usize,
    /// Blocks of columns of `C` (whole panels of the micro-kernel's width,
    /// so that no block computes padding a whole product would not).
    pub cols: usize,
}

impl GemmSplit {
    /// One task: the whole product.
    pub const ONE: GemmSplit = GemmSplit { rows: 1, cols: 1 };

    /// The tasks of an `m × n` product: `(rows, cols)` of each block of `C`,
    /// for panels of `mr` rows and `nr` columns, row blocks first.
    pub fn blocks(&self, m: usize, n: usize, (mr, nr): (usize, usize)) -> Vec<(usize, usize)> {
        let rows = split_ranges(m.div_ceil(mr), self.rows, 1);
        let cols = split_ranges(n, self.cols, nr);
        rows.iter()
            .flat_map(|r| {
                let m_r = (r.end * mr).min(m) - r.start * mr;
                cols.iter().map(move |c| (m_r, c.len()))
            })
            .collect()
    }
}

/// [`gemm_panels_by`] with `C`'s columns cut into up to `parts` ranges of
/// whole panels (as [`GemmSplit`]'s column blocks), one task each (rayon):
/// `fill` is asked for each range's panels by their index in the whole of
/// `B`. Every entry of `C` is summed as in one task: the same bits for any
/// `parts` and thread count.
///
/// # Errors
/// As [`gemm_panels_by`].
pub fn gemm_panels_by_split<T: Float>(
    a: &PackedLhs<T>,
    n: usize,
    beta: T,
    c: ArrayViewMut2<'_, T>,
    parts: usize,
    fill: impl Fn(usize, usize, usize, &mut [T]) + Sync,
) -> Result<()> {
    let layout = panels_for_product(a, n, &c)?;
    let nr = layout.width();
    let ranges = split_ranges(n, parts, nr);
    if ranges.len() <= 1 {
        return gemm_panels_by(a, n, beta, c, &fill);
    }
    column_views(c, ranges).into_par_iter().try_for_each(|(cols, c_part)| {
        let first = cols.start / nr;
        gemm_panels_by(a, cols.len(), beta, c_part, |panel, k0, kc, buf| {
            fill(first + panel, k0, kc, buf)
        })
    })
}

/// `0..len` cut into at most `parts` ranges of about equal length, each a
/// multiple of `unit` except the last; empty ranges are left out.
fn split_ranges(len: usize, parts: usize, unit: usize) -> Vec<Range<usize>> {
    let units = len.div_ceil(unit);
    let parts = parts.clamp(1, units.max(1));
    (0..parts)
        .map(|p| ((p * units / parts) * unit).min(len)..(((p + 1) * units / parts) * unit).min(len))
        .filter(|r| !r.is_empty())
        .collect()
}

/// `c` cut into the consecutive column `ranges` (from 0, as [`split_ranges`]
/// gives them): one view per range, for a task each.
fn column_views<'a, T>(
    c: ArrayViewMut2<'a, T>,
    ranges: Vec<Range<usize>>,
) -> Vec<(Range<usize>, ArrayViewMut2<'a, T>)> {
    let (mut rest, mut done) = (c, 0);
    let mut views = Vec::with_capacity(ranges.len());
    for cols in ranges {
        let (left, right) = rest.split_at(Axis(1), cols.end - done);
        views.push((cols.clone(), left));
        (rest, done) = (right, cols.end);
    }
    views
}

/// [`gemm_packed`] cut into `split.rows × split.cols` tasks run in parallel
/// (rayon). Each column block packs its part of `B` once and its row blocks
/// share it. Each entry of `C` is still summed over `k` in order by one task,
/// so the result is bitwise the same for every split and thread count.
///
/// # Errors
/// [`Error::Shape`] when the dimensions disagree.
pub fn gemm_packed_split<T: Float>(
    a: &PackedLhs<T>,
    b: ArrayView2<'_, T>,
    beta: T,
    c: ArrayViewMut2<'_, T>,
    split: GemmSplit,
) -> Result<()> {
    check_dims(a, &b, &c)?;
    let mr = a.shape.map_or(1, |(mr, _)| mr);
    let row_blocks: Vec<Range<usize>> = split_ranges(a.m.div_ceil(mr), split.rows, 1)
        .into_iter()
        .map(|r| r.start * mr..(r.end * mr).min(a.m))
        .collect();
    let nr = a.shape.map_or(16, |(_, nv)| 16 * nv);
    let col_views = column_views(c, split_ranges(b.ncols(), split.cols, nr));
    col_views.into_par_iter().for_each(|(cols, c_cols)| {
        let b_cols = b.slice(s![.., cols]);
        let mut row_views = Vec::new();
        let mut rest = c_cols;
        for rows in &row_blocks {
            let (top, bottom) = rest.split_at(Axis(0), rows.len());
            row_views.push((rows.clone(), top));
            rest = bottom;
        }
        // Pack this block's columns of B once for all its row blocks.
        with_pack_buffer(a, &b_cols, |buf| {
            let b_exp = pack_rhs_for(a, b_cols, buf);
            let packed: &[T] = buf;
            row_views.into_par_iter().for_each(|(rows, c_block)| {
                multiply_packed(a, rows, (packed, b_exp), b_cols, beta, c_block);
            });
        });
    });
    Ok(())
}

fn check_dims<T: Float>(
    a: &PackedLhs<T>,
    b: &ArrayView2<'_, T>,
    c: &ArrayViewMut2<'_, T>,
) -> Result<()> {
    let (k, n) = b.dim();
    if k != a.k || c.dim() != (a.m, n) {
        return Err(Error::shape(
            "gemm_packed",
            format!("A is {}x{}, B is {k}x{n}, C is {:?}", a.m, a.k, c.dim()),
        ));
    }
    Ok(())
}

/// Runs `f` with a buffer from this thread's scratch pool large enough to
/// pack `b` for `a` (kept between calls: no fresh pages per product).
fn with_pack_buffer<T: Float, R>(
    a: &PackedLhs<T>,
    b: &ArrayView2<'_, T>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    let (k, n) = b.dim();
    let len = a.shape.map_or(0, |(_, nv)| k * n.div_ceil(16 * nv) * 16 * nv);
    let mut buf = crate::scratch::Scratch::<T>::take(len);
    f(buf.vec_mut())
}

/// Packs `b` for `a`'s micro-kernel into `buf` (nothing on the matrixmultiply
/// path); for a bf16 product rounds it and returns the smallest exponent of
/// its values ([`round_for_bf16`]), else 255.
fn pack_rhs_for<T: Float>(a: &PackedLhs<T>, b: ArrayView2<'_, T>, buf: &mut Vec<T>) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if let Some((_, nv)) = a.shape {
        if !a.bf16 {
            x86::pack_all(b, 16 * nv, buf, &mut |_: &mut [T]| {});
            return 255;
        }
        // Rounded, and the smallest exponent found, part by part while in cache.
        let mut exp = 255;
        let mut finish = |part: &mut [T]| exp = exp.min(round_for_bf16(part));
        x86::pack_all(b, 16 * nv, buf, &mut finish);
        return exp;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (a, b, buf);
    255
}

/// `C ← A[rows]·B + β·C` for rows `rows` of `A` (whole panels, or up to the
/// end), `c` being those rows of the product; `scratch` holds packed `B`.
fn multiply<T: Float>(
    a: &PackedLhs<T>,
    rows: Range<usize>,
    b: ArrayView2<'_, T>,
    beta: T,
    c: ArrayViewMut2<'_, T>,
    scratch: &mut Vec<T>,
) {
    let b_exp = pack_rhs_for(a, b, scratch);
    multiply_packed(a, rows, (scratch, b_exp), b, beta, c);
}

/// `C ← A[rows]·B + β·C` with `B` already packed in `packed` by
/// [`pack_rhs_for`] (with the exponent it returned).
fn multiply_packed<T: Float>(
    a: &PackedLhs<T>,
    rows: Range<usize>,
    packed: (&[T], u32),
    b: ArrayView2<'_, T>,
    beta: T,
    c: ArrayViewMut2<'_, T>,
) {
    if a.shape.is_some() {
        multiply_prepacked(a, rows, packed, b.dim(), beta, c);
    } else {
        // An operand packed in f32 stays f32 under a bf16 scope.
        crate::precision::with_precision(crate::precision::Precision::F32, || {
            gemm(T::one(), a.plain.slice(s![rows, ..]), b, beta, c)
        })
        .expect("dimensions checked by the caller");
    }
}

/// `C ← β·C`, the product of an empty shared axis (`k = 0`); `C` is not
/// read when `β = 0` (it may hold NaN).
fn empty_product<T: Float>(beta: T, mut c: ArrayViewMut2<'_, T>) {
    if beta == T::zero() {
        c.fill(T::zero());
    } else {
        c.mapv_inplace(|v| v * beta);
    }
}

/// `C ← A[rows]·B + β·C` in the micro-kernel, `B` (`k × n`) packed in
/// `packed`, with the smallest exponent of its values ([`round_for_bf16`];
/// 255 for an f32 product).
fn multiply_prepacked<T: Float>(
    a: &PackedLhs<T>,
    rows: Range<usize>,
    (packed, b_exp): (&[T], u32),
    (k, n): (usize, usize),
    beta: T,
    c: ArrayViewMut2<'_, T>,
) {
    match a.shape {
        #[cfg(target_arch = "x86_64")]
        Some(_) if k == 0 => empty_product(beta, c),
        #[cfg(target_arch = "x86_64")]
        Some((mr, nv)) => {
            let mut c = c;
            if beta != T::zero() && beta != T::one() {
                c.mapv_inplace(|v| v * beta);
            }
            let b = (packed, b_exp);
            // SAFETY: `shape` is Some only for f32, at SIMD level AVX2 or AVX-512 or in bf16
            // (checked in `new`); `packed` holds `B` in this panel's layout (`pack_rhs_for`,
            // or a producer writing `RhsPanels`; its length is asserted in `gemm_f32`).
            unsafe { x86::gemm_f32(a, rows, b, (k, n), beta != T::zero(), c, mr, nv) };
        }
        _ => unreachable!("a packed B exists only for the micro-kernel ({k}x{n}, {})", c.nrows()),
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use ndarray::{ArrayView2, ArrayViewMut2};

    use super::{PackedLhs, KC, MAX_NR, MC};

    use crate::Float;

    /// A slice of `T` known to be `f32` (checked by `kernel_f32` before any call here).
    fn as_f32<T: Float>(s: &[T]) -> &[f32] {
        T::as_f32(s).expect("the micro-kernel runs on f32 only")
    }

    /// `C ← A[rows]·B (+ C when `accumulate`)` for rows `rows` of `A` (starting
    /// on a panel), `c` being those rows; `packed` is `B` (`k × n`) packed by [`pack_all`].
    ///
    /// # Safety
    /// `T` is `f32` and the SIMD level is AVX2 or AVX-512 (the CPU has those), or
    /// `a` is a bf16 operand (any level: the kernel is chosen by `Kind::now`).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_f32<T: Float>(
        a: &PackedLhs<T>,
        rows: std::ops::Range<usize>,
        (packed, b_exp): (&[T], u32),
        (k, n): (usize, usize),
        accumulate: bool,
        mut c: ArrayViewMut2<'_, T>,
        mr: usize,
        nv: usize,
    ) {
        let nr = 16 * nv;
        let panels_n = n.div_ceil(nr);
        let (first, end) = (rows.start / mr, rows.end.div_ceil(mr));
        let per_block = (MC / mr).max(1);
        let (rsc, csc) = (c.strides()[0], c.strides()[1]);
        let c_ptr = c.as_mut_ptr().cast::<f32>();
        let a_data = as_f32(&a.data);
        let b_all = as_f32(packed);
        assert!(b_all.len() >= panels_n * nr * k, "B packed for this product");
        let kind = Kind::now(a).for_rhs(a, b_exp);
        let mut b_pairs = crate::scratch::Scratch::<u32>::take(0);
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let acc = accumulate || k0 > 0;
            let b_data = &b_all[k0 * panels_n * nr..];
            if let Kind::Pairs { .. } = kind {
                let slab = &b_data[..panels_n * kc * nr];
                crate::packed_pairs::rhs_pairs(slab, panels_n, kc, nr, b_pairs.vec_mut());
            }
            // Blocks of MC rows of A (kept in L2) against every right panel (kept in L1).
            for i0 in (first..end).step_by(per_block) {
                for j in 0..panels_n {
                    let cols = nr.min(n - j * nr);
                    let bp = &b_data[j * kc * nr..];
                    for i in i0..(i0 + per_block).min(end) {
                        let tile_rows = mr.min(rows.end - i * mr);
                        let ap = &a_data[(i * k + k0) * mr..];
                        // SAFETY: panels hold kc·MR and kc·NR values from these offsets; the
                        // tile of C written is tile_rows x cols inside the view (its row
                        // `i·MR − rows.start` is within the rows this call was given).
                        unsafe {
                            let ct = c_ptr.offset(
                                (i * mr - rows.start) as isize * rsc + (j * nr) as isize * csc,
                            );
                            let tile =
                                Tile { c: ct, rsc, csc, rows: tile_rows, cols, accumulate: acc };
                            if let Kind::Pairs { native } = kind {
                                let kcp = kc.div_ceil(2);
                                let ap = &a.pairs[(i * k.div_ceil(2) + k0 / 2) * mr..];
                                let bp = &b_pairs.vec_mut()[j * kcp * nr..];
                                pairs_for(native, (mr, nv), kcp, ap.as_ptr(), bp.as_ptr(), &tile);
                            } else {
                                micro_for(kind, (mr, nv), kc, ap.as_ptr(), bp.as_ptr(), tile);
                            }
                        }
                    }
                }
            }
            k0 += kc;
        }
    }

    /// `fill(panel, k0, kc, buf)` of [`super::gemm_panels_by`].
    type FillPanel<'f, T> = dyn FnMut(usize, usize, usize, &mut [T]) + 'f;

    /// Which micro-kernel runs a product: the SIMD level's, and whether
    /// each multiply-add's subnormal result is flushed (bf16 products).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        /// bf16 pairs (`crate::packed_pairs`): `VDPBF16PS` when `native`,
        /// else its scalar twin (tests only).
        Pairs { native: bool },
        /// The 512-bit kernel (SIMD level AVX-512 or above).
        Wide { flush: bool },
        /// The 256-bit kernel (AVX2 with FMA).
        Narrow { flush: bool },
        /// Plain loops (the portable level): bf16 products only, as f32
        /// products there run in matrixmultiply.
        Scalar,
    }

    impl Kind {
        /// The kernel for `a`'s products at this thread's SIMD level: bf16
        /// pairs when `a` was packed as pairs, else bf16 products flush.
        fn now<T: Float>(a: &PackedLhs<T>) -> Kind {
            use crate::simd::{level, SimdLevel};
            let bf16 = a.bf16;
            if bf16 && !a.pairs.is_empty() {
                return Kind::Pairs { native: level() >= SimdLevel::Avx512Bf16 };
            }
            match level() {
                l if l >= SimdLevel::Avx512 => Kind::Wide { flush: bf16 },
                SimdLevel::Avx2 => Kind::Narrow { flush: bf16 },
                _ => Kind::Scalar,
            }
        }

        /// This kind for a product of `a` with a right operand whose values'
        /// smallest exponent is `b_exp`: without the flushes when no partial
        /// sum can be subnormal ([`crate::bf16::needs_flush`]), which gives the
        /// same bits faster.
        fn for_rhs<T: Float>(self, a: &PackedLhs<T>, b_exp: u32) -> Kind {
            let flush = || crate::bf16::needs_flush(a.min_exp, b_exp);
            match self {
                Kind::Wide { flush: true } => Kind::Wide { flush: flush() },
                Kind::Narrow { flush: true } => Kind::Narrow { flush: flush() },
                other => other,
            }
        }
    }

    /// The micro-kernel of panel shape `(mr, nv)` of `kind`: every one sums
    /// each entry in the same order (so the 512-bit, 256-bit and scalar
    /// kernels give the same bits).
    ///
    /// # Safety
    /// As [`micro`] for `Wide`, [`micro_avx2`] for `Narrow`, [`micro_scalar`] for `Scalar`.
    #[inline(always)]
    unsafe fn micro_for(
        kind: Kind,
        (mr, nv): (usize, usize),
        kc: usize,
        a: *const f32,
        b: *const f32,
        tile: Tile,
    ) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match kind {
                Kind::Pairs { .. } => unreachable!("pair products run in `pairs_for`"),
                Kind::Scalar => micro_scalar(mr, 16 * nv, kc, a, b, tile),
                Kind::Narrow { flush: false } => match (mr, nv) {
                    (6, 1) => micro_avx2::<6, 1, false>(kc, a, b, tile),
                    _ => micro_avx2_any::<false>(mr, nv, kc, a, b, tile),
                },
                Kind::Narrow { flush: true } => match (mr, nv) {
                    (6, 1) => micro_avx2::<6, 1, true>(kc, a, b, tile),
                    _ => micro_avx2_any::<true>(mr, nv, kc, a, b, tile),
                },
                Kind::Wide { flush: false } => micro_wide::<false>(mr, nv, kc, a, b, tile),
                Kind::Wide { flush: true } => micro_wide::<true>(mr, nv, kc, a, b, tile),
            }
        }
    }

    /// The pair kernel: `VDPBF16PS` when `native`, else its scalar twin.
    ///
    /// # Safety
    /// As [`crate::packed_pairs::micro_pairs`] when `native`, else as
    /// [`crate::packed_pairs::micro_pairs_scalar`].
    #[inline(always)]
    unsafe fn pairs_for(
        native: bool,
        (mr, nv): (usize, usize),
        kcp: usize,
        a: *const u32,
        b: *const u32,
        tile: &Tile,
    ) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if native {
                crate::packed_pairs::micro_pairs((mr, nv), kcp, a, b, tile);
            } else {
                crate::packed_pairs::micro_pairs_scalar(mr, 16 * nv, kcp, a, b, tile);
            }
        }
    }

    /// The 512-bit kernel of panel shape `(mr, nv)`.
    ///
    /// # Safety
    /// As [`micro`].
    #[inline(always)]
    unsafe fn micro_wide<const FLUSH: bool>(
        mr: usize,
        nv: usize,
        kc: usize,
        a: *const f32,
        b: *const f32,
        tile: Tile,
    ) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match (mr, nv) {
                (4, 6) => micro::<4, 6, FLUSH>(kc, a, b, tile),
                (8, 3) => micro::<8, 3, FLUSH>(kc, a, b, tile),
                (14, 2) => micro::<14, 2, FLUSH>(kc, a, b, tile),
                (6, 4) => micro::<6, 4, FLUSH>(kc, a, b, tile),
                (16, 1) => micro::<16, 1, FLUSH>(kc, a, b, tile),
                (12, 2) => micro::<12, 2, FLUSH>(kc, a, b, tile),
                (6, 1) => micro::<6, 1, FLUSH>(kc, a, b, tile),
                // Every shape of PANELS has its arm; `PackedLhs` only ever
                // packs with one of them (checked in `from_panels`).
                _ => unreachable!("panel {mr}x{} is not one of PANELS", 16 * nv),
            }
        }
    }

    /// The scalar twin of the kernels (the portable level's bf16 products):
    /// the same chain of fused multiply-adds per entry, each flushed.
    ///
    /// # Safety
    /// `a` points to `kc·mr` readable floats, `b` to `kc·nr`; `t` as in [`micro`]
    /// with `mr·nr ≤ MAX_TILE` (every panel of `PANELS`).
    #[inline(never)]
    unsafe fn micro_scalar(mr: usize, nr: usize, kc: usize, a: *const f32, b: *const f32, t: Tile) {
        let mut acc = [0f32; super::MAX_TILE];
        let acc = &mut acc[..mr * nr];
        // SAFETY: the panels hold kc·mr and kc·nr floats (the caller's contract).
        let (a, b) = unsafe {
            (std::slice::from_raw_parts(a, kc * mr), std::slice::from_raw_parts(b, kc * nr))
        };
        for (a_p, b_p) in a.chunks_exact(mr).zip(b.chunks_exact(nr)) {
            for (row, &ai) in acc.chunks_exact_mut(nr).zip(a_p) {
                for (s, &bj) in row.iter_mut().zip(b_p) {
                    *s = crate::bf16::flush_subnormal(ai.mul_add(bj, *s));
                }
            }
        }
        // SAFETY: the caller's contract on `t`.
        unsafe { t.store_scalar(acc, nr) };
    }

    /// The 256-bit kernel on a panel shape chosen for AVX-512 (a
    /// `CNN_GEMM_PANEL` or a `PackedLhs::with_panel` at level AVX2): too many
    /// accumulators for 16 registers, so slower, but the same sums.
    ///
    /// # Safety
    /// As [`micro_avx2`].
    #[inline(never)]
    unsafe fn micro_avx2_any<const FLUSH: bool>(
        mr: usize,
        nv: usize,
        kc: usize,
        a: *const f32,
        b: *const f32,
        t: Tile,
    ) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match (mr, nv) {
                (4, 6) => micro_avx2::<4, 6, FLUSH>(kc, a, b, t),
                (8, 3) => micro_avx2::<8, 3, FLUSH>(kc, a, b, t),
                (14, 2) => micro_avx2::<14, 2, FLUSH>(kc, a, b, t),
                (6, 4) => micro_avx2::<6, 4, FLUSH>(kc, a, b, t),
                (16, 1) => micro_avx2::<16, 1, FLUSH>(kc, a, b, t),
                (12, 2) => micro_avx2::<12, 2, FLUSH>(kc, a, b, t),
                _ => unreachable!("panel {mr}x{} is not one of PANELS", 16 * nv),
            }
        }
    }

    /// `C ← A·B (+ C when `accumulate`)` for all of A's rows (at most `MC`:
    /// one row block), each panel of `B` (`k × n`) written by `fill` into a
    /// buffer of this thread's pool just before the row panels read it.
    /// The same order of sums per entry of C as [`gemm_f32`] (slab by slab).
    ///
    /// # Safety
    /// As [`gemm_f32`]; `a.rows() ≤ MC`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_f32_by<T: Float>(
        a: &PackedLhs<T>,
        n: usize,
        accumulate: bool,
        mut c: ArrayViewMut2<'_, T>,
        mr: usize,
        nv: usize,
        fill: &mut FillPanel<'_, T>,
    ) {
        let (k, nr) = (a.k, 16 * nv);
        let panels_n = n.div_ceil(nr);
        let row_panels = a.m.div_ceil(mr);
        let (rsc, csc) = (c.strides()[0], c.strides()[1]);
        let c_ptr = c.as_mut_ptr().cast::<f32>();
        let a_data = as_f32(&a.data);
        let mut buf = crate::scratch::Scratch::<T>::take(KC.min(k) * nr);
        let kind = Kind::now(a);
        let mut b_pairs = crate::scratch::Scratch::<u32>::take(0);
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let acc = accumulate || k0 > 0;
            for j in 0..panels_n {
                let cols = nr.min(n - j * nr);
                let panel = &mut buf.vec_mut()[..kc * nr];
                fill(j, k0, kc, panel);
                let b_exp = if a.bf16 { super::round_for_bf16(panel) } else { 255 };
                let bp = as_f32(panel);
                if let Kind::Pairs { .. } = kind {
                    crate::packed_pairs::rhs_pairs(bp, 1, kc, nr, b_pairs.vec_mut());
                }
                let kind = kind.for_rhs(a, b_exp);
                for i in 0..row_panels {
                    let tile_rows = mr.min(a.m - i * mr);
                    let ap = &a_data[(i * k + k0) * mr..];
                    // SAFETY: the A panel holds kc·MR values from `ap` (or ⌈kc/2⌉·MR
                    // pairs), the B panel kc·NR (or ⌈kc/2⌉·NR pairs); the tile of C
                    // (tile_rows x cols from row i·MR, column j·NR) lies inside the
                    // view, which is a.rows() x n.
                    unsafe {
                        let ct = c_ptr.offset((i * mr) as isize * rsc + (j * nr) as isize * csc);
                        let tile = Tile { c: ct, rsc, csc, rows: tile_rows, cols, accumulate: acc };
                        if let Kind::Pairs { native } = kind {
                            let ap = &a.pairs[(i * k.div_ceil(2) + k0 / 2) * mr..];
                            let bp = b_pairs.vec_mut().as_ptr();
                            pairs_for(native, (mr, nv), kc.div_ceil(2), ap.as_ptr(), bp, &tile);
                        } else {
                            micro_for(kind, (mr, nv), kc, ap.as_ptr(), bp.as_ptr(), tile);
                        }
                    }
                }
            }
            k0 += kc;
        }
    }

    /// `B` packed slab by slab of `KC` rows: the slab of rows `k0..k0 + kc`
    /// starts at `k0·⌈n/NR⌉·NR` and holds panel `j` as `kc` rows of `NR` columns.
    ///
    /// `finish` is called on every packed part while it is still in cache
    /// (each panel, or each slab): bf16 products round there.
    pub(super) fn pack_all<T: Float>(
        b: ArrayView2<'_, T>,
        nr: usize,
        out: &mut Vec<T>,
        finish: &mut impl FnMut(&mut [T]),
    ) {
        let (k, n) = b.dim();
        let width = n.div_ceil(nr) * nr;
        if out.len() < k * width {
            out.resize(k * width, T::zero());
        }
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let slab = &mut out[k0 * width..(k0 + kc) * width];
            pack_rhs(b.slice(ndarray::s![k0..k0 + kc, ..]), nr, slab, finish);
            k0 += kc;
        }
    }

    /// `dst[(j·kc + kk)·NR + l] = b[kk, j·NR + l]`, zero past the last column;
    /// then `finish` on each panel (columns of `B` contiguous) or on the slab.
    fn pack_rhs<T: Float>(
        b: ArrayView2<'_, T>,
        nr: usize,
        scratch: &mut [T],
        finish: &mut impl FnMut(&mut [T]),
    ) {
        let (kc, n) = b.dim();
        let panels_n = n.div_ceil(nr);
        if b.strides()[0] == 1 && kc > 1 {
            // Each column of `B` is contiguous (`B` is the transpose of a
            // row-major matrix, or a slab of one: `gemm_nt`'s `Bᵀ`, a weight
            // gradient's im2col rows): read each column as the run it is.
            for j in 0..panels_n {
                let panel = &mut scratch[j * kc * nr..(j + 1) * kc * nr];
                let cols = nr.min(n - j * nr);
                // The panel's columns, each a contiguous run of `kc` values
                // (on the stack: no allocation per panel).
                let mut runs: [&[T]; MAX_NR] = [&[]; MAX_NR];
                for (l, run) in runs.iter_mut().enumerate().take(cols) {
                    *run = b.column(j * nr + l).to_slice().expect("columns of unit stride");
                }
                let runs = &runs[..cols];
                // Blocks of 8 rows: 8 contiguous values of each column in,
                // 8 panel rows out (a transpose the compiler keeps in registers).
                const R: usize = 8;
                let mut rows = panel.chunks_exact_mut(R * nr);
                for (blk, out) in (&mut rows).enumerate() {
                    let mut tile = [[T::zero(); R]; MAX_NR];
                    for (t, run) in tile.iter_mut().zip(runs) {
                        *t = *<&[T; R]>::try_from(&run[blk * R..blk * R + R]).expect("R values");
                    }
                    for (r, row) in out.chunks_exact_mut(nr).enumerate() {
                        for (d, t) in row.iter_mut().zip(&tile) {
                            *d = t[r];
                        }
                        row[cols..].fill(T::zero());
                    }
                }
                let done = kc / R * R;
                for (kk, row) in rows.into_remainder().chunks_exact_mut(nr).enumerate() {
                    for (d, run) in row.iter_mut().zip(runs) {
                        *d = run[done + kk];
                    }
                    row[cols..].fill(T::zero());
                }
                finish(panel);
            }
            return;
        }
        for (kk, row) in b.rows().into_iter().enumerate() {
            for j in 0..panels_n {
                let dst = &mut scratch[(j * kc + kk) * nr..(j * kc + kk + 1) * nr];
                let start = j * nr;
                let width = nr.min(n - start);
                match row.as_slice() {
                    // A whole panel row in copies of 16 values the compiler
                    // knows the length of (vector moves; a `memmove` call per
                    // row of a 16-wide panel cost 8% of a Winograd forward).
                    Some(r) if width == nr => {
                        for (d, s) in dst.chunks_exact_mut(16).zip(r[start..].chunks_exact(16)) {
                            let d: &mut [T; 16] = d.try_into().expect("16 values");
                            *d = *<&[T; 16]>::try_from(s).expect("16 values");
                        }
                    }
                    Some(r) => dst[..width].copy_from_slice(&r[start..start + width]),
                    None => {
                        for (d, s) in dst[..width]
                            .iter_mut()
                            .zip(row.slice(ndarray::s![start..start + width]))
                        {
                            *d = *s;
                        }
                    }
                }
                dst[width..].fill(T::zero());
            }
        }
        finish(&mut scratch[..kc * panels_n * nr]);
    }

    /// Where a micro-tile goes in `C`.
    pub(crate) struct Tile {
        c: *mut f32,
        rsc: isize,
        csc: isize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    }

    impl Tile {
        /// Stores (or adds, when accumulating) the first `rows × cols` of
        /// `acc`, a row-major `MR × nr` tile.
        ///
        /// # Safety
        /// The tile addresses a writable `rows × cols` block of `C` (strides
        /// `rsc`, `csc`) that nothing else accesses meanwhile.
        pub(crate) unsafe fn store_scalar(&self, acc: &[f32], nr: usize) {
            for (i, row) in acc.chunks_exact(nr).enumerate().take(self.rows) {
                for (col, &x) in row.iter().enumerate().take(self.cols) {
                    // SAFETY: row i < rows and column col < cols lie inside the caller's C view.
                    unsafe {
                        let dst = self.c.offset(i as isize * self.rsc + col as isize * self.csc);
                        *dst = if self.accumulate { *dst + x } else { x };
                    }
                }
            }
        }

        /// Stores (or adds) a tile of 512-bit accumulators: the full tile
        /// with vector stores, a partial one value by value.
        ///
        /// # Safety
        /// The CPU has AVX-512F; as [`Tile::store_scalar`], with `rows ≤ MR`
        /// and `cols ≤ 16·NV`.
        #[inline(always)]
        pub(crate) unsafe fn store_512<const MR: usize, const NV: usize>(
            &self,
            acc: &[[__m512; NV]; MR],
        ) {
            if self.rows < MR || self.cols < 16 * NV || self.csc != 1 {
                // A copy: a partial store indexes by `rows`, and a data-dependent
                // index on `acc` itself would keep it in memory (see `micro`).
                let copy = *acc;
                // SAFETY: the caller's contract, passed on.
                unsafe { store_partial(&copy, self) };
                return;
            }
            for (i, row) in acc.iter().enumerate() {
                // SAFETY: a full tile: row i < MR and 16·NV columns lie inside C.
                let c_row = unsafe { self.c.offset(i as isize * self.rsc) };
                for (v, &r) in row.iter().enumerate() {
                    // SAFETY: as above, column block v < NV; the CPU has AVX-512F.
                    unsafe {
                        let dst = c_row.add(16 * v);
                        let sum = if self.accumulate {
                            _mm512_add_ps(_mm512_loadu_ps(dst), r)
                        } else {
                            r
                        };
                        _mm512_storeu_ps(dst, sum);
                    }
                }
            }
        }
    }

    /// `C[MR × 16·NV] (+)= A_panel · B_panel` over `kc` steps, in registers.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` points to `kc·MR` readable floats (one A
    /// panel) and `b` to `kc·16·NV` (one B panel); `t.c` with strides
    /// `t.rsc`, `t.csc` addresses a writable `t.rows × t.cols` tile, with
    /// `t.rows ≤ MR` and `t.cols ≤ 16·NV`, that nothing else accesses meanwhile.
    #[target_feature(enable = "avx512f")]
    unsafe fn micro<const MR: usize, const NV: usize, const FLUSH: bool>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        t: Tile,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for p in 0..kc {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                // SAFETY: the B panel has kc rows of 16·NV floats.
                *slot = unsafe { _mm512_loadu_ps(b.add(p * 16 * NV + 16 * v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: the A panel has kc columns of MR floats.
                let ai = _mm512_set1_ps(unsafe { *a.add(p * MR + i) });
                for v in 0..NV {
                    row[v] = _mm512_fmadd_ps(ai, bv[v], row[v]);
                    if FLUSH {
                        row[v] = flush512(row[v]);
                    }
                }
            }
        }
        // `acc` must stay in registers: any access with a data-dependent
        // index (a loop bounded by `t.rows`) makes LLVM keep it in a stack
        // array zeroed by a 1.5 KiB memset on every call (2% of the
        // ResNet-20 step). So the full tile is stored with constant indices
        // and a partial one from a copy, in a function of its own. (Inline
        // rather than `Tile::store_512`, which the bf16 kernel uses: this
        // kernel's code generation was measured as it is.)
        if t.rows < MR || t.cols < 16 * NV || t.csc != 1 {
            let copy = acc;
            // SAFETY: the caller's contract on `t` is passed on.
            unsafe { store_partial(&copy, &t) };
            return;
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: a full tile: row i < MR and 16·NV columns lie inside C.
            let c_row = unsafe { t.c.offset(i as isize * t.rsc) };
            for (v, &r) in row.iter().enumerate() {
                // SAFETY: as above, column block v < NV.
                unsafe {
                    let dst = c_row.add(16 * v);
                    let sum = if t.accumulate { _mm512_add_ps(_mm512_loadu_ps(dst), r) } else { r };
                    _mm512_storeu_ps(dst, sum);
                }
            }
        }
    }

    /// `x` with every subnormal lane made zero of its sign (the bf16 step's flush).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn flush512(x: __m512) -> __m512 {
        let tiny =
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(x), _mm512_set1_ps(f32::MIN_POSITIVE));
        let bits = _mm512_castps_si512(x);
        let sign = _mm512_set1_epi32(i32::MIN);
        _mm512_castsi512_ps(_mm512_mask_and_epi32(bits, tiny, bits, sign))
    }

    /// `x` with every subnormal lane made zero of its sign (the bf16 step's flush).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn flush256(x: __m256) -> __m256 {
        let magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(magnitude, _mm256_set1_ps(f32::MIN_POSITIVE));
        // Keep the sign bit where tiny, everything where not.
        _mm256_andnot_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0), tiny), x)
    }

    /// Stores the first `t.rows × t.cols` values of `acc` into the tile.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `t` addresses a writable `t.rows × t.cols` tile
    /// (strides `t.rsc`, `t.csc`), `t.rows ≤ MR`, `t.cols ≤ 16·NV`.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_partial<const MR: usize, const NV: usize>(acc: &[[__m512; NV]; MR], t: &Tile) {
        let mut buf = [[0f32; 16]; NV];
        for (i, row) in acc.iter().enumerate().take(t.rows) {
            for (slot, &r) in buf.iter_mut().zip(row) {
                // SAFETY: `slot` is 16 writable floats.
                unsafe { _mm512_storeu_ps(slot.as_mut_ptr(), r) };
            }
            for (col, &x) in buf.iter().flatten().enumerate().take(t.cols) {
                // SAFETY: row i < t.rows and column col < t.cols lie inside the caller's C view.
                unsafe {
                    let dst = t.c.offset(i as isize * t.rsc + col as isize * t.csc);
                    *dst = if t.accumulate { *dst + x } else { x };
                }
            }
        }
    }

    /// `C[MR × 16·NV] (+)= A_panel · B_panel` over `kc` steps in 256-bit
    /// registers, two a 16-column block: each entry the same chain of fused
    /// multiply-adds as [`micro`], so the same bits.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; otherwise as [`micro`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn micro_avx2<const MR: usize, const NV: usize, const FLUSH: bool>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        t: Tile,
    ) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; NV]; MR];
        for p in 0..kc {
            let mut bv = [[_mm256_setzero_ps(); 2]; NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                for (h, half) in slot.iter_mut().enumerate() {
                    // SAFETY: the B panel has kc rows of 16·NV floats.
                    *half = unsafe { _mm256_loadu_ps(b.add(p * 16 * NV + 16 * v + 8 * h)) };
                }
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: the A panel has kc columns of MR floats.
                let ai = _mm256_set1_ps(unsafe { *a.add(p * MR + i) });
                for v in 0..NV {
                    for h in 0..2 {
                        row[v][h] = _mm256_fmadd_ps(ai, bv[v][h], row[v][h]);
                        if FLUSH {
                            row[v][h] = flush256(row[v][h]);
                        }
                    }
                }
            }
        }
        // As in `micro`: constant indices for a full tile, a copy for a partial one.
        if t.rows < MR || t.cols < 16 * NV || t.csc != 1 {
            let copy = acc;
            // SAFETY: the caller's contract on `t` is passed on.
            unsafe { store_partial_avx2(&copy, &t) };
            return;
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: a full tile: row i < MR and 16·NV columns lie inside C.
            let c_row = unsafe { t.c.offset(i as isize * t.rsc) };
            for (v, halves) in row.iter().enumerate() {
                for (h, &r) in halves.iter().enumerate() {
                    // SAFETY: as above, column block v < NV, half h < 2.
                    unsafe {
                        let dst = c_row.add(16 * v + 8 * h);
                        let sum =
                            if t.accumulate { _mm256_add_ps(_mm256_loadu_ps(dst), r) } else { r };
                        _mm256_storeu_ps(dst, sum);
                    }
                }
            }
        }
    }

    /// Stores the first `t.rows × t.cols` values of `acc` into the tile.
    ///
    /// # Safety
    /// The CPU has AVX2; `t` addresses a writable `t.rows × t.cols` tile
    /// (strides `t.rsc`, `t.csc`), `t.rows ≤ MR`, `t.cols ≤ 16·NV`.
    #[inline(never)]
    #[target_feature(enable = "avx2")]
    unsafe fn store_partial_avx2<const MR: usize, const NV: usize>(
        acc: &[[[__m256; 2]; NV]; MR],
        t: &Tile,
    ) {
        let mut buf = [[[0f32; 8]; 2]; NV];
        for (i, row) in acc.iter().enumerate().take(t.rows) {
            for (slot, &r) in buf.iter_mut().flatten().zip(row.iter().flatten()) {
                // SAFETY: `slot` is 8 writable floats.
                unsafe { _mm256_storeu_ps(slot.as_mut_ptr(), r) };
            }
            for (col, &x) in buf.iter().flatten().flatten().enumerate().take(t.cols) {
                // SAFETY: row i < t.rows and column col < t.cols lie inside the caller's C view.
                unsafe {
                    let dst = t.c.offset(i as isize * t.rsc + col as isize * t.csc);
                    *dst = if t.accumulate { *dst + x } else { x };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{normal, seeded_rng};
    use ndarray::Ix2;

    fn randn(m: usize, n: usize, seed: u64) -> Array2<f32> {
        normal(&[m, n], 0.0, 1.0, &mut seeded_rng(seed)).into_dimensionality::<Ix2>().unwrap()
    }

    #[test]
    fn equals_matrixmultiply_on_ragged_shapes() {
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 7),
            (16, 27, 1024),
            (27, 16, 100),
            (64, 600, 64),
            (130, 17, 33),
            (12, 300, 96),
        ] {
            let (a, b) = (randn(m, k, 1), randn(k, n, 2));
            let packed = PackedLhs::new(a.view(), n);
            for beta in [0.0f32, 1.0, 0.5] {
                let mut want = randn(m, n, 3);
                let mut got = want.clone();
                gemm(1.0, a.view(), b.view(), beta, want.view_mut()).unwrap();
                gemm_packed(&packed, b.view(), beta, got.view_mut(), &mut Vec::new()).unwrap();
                let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
                let err = want.iter().zip(&got).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
                assert!(err <= 1e-5 * scale.max(1.0), "{m}x{k}x{n} beta {beta}: {err}");
            }
        }
    }

    /// The micro-kernel (AVX-512) and matrixmultiply (the other levels) both
    /// pass the tests above: they run again in a child process per level.
    #[test]
    fn every_simd_level_multiplies_right() {
        for level in crate::simd::levels() {
            for filter in [
                "ragged_shapes",
                "strided_destinations",
                "every_panel_shape",
                "split_products",
                "prepacked",
                "fused_multiply_add_chains",
                "column_ranges",
            ] {
                crate::simd::rerun_tests(filter, &[("CNN_SIMD", level.name())]).unwrap();
            }
        }
    }

    /// The naive twin of the micro-kernels, bit for bit: each entry of `C`
    /// is one chain of fused multiply-adds over a slab of `KC` values of
    /// `k` in order, from 0, added to `C` after the first slab (or from the
    /// start when β = 1). Every panel shape, at this SIMD level (the test
    /// runs again at each level, so the AVX2 and AVX-512 kernels both meet
    /// the same twin), over ragged tiles and two slabs.
    #[test]
    fn micro_kernels_are_fused_multiply_add_chains() {
        if !PackedLhs::<f32>::uses_kernel() {
            return; // matrixmultiply's order of sums, held by the tests above
        }
        let (m, k, n) = (23, KC + 77, 53);
        let (a, b) = (randn(m, k, 7), randn(k, n, 8));
        let c0 = randn(m, n, 9);
        for beta in [0.0f32, 1.0] {
            let mut want = c0.clone();
            for ((i, j), c) in want.indexed_iter_mut() {
                let mut k0 = 0;
                while k0 < k {
                    let mut sum = 0f32;
                    for p in k0..(k0 + KC).min(k) {
                        sum = a[[i, p]].mul_add(b[[p, j]], sum);
                    }
                    *c = if k0 == 0 && beta == 0.0 { sum } else { *c + sum };
                    k0 += KC;
                }
            }
            for panel in PANELS {
                let packed = PackedLhs::with_panel(a.view(), panel).unwrap();
                let mut got = c0.clone();
                gemm_packed(&packed, b.view(), beta, got.view_mut(), &mut Vec::new()).unwrap();
                let diff = want.iter().zip(&got).filter(|(x, y)| x.to_bits() != y.to_bits());
                assert_eq!(diff.count(), 0, "panel {panel:?} beta {beta}");
            }
        }
    }

    #[test]
    fn every_panel_shape_equals_matrixmultiply() {
        let (m, k, n) = (37, 300, 101);
        let (a, b) = (randn(m, k, 1), randn(k, n, 2));
        let mut want = Array2::<f32>::zeros((m, n));
        gemm(1.0, a.view(), b.view(), 0.0, want.view_mut()).unwrap();
        for panel in PANELS {
            let packed = PackedLhs::with_panel(a.view(), panel).unwrap();
            let mut got = Array2::<f32>::zeros((m, n));
            gemm_packed(&packed, b.view(), 0.0, got.view_mut(), &mut Vec::new()).unwrap();
            let err = want.iter().zip(&got).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
            assert!(err <= 1e-4, "panel {panel:?}: {err}");
        }
        assert!(PackedLhs::with_panel(a.view(), (5, 5)).is_err());
    }

    #[test]
    fn from_panels_equals_packing_the_matrix() {
        let (m, k, n) = (19, 23, 40);
        let (a, b) = (randn(m, k, 1), randn(k, n, 2));
        let Some(panel) = PackedLhs::<f32>::panel_for(m, n) else {
            assert!(PackedLhs::<f32>::from_panels(m, k, (8, 3), vec![0.0; 24 * k]).is_err());
            return; // no micro-kernel at this SIMD level
        };
        let mut data = vec![0.0f32; m.div_ceil(panel.0) * panel.0 * k];
        for ((p, kk), &v) in a.indexed_iter() {
            data[PackedLhs::<f32>::packed_index(p, kk, k, panel.0)] = v;
        }
        let direct = PackedLhs::from_panels(m, k, panel, data).unwrap();
        let packed = PackedLhs::new(a.view(), n);
        let (mut c1, mut c2) = (Array2::<f32>::zeros((m, n)), Array2::<f32>::zeros((m, n)));
        gemm_packed(&direct, b.view(), 0.0, c1.view_mut(), &mut Vec::new()).unwrap();
        gemm_packed(&packed, b.view(), 0.0, c2.view_mut(), &mut Vec::new()).unwrap();
        assert_eq!(c1, c2);
        assert!(PackedLhs::<f32>::from_panels(m, k, panel, vec![0.0; 3]).is_err());
    }

    /// A right operand written value by value through `RhsPanels::index`
    /// (zeros past the last column) gives the same bits as packing the
    /// matrix: over one slab and several (k > KC), ragged n, every β; and
    /// the calls that cannot run are refused.
    #[test]
    fn prepacked_operands_equal_packing_the_matrix() {
        for (m, k, n) in [(16, 144, 1000), (37, 1100, 101), (8, 27, 16), (5, 3, 1)] {
            let (a, b) = (randn(m, k, 1), randn(k, n, 2));
            let packed = PackedLhs::new(a.view(), n);
            let Some(layout) = packed.rhs_panels(n) else {
                let c = Array2::<f32>::zeros((m, n));
                assert!(gemm_prepacked(&packed, &[], n, 0.0, c.clone().view_mut()).is_err());
                return; // no micro-kernel at this SIMD level
            };
            assert_eq!(layout.padded_cols() % layout.width(), 0);
            let mut data = vec![f32::NAN; layout.len()];
            for kk in 0..k {
                for col in 0..layout.padded_cols() {
                    data[layout.index(kk, col)] = if col < n { b[[kk, col]] } else { 0.0 };
                }
            }
            assert!(data.iter().all(|v| !v.is_nan()), "every value written once");
            for beta in [0.0f32, 1.0, 0.5] {
                let c0 = randn(m, n, 3);
                let (mut want, mut got) = (c0.clone(), c0.clone());
                gemm_packed(&packed, b.view(), beta, want.view_mut(), &mut Vec::new()).unwrap();
                gemm_prepacked(&packed, &data, n, beta, got.view_mut()).unwrap();
                assert_eq!(want, got, "{m}x{k}x{n} beta {beta}");
            }
            let mut c = Array2::<f32>::zeros((m, n));
            let short = gemm_prepacked(&packed, &data[1..], n, 0.0, c.view_mut()).unwrap_err();
            assert!(short.to_string().contains(&format!("needs {}", layout.len())), "{short}");
            assert!(gemm_prepacked(&packed, &data, n + 1, 0.0, c.view_mut()).is_err());
        }
    }

    /// A right operand produced panel by panel by a closure gives the same
    /// bits as the packed matrix: one row block and several (m > MC, where
    /// the panels are produced first), k over several slabs, ragged n, every
    /// β; `fill` sees every (panel, slab) once; an empty k leaves β·C.
    #[test]
    fn panels_produced_on_demand_equal_packing_the_matrix() {
        for (m, k, n) in [(16, 144, 1000), (37, 1100, 101), (400, 70, 50), (8, 27, 16)] {
            let (a, b) = (randn(m, k, 1), randn(k, n, 2));
            let packed = PackedLhs::new(a.view(), n);
            let Some(layout) = packed.rhs_panels(n) else {
                let mut c = Array2::<f32>::zeros((m, n));
                assert!(gemm_panels_by(&packed, n, 0.0, c.view_mut(), |_, _, _, _| {}).is_err());
                return; // no micro-kernel at this SIMD level
            };
            let nr = layout.width();
            for beta in [0.0f32, 1.0, 0.5] {
                let c0 = randn(m, n, 3);
                let (mut want, mut got) = (c0.clone(), c0.clone());
                gemm_packed(&packed, b.view(), beta, want.view_mut(), &mut Vec::new()).unwrap();
                let mut calls = Vec::new();
                gemm_panels_by(&packed, n, beta, got.view_mut(), |panel, k0, kc, buf| {
                    calls.push((panel, k0));
                    assert_eq!(buf.len(), kc * nr);
                    for r in 0..kc {
                        for l in 0..nr {
                            let col = panel * nr + l;
                            buf[r * nr + l] = if col < n { b[[k0 + r, col]] } else { 0.0 };
                        }
                    }
                })
                .unwrap();
                assert_eq!(want, got, "{m}x{k}x{n} beta {beta}");
                calls.sort_unstable();
                calls.dedup();
                assert_eq!(calls.len(), k.div_ceil(KC) * layout.padded_cols() / nr);
            }
            let mut c = Array2::<f32>::zeros((m, n + 1));
            assert!(gemm_panels_by(&packed, n, 0.0, c.view_mut(), |_, _, _, _| {}).is_err());
        }
        let empty = PackedLhs::new(Array2::<f32>::zeros((3, 0)).view(), 4);
        let mut c = Array2::<f32>::ones((3, 4));
        if empty.rhs_panels(4).is_some() {
            gemm_panels_by(&empty, 4, 0.5, c.view_mut(), |_, _, _, _| unreachable!()).unwrap();
            assert!(c.iter().all(|&v| v == 0.5));
            // β = 0: C is written (zeros), not read (NaN stays out).
            c.fill(f32::NAN);
            gemm_panels_by(&empty, 4, 0.0, c.view_mut(), |_, _, _, _| unreachable!()).unwrap();
            assert!(c.iter().all(|&v| v == 0.0));
        }
        // The same by `gemm_packed` on an empty B.
        let mut c = Array2::<f32>::from_elem((3, 4), f32::NAN);
        let b = Array2::<f32>::zeros((0, 4));
        gemm_packed(&empty, b.view(), 0.0, c.view_mut(), &mut Vec::new()).unwrap();
        assert!(c.iter().all(|&v| v == 0.0), "{c:?}");
    }

    /// Cut into 1, 2, 3 and more ranges than panels, the product made panel
    /// by panel gives the bits of one task, and `fill` is asked for every
    /// (panel, slab) of the whole of `B` once.
    #[test]
    fn panels_produced_in_column_ranges_equal_one_task() {
        let (m, k, n) = (37, 1100, 101);
        let (a, b) = (randn(m, k, 1), randn(k, n, 2));
        let packed = PackedLhs::new(a.view(), n);
        let Some(layout) = packed.rhs_panels(n) else {
            let mut c = Array2::<f32>::zeros((m, n));
            let refused = gemm_panels_by_split(&packed, n, 0.0, c.view_mut(), 2, |_, _, _, _| {});
            assert!(refused.is_err());
            return; // no micro-kernel at this SIMD level
        };
        let nr = layout.width();
        let fill = |panel: usize, k0: usize, kc: usize, buf: &mut [f32]| {
            for r in 0..kc {
                for l in 0..nr {
                    let col = panel * nr + l;
                    buf[r * nr + l] = if col < n { b[[k0 + r, col]] } else { 0.0 };
                }
            }
        };
        let c0 = randn(m, n, 3);
        let mut want = c0.clone();
        gemm_panels_by(&packed, n, 0.5, want.view_mut(), fill).unwrap();
        for parts in [1, 2, 3, 64] {
            let calls = std::sync::Mutex::new(Vec::new());
            let mut got = c0.clone();
            gemm_panels_by_split(&packed, n, 0.5, got.view_mut(), parts, |p, k0, kc, buf| {
                calls.lock().unwrap().push((p, k0));
                fill(p, k0, kc, buf)
            })
            .unwrap();
            assert_eq!(want, got, "{parts} parts");
            let mut calls = calls.into_inner().unwrap();
            calls.sort_unstable();
            let asked = calls.len();
            calls.dedup();
            assert_eq!(asked, calls.len(), "{parts} parts: a (panel, slab) asked for twice");
            assert_eq!(calls.len(), k.div_ceil(KC) * layout.padded_cols() / nr, "{parts} parts");
        }
        let mut c = Array2::<f32>::zeros((m, n + 1));
        assert!(gemm_panels_by_split(&packed, n, 0.0, c.view_mut(), 2, |_, _, _, _| {}).is_err());
    }

    #[test]
    fn writes_strided_destinations() {
        let (a, b) = (randn(20, 9, 4), randn(9, 40, 5));
        let packed = PackedLhs::new(a.view(), 40);
        let mut got = Array2::<f32>::zeros((40, 20));
        gemm_packed(&packed, b.view(), 0.0, got.view_mut().reversed_axes(), &mut Vec::new())
            .unwrap();
        let want = crate::matmul(a.view(), b.view()).unwrap();
        approx::assert_relative_eq!(got.t(), want.view(), max_relative = 1e-4, epsilon = 1e-5);
    }

    /// Every split, on pools of 1, 2 and 3 threads, gives bitwise the same
    /// product as one task (f32 on the micro-kernel or matrixmultiply, and f64).
    #[test]
    fn split_products_are_bitwise_equal_to_one_task() {
        for (m, k, n) in [(37, 300, 101), (64, 1100, 49), (7, 5, 300), (130, 17, 33)] {
            let (a, b) = (randn(m, k, 1), randn(k, n, 2));
            let packed = PackedLhs::new(a.view(), n);
            let c0 = randn(m, n, 3);
            let mut want = c0.clone();
            gemm_packed(&packed, b.view(), 1.0, want.view_mut(), &mut Vec::new()).unwrap();
            let (a64, b64) = (a.mapv(f64::from), b.mapv(f64::from));
            let packed64 = PackedLhs::new(a64.view(), n);
            let mut want64 = c0.mapv(f64::from);
            gemm_packed(&packed64, b64.view(), 1.0, want64.view_mut(), &mut Vec::new()).unwrap();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for (rows, cols) in [(1, 1), (3, 1), (1, 4), (5, 7), (64, 64)] {
                    let split = GemmSplit { rows, cols };
                    let mut got = c0.clone();
                    pool.install(|| {
                        gemm_packed_split(&packed, b.view(), 1.0, got.view_mut(), split).unwrap()
                    });
                    assert_eq!(got, want, "{m}x{k}x{n} {split:?} on {threads} threads");
                    let mut got64 = c0.mapv(f64::from);
                    pool.install(|| {
                        gemm_packed_split(&packed64, b64.view(), 1.0, got64.view_mut(), split)
                            .unwrap()
                    });
                    assert_eq!(got64, want64, "f64 {m}x{k}x{n} {split:?}");
                }
            }
        }
        let packed = PackedLhs::new(randn(4, 3, 1).view(), 2);
        let mut c = Array2::<f32>::zeros((4, 2));
        let err =
            gemm_packed_split(&packed, randn(2, 2, 1).view(), 0.0, c.view_mut(), GemmSplit::ONE);
        assert!(err.is_err());
    }

    #[test]
    fn split_blocks_cover_the_product_in_about_equal_parts() {
        let split = GemmSplit { rows: 4, cols: 3 };
        let blocks = split.blocks(100, 200, (8, 16));
        assert_eq!(blocks.len(), 12);
        let area: usize = blocks.iter().map(|(r, c)| r * c).sum();
        assert_eq!(area, 100 * 200);
        assert!(blocks.iter().all(|&(r, c)| (20..=32).contains(&r) && (64..=80).contains(&c)));
        // No more blocks than panels of rows and columns.
        assert_eq!(GemmSplit { rows: 9, cols: 9 }.blocks(10, 20, (8, 16)).len(), 4);
        assert_eq!(GemmSplit { rows: 1, cols: 8 }.blocks(8, 200, (8, 48)).len(), 5);
        assert_eq!(split_ranges(0, 3, 16), Vec::<Range<usize>>::new());
    }

    #[test]
    fn f64_goes_through_matrixmultiply() {
        let a = Array2::<f64>::eye(3);
        let b = Array2::<f64>::ones((3, 2));
        let packed = PackedLhs::new(a.view(), 2);
        let mut c = Array2::<f64>::zeros((3, 2));
        gemm_packed(&packed, b.view(), 0.0, c.view_mut(), &mut Vec::new()).unwrap();
        assert_eq!(c, b);
        assert!(gemm_packed(
            &packed,
            Array2::<f64>::ones((4, 2)).view(),
            0.0,
            c.view_mut(),
            &mut Vec::new()
        )
        .is_err());
    }
}
