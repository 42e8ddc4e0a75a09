//! Winograd convolution F(m×m, 3×3) for 3×3, stride-1, undilated convolutions
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Outputs come in `m × m` tiles, each read from an `α × α` input patch
//! (`α = m + 2`). Per group, with `T` tiles in a chunk of samples:
//! ```text
//! U[ξ][o][c] = (G · w[o, c] · Gᵀ)[ξ]      weight transform, α² matrices [Cog, Cg], once per call
//! V[c][ξ][t] = (Bᵀ · d[c, t] · B)[ξ]      input transform of tile t's patch
//! M[ξ][o][t] = Σ_c U[ξ][o][c] · V[c][ξ][t] α² GEMMs [Cog, Cg]·[Cg, T] in our micro-kernel
//! y[o, tile t] = Aᵀ · M[·][o][t] · A       output transform (+ bias), m × m outputs
//! ```
//! A direct 3×3 conv does 9 multiplies per output and input channel; the GEMMs
//! here do `α²/m²`: 4 for F(2×2) (2.25× fewer), 2.25 for F(4×4) (4× fewer). The
//! transforms are adds and a few multiplies, run 16 tiles at a time with the
//! tiles in the vector lanes.
//!
//! Error: the transforms round, most for F(4×4) (its `G` has 1/6 and 1/24).
//! Against the f64 naive kernel, measured on random N(0, 1) data, the f32
//! max error relative to the output's largest value is below 1e-5 for
//! F(2×2) and below 5e-5 for F(4×4) at 512 input channels (tests pin 1e-4,
//! the f32 parity tolerance); in f64 both stay below 1e-13.
//!
//! Work is cut by the shapes alone: chunks of whole samples (sized so that
//! `V` and `M` stay near 16 MiB), and inside a chunk the input transform runs
//! one task per channel, the GEMMs one per `ξ`, the output transform one per
//! output plane. Each output is computed by one task in a fixed order, so
//! results do not depend on the thread count.

use cnn_tensor::scratch::Scratch as Pooled;
use cnn_tensor::{Error, Float, PackedLhs, Result};
use rayon::prelude::*;

use crate::conv2d::{mat, mat_mut};
use crate::{ConvAlgorithm, ConvGeometry};

/// Tiles transformed at once, one per vector lane (16 f32 in an AVX-512 register).
const LANES: usize = 16;
/// Bytes of `V` and `M` of one chunk of samples.
const CHUNK_BYTES: usize = 16 << 20;
/// The largest patch side, α of F(4×4, 3×3).
const MAX_ALPHA: usize = 6;

/// The Winograd variants: output tile side `m` of F(m×m, 3×3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tile {
    /// F(2×2, 3×3): 4×4 patches, 16 GEMMs.
    F2,
    /// F(4×4, 3×3): 6×6 patches, 36 GEMMs.
    F4,
}

impl Tile {
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    fn alpha(self) -> usize {
        self.m() + 2
    }
}

/// Whether Winograd can compute `g`: a 3×3 kernel, stride 1, dilation 1.
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.opts.stride == [1, 1] && g.opts.dilation == [1, 1]
}

/// The algorithm `CNN_CONV_ALGORITHM` asks for (read once): `im2col`,
/// `winograd`, `winograd2`, `winograd4` or `auto` (the default).
fn env_algorithm() -> ConvAlgorithm {
    static ALGO: std::sync::OnceLock<ConvAlgorithm> = std::sync::OnceLock::new();
    *ALGO.get_or_init(|| match std::env::var("CNN_CONV_ALGORITHM") {
        Ok(v) => ConvAlgorithm::parse(&v).unwrap_or_else(|| {
            eprintln!(
                "warning: CNN_CONV_ALGORITHM={v:?} is not one of auto, im2col, winograd, \
                 winograd2, winograd4; using auto"
            );
            ConvAlgorithm::Auto
        }),
        Err(_) => ConvAlgorithm::Auto,
    })
}

thread_local! {
    /// The algorithm [`with_conv_algorithm`] set for this thread, if any.
    static SCOPED: std::cell::Cell<Option<ConvAlgorithm>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every convolution of this thread whose options say
/// [`ConvAlgorithm::Auto`] computed by `algorithm` where it applies (im2col
/// where it does not), ahead of `CNN_CONV_ALGORITHM`; restored afterwards,
/// also on a panic. Like `torch.backends.cudnn.flags(...)`: for a
/// reproducibility check or a comparison, without rebuilding the model.
///
/// ```
/// use cnn_conv::{conv2d_forward, with_conv_algorithm, Conv2dOptions, ConvAlgorithm};
/// use ndarray::Array4;
///
/// let (x, w) = (Array4::<f32>::ones((1, 32, 8, 8)), Array4::<f32>::ones((32, 32, 3, 3)));
/// let opts = Conv2dOptions::default().with_padding(1);
/// let y = with_conv_algorithm(ConvAlgorithm::Im2col, || conv2d_forward(x.view(), w.view(), None, &opts))?;
/// assert_eq!(y[[0, 0, 4, 4]], 288.0);
/// # Ok::<(), cnn_tensor::Error>(())
/// ```
pub fn with_conv_algorithm<R>(algorithm: ConvAlgorithm, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<ConvAlgorithm>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|s| s.replace(Some(algorithm))));
    f()
}

/// The shape rule of [`ConvAlgorithm::Auto`] (measured; docs/conv.md): F(4×4)
/// when both channel counts are at least 32, the map is at least 6×6 and the
/// batch has 32 tiles — below that the transforms (or the padded products)
/// cost more than the multiplies they save.
fn auto_rule(g: &ConvGeometry) -> Option<Tile> {
    let (cg, cog) = (g.c_in_g(), g.c_out_g());
    // The α² products are [C_out × C_in]·[C_in × tiles]: with fewer than 32
    // tiles in the whole batch (a 7×7 map at batch 1 has 4) the micro-kernel
    // pads each product to 32 columns and im2col does less work.
    let tiles = g.n * g.ho.div_ceil(4) * g.wo.div_ceil(4);
    (cg >= 32 && cog >= 32 && g.ho >= 6 && g.wo >= 6 && tiles >= 32).then_some(Tile::F4)
}

/// Which Winograd variant computes `g`, if any: the option, then (for `Auto`)
/// [`with_conv_algorithm`], `CNN_CONV_ALGORITHM`, the shape rule.
///
/// # Errors
/// [`Error::Config`] when the options force Winograd on a convolution it cannot compute.
pub(crate) fn choose(g: &ConvGeometry) -> Result<Option<Tile>> {
    // `Auto` asks, in order: `with_conv_algorithm`, `CNN_CONV_ALGORITHM`, the shape rule.
    let forced = |tile: Tile| {
        if applies(g) {
            Ok(Some(tile))
        } else {
            Err(Error::config(
                "conv2d",
                format!(
                    "algorithm {:?} needs a 3x3 kernel with stride 1 and dilation 1, got {}x{} \
                     with stride {:?} and dilation {:?}",
                    g.opts.algorithm, g.kh, g.kw, g.opts.stride, g.opts.dilation
                ),
            ))
        }
    };
    match g.opts.algorithm {
        ConvAlgorithm::Im2col => Ok(None),
        ConvAlgorithm::Winograd | ConvAlgorithm::Winograd4 => forced(Tile::F4),
        ConvAlgorithm::Winograd2 => forced(Tile::F2),
        ConvAlgorithm::Auto => Ok(match SCOPED.with(|s| s.get()).unwrap_or_else(env_algorithm) {
            _ if !applies(g) => None,
            ConvAlgorithm::Im2col => None,
            ConvAlgorithm::Winograd | ConvAlgorithm::Winograd4 => Some(Tile::F4),
            ConvAlgorithm::Winograd2 => Some(Tile::F2),
            ConvAlgorithm::Auto => auto_rule(g),
        }),
    }
}

// ---------------------------------------------------------------------------
// 1-D transforms (Lavin & Gray's matrices written out, zeros skipped). The
// 2-D transform `X · v · Xᵀ` applies one along columns, then along rows.

/// `Bᵀ·d` of F(2×2): 4 → 4.
#[inline(always)]
fn bt2<T: Float>(d: [T; MAX_ALPHA]) -> [T; MAX_ALPHA] {
    let z = T::zero();
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3], z, z]
}

/// `Bᵀ·d` of F(4×4): 6 → 6.
#[inline(always)]
fn bt4<T: Float>(d: [T; MAX_ALPHA]) -> [T; MAX_ALPHA] {
    let (c2, c4, c5) = (T::of(2.0), T::of(4.0), T::of(5.0));
    let a = d[4] - c4 * d[2]; // d4 − 4d2
    let b = d[3] - c4 * d[1]; // d3 − 4d1
    let c = d[4] - d[2];
    let e = c2 * (d[3] - d[1]);
    [c4 * d[0] - c5 * d[2] + d[4], a + b, a - b, c + e, c - e, c4 * d[1] - c5 * d[3] + d[5]]
}

/// `Aᵀ·v` of F(2×2): 4 → 2.
#[inline(always)]
fn at2<T: Float>(v: [T; MAX_ALPHA]) -> [T; MAX_ALPHA] {
    let z = T::zero();
    [v[0] + v[1] + v[2], v[1] - v[2] - v[3], z, z, z, z]
}

/// `Aᵀ·v` of F(4×4): 6 → 4.
#[inline(always)]
fn at4<T: Float>(v: [T; MAX_ALPHA]) -> [T; MAX_ALPHA] {
    let (c2, c4, c8) = (T::of(2.0), T::of(4.0), T::of(8.0));
    let (s12, d12) = (v[1] + v[2], v[1] - v[2]);
    let (s34, d34) = (v[3] + v[4], v[3] - v[4]);
    let z = T::zero();
    [v[0] + s12 + s34, d12 + c2 * d34, s12 + c4 * s34, d12 + c8 * d34 + v[5], z, z]
}

/// `G·g`: 3 → α.
fn g1d<T: Float>(tile: Tile, g: [T; 3]) -> [T; MAX_ALPHA] {
    let z = T::zero();
    match tile {
        Tile::F2 => {
            let h = T::of(0.5);
            [g[0], h * (g[0] + g[1] + g[2]), h * (g[0] - g[1] + g[2]), g[2], z, z]
        }
        Tile::F4 => {
            let (s, d) = (g[0] + g[2], g[1]);
            let q = T::of(4.0) * g[2] + g[0]; // (g0 + 2g1 + 4g2) / 24 = (q + 2d) / 24
            [
                g[0] / T::of(4.0),
                -(s + d) / T::of(6.0),
                -(s - d) / T::of(6.0),
                (q + T::of(2.0) * d) / T::of(24.0),
                (q - T::of(2.0) * d) / T::of(24.0),
                g[2],
            ]
        }
    }
}

// ---------------------------------------------------------------------------
// Transforms of LANES tiles at once: `buf[ξ][l]`, lane l = tile t0 + l.

type Lanes<T> = [[T; LANES]; MAX_ALPHA * MAX_ALPHA];

/// `Bᵀ·d·B` of every lane, `d` and the result row-major `[α][α]`.
#[inline(always)]
fn input_transform_body<T: Float>(tile: Tile, d: &Lanes<T>, out: &mut Lanes<T>) {
    match tile {
        Tile::F2 => separable::<T, 4, 4>(d, out, bt2),
        Tile::F4 => separable::<T, 6, 6>(d, out, bt4),
    }
}

/// `X·d·Xᵀ` lane by lane, for the 1-D transform `x` from `IN` points to
/// `OUT` (row-major `[IN][IN]` in, `[OUT][OUT]` out): along the columns, then
/// along the rows. Every transform of this module is one of these.
#[inline(always)]
fn separable<T: Float, const IN: usize, const OUT: usize>(
    d: &Lanes<T>,
    out: &mut Lanes<T>,
    x: impl Fn([T; MAX_ALPHA]) -> [T; MAX_ALPHA],
) {
    // e[k][j] = (X · d[:, j])[k], `[OUT][IN]`.
    let mut e: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    for j in 0..IN {
        for l in 0..LANES {
            let r = x(std::array::from_fn(|i| if i < IN { d[i * IN + j][l] } else { T::zero() }));
            for k in 0..OUT {
                e[k * IN + j][l] = r[k];
            }
        }
    }
    // out[k][q] = (X · e[k, :])[q].
    for k in 0..OUT {
        for l in 0..LANES {
            let r = x(std::array::from_fn(|j| if j < IN { e[k * IN + j][l] } else { T::zero() }));
            for q in 0..OUT {
                out[k * OUT + q][l] = r[q];
            }
        }
    }
}

/// `Aᵀ·v·A` of every lane: `[α][α]` in, `[m][m]` out (row-major, stride m).
#[inline(always)]
fn output_transform_body<T: Float>(tile: Tile, v: &Lanes<T>, out: &mut Lanes<T>) {
    match tile {
        Tile::F2 => separable::<T, 4, 2>(v, out, at2),
        Tile::F4 => separable::<T, 6, 4>(v, out, at4),
    }
}

cnn_tensor::simd_fn! {
    /// The input transform, compiled per SIMD level.
    fn input_transform<T: Float>(tile: Tile, d: &Lanes<T>, out: &mut Lanes<T>) = input_transform_body
}

cnn_tensor::simd_fn! {
    /// The output transform, compiled per SIMD level.
    fn output_transform<T: Float>(tile: Tile, v: &Lanes<T>, out: &mut Lanes<T>) = output_transform_body
}

// ---------------------------------------------------------------------------
// The convolution.

/// Tile grid of one sample: rows and columns of tiles.
#[derive(Debug, Clone, Copy)]
struct Grid {
    tile: Tile,
    rows: usize,
    cols: usize,
}

impl Grid {
    fn new(tile: Tile, g: &ConvGeometry) -> Self {
        let m = tile.m();
        Grid { tile, rows: g.ho.div_ceil(m), cols: g.wo.div_ceil(m) }
    }
    fn per_sample(&self) -> usize {
        self.rows * self.cols
    }

    /// Samples per chunk: as many as keep a chunk's transformed input `V` and
    /// GEMM side `M` (α² values per tile and channel) near [`CHUNK_BYTES`].
    fn samples_per_chunk<T>(&self, g: &ConvGeometry) -> usize {
        let a2 = self.tile.alpha() * self.tile.alpha();
        let bytes = a2 * (g.c_in_g() + g.c_out_g()) * self.per_sample() * std::mem::size_of::<T>();
        (CHUNK_BYTES / bytes).clamp(1, g.n)
    }
}

/// `V[c][ξ][t]` of group `grp` for the samples of `x_chunk` (`t_all` tiles):
/// one task per input channel, its tiles of every sample in the lanes.
fn transform_input<T: Float>(
    grid: &Grid,
    g: &ConvGeometry,
    x_chunk: &[T],
    grp: usize,
    v: &mut [T],
    t_all: usize,
) {
    let (cg, a2, per_in) = (g.c_in_g(), grid.tile.alpha() * grid.tile.alpha(), g.c_in * g.h * g.w);
    v[..a2 * cg * t_all].par_chunks_mut(a2 * t_all).enumerate().for_each(|(c, v_c)| {
        let planes = Planes { data: x_chunk, first: grp * cg + c, stride: per_in };
        match grid.tile {
            Tile::F2 => transform_channel::<T, 4, 2>(grid, g, planes, v_c, t_all),
            Tile::F4 => transform_channel::<T, 6, 4>(grid, g, planes, v_c, t_all),
        }
    });
}

/// Writes `lanes` of each of the first `rows` lane rows of `out` to
/// `dst[row·ld + t0 ..]`: a transform's result, back in `[ξ][t]` order.
#[inline(always)]
fn store_lanes<T: Float>(
    out: &Lanes<T>,
    rows: usize,
    dst: &mut [T],
    ld: usize,
    t0: usize,
    lanes: usize,
) {
    for (xi, o) in out.iter().enumerate().take(rows) {
        let dst = &mut dst[xi * ld + t0..][..lanes];
        if lanes == LANES {
            let dst: &mut [T; LANES] = dst.try_into().expect("LANES elements");
            *dst = *o;
        } else {
            dst.iter_mut().zip(o).for_each(|(d, &v)| *d = v);
        }
    }
}

/// The coefficients of `U[ξ] = Σ_{i,j} coef[ξ][3i + j] · w[·, ·, i, j]`:
/// `coef[(r, q)][(i, j)] = G[r][i] · G[q][j]`, so `G · k · Gᵀ` becomes nine
/// scaled adds of whole weight planes (contiguous and vectorized).
fn weight_coefficients<T: Float>(tile: Tile) -> Vec<[T; 9]> {
    let a = tile.alpha();
    // Column i of G: G · e_i.
    let gcol: [[T; MAX_ALPHA]; 3] = std::array::from_fn(|i| {
        let mut e = [T::zero(); 3];
        e[i] = T::one();
        g1d(tile, e)
    });
    (0..a * a)
        .map(|xi| {
            let (r, q) = (xi / a, xi % a);
            std::array::from_fn(|ij| gcol[ij / 3][r] * gcol[ij % 3][q])
        })
        .collect()
}

/// `out[p] = Σ_ij coef[ij] · planes[ij][p]`, compiled per SIMD level.
#[inline(always)]
fn combine_planes_body<T: Float>(planes: &[T], len: usize, coef: &[T; 9], out: &mut [T]) {
    for (p, o) in out.iter_mut().enumerate().take(len) {
        let mut acc = T::zero();
        for (ij, &c) in coef.iter().enumerate() {
            acc += c * planes[ij * len + p];
        }
        *o = acc;
    }
}

cnn_tensor::simd_fn! {
    /// See `combine_planes_body`.
    fn combine_planes<T: Float>(planes: &[T], len: usize, coef: &[T; 9], out: &mut [T]) = combine_planes_body
}

/// `U[ξ]` of each group, packed for the GEMMs: `[group][ξ]`.
///
/// The group's kernel taps are first laid out as nine planes, one per tap
/// `(i, j)`, each holding that tap of every `(o, c)`; `U[ξ]` is a scaled sum
/// of the nine planes. With the micro-kernel the planes are laid out in its
/// panel order, so the sums come out packed (no second copy).
pub(crate) fn transform_weights<T: Float>(
    tile: Tile,
    g: &ConvGeometry,
    w: &[T],
    typical_cols: usize,
) -> Vec<Vec<PackedLhs<T>>> {
    let (cg, cog, a2) = (g.c_in_g(), g.c_out_g(), tile.alpha() * tile.alpha());
    let coef = weight_coefficients::<T>(tile);
    let panel = PackedLhs::<T>::panel_for(cog, typical_cols);
    // Plane position of (o, c): the packed index, or row-major.
    let (len, at): (usize, Box<dyn Fn(usize, usize) -> usize + Sync>) = match panel {
        Some((mr, _)) => (
            cog.div_ceil(mr) * mr * cg,
            Box::new(move |o, c| PackedLhs::<T>::packed_index(o, c, cg, mr)),
        ),
        None => (cog * cg, Box::new(move |o, c| o * cg + c)),
    };
    let size = cog * cg * 9;
    (0..g.opts.groups)
        .map(|grp| {
            let w_g = &w[grp * size..(grp + 1) * size];
            let mut planes = vec![T::zero(); 9 * len];
            for (oc, k) in w_g.chunks(9).enumerate() {
                let q = at(oc / cg, oc % cg);
                for (ij, &v) in k.iter().enumerate() {
                    planes[ij * len + q] = v;
                }
            }
            (0..a2)
                .into_par_iter()
                .map(|xi| {
                    let mut u = vec![T::zero(); len];
                    combine_planes(&planes, len, &coef[xi], &mut u);
                    match panel {
                        Some(panel) => PackedLhs::from_panels(cog, cg, panel, u)
                            .expect("the panel PackedLhs chose, and its length"),
                        None => PackedLhs::new(mat(&u, cog, cg, cg), typical_cols),
                    }
                })
                .collect()
        })
        .collect()
}

/// `y = conv3x3(x, w) + b` by Winograd `tile`, for `g` (stride 1, dilation 1;
/// any padding, groups and sizes). `y` is `[n, c_out, ho, wo]`, written whole.
pub(crate) fn forward<T: Float>(
    tile: Tile,
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    forward_cached(tile, g, x, w, b, y, None, false);
}

/// [`forward`], with the weight transform taken from (and kept in) `cache`,
/// and `max(·, 0)` applied in the output transform when `relu`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_cached<T: Float>(
    tile: Tile,
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    cache: Option<&mut crate::weight_cache::WeightCache<T>>,
    relu: bool,
) {
    let grid = Grid::new(tile, g);
    let (cg, cog, a2) = (g.c_in_g(), g.c_out_g(), tile.alpha() * tile.alpha());
    let (tps, samples) = (grid.per_sample(), grid.samples_per_chunk::<T>(g));
    let fresh;
    let weights = match cache {
        Some(c) => c.winograd(tile, g, w, samples * tps),
        None => {
            fresh = transform_weights(tile, g, w, samples * tps);
            &fresh
        }
    };
    let (per_in, per_out) = (g.c_in * g.h * g.w, g.c_out * g.out_area());
    // From the scratch pool: written before read, kept for the next call.
    let mut v = Pooled::<T>::take(a2 * cg * samples * tps);
    let mut m = Pooled::<T>::take(a2 * cog * samples * tps);
    for (chunk, y_chunk) in y.chunks_mut(samples * per_out).enumerate() {
        let s = y_chunk.len() / per_out;
        let n0 = chunk * samples;
        let x_chunk = &x[n0 * per_in..(n0 + s) * per_in];
        let t_all = s * tps;
        for (grp, u) in weights.iter().enumerate() {
            transform_input(&grid, g, x_chunk, grp, &mut v, t_all);
            // M[ξ] = U[ξ] · V[ξ]: one GEMM per ξ.
            let v_ref = &v[..a2 * cg * t_all];
            let split = crate::plan::gemm_split(a2, (cog, t_all, cg), (g.flops() / 2) as usize);
            m[..a2 * cog * t_all].par_chunks_mut(cog * t_all).enumerate().for_each_init(
                Vec::new,
                |packed, (xi, m_xi)| {
                    let v_xi = mat(&v_ref[xi * t_all..], cg, t_all, a2 * t_all);
                    let out = mat_mut(m_xi, cog, t_all, t_all);
                    crate::conv2d::product(&u[xi], v_xi, out, split, packed);
                },
            );
            // y: one task per output channel, its planes of every sample.
            let m_ref = &m[..a2 * cog * t_all];
            let y_ptr = SharedOut(y_chunk.as_mut_ptr());
            (0..cog).into_par_iter().for_each(|o| {
                let oc = grp * cog + o;
                let bias = b.map_or(T::zero(), |b| b[oc]);
                let m_o = &m_ref[o * t_all..];
                let out = PlanesMut { ptr: &y_ptr, first: oc, stride: per_out, samples: s };
                match tile {
                    Tile::F2 => {
                        inverse_channel::<T, 4, 2>(&grid, g, m_o, cog * t_all, bias, relu, out)
                    }
                    Tile::F4 => {
                        inverse_channel::<T, 6, 4>(&grid, g, m_o, cog * t_all, bias, relu, out)
                    }
                }
            });
        }
    }
}

/// Plane `first` of every sample: `data[si·stride + first·h·w ..][..h·w]`.
#[derive(Clone, Copy)]
struct Planes<'a, T> {
    data: &'a [T],
    first: usize,
    stride: usize,
}

/// The output buffer of a chunk, shared by tasks that write disjoint planes.
struct SharedOut<T>(*mut T);
// SAFETY: tasks write through it only to planes no other task touches (see `PlanesMut`).
unsafe impl<T: Send> Sync for SharedOut<T> {}

/// Plane `first` of every sample of a chunk, for the one task that owns that channel.
struct PlanesMut<'a, T> {
    ptr: &'a SharedOut<T>,
    first: usize,
    stride: usize,
    samples: usize,
}

impl<T> PlanesMut<'_, T> {
    /// Sample `si`'s plane, `len` elements.
    fn plane(&mut self, si: usize, len: usize) -> &mut [T] {
        assert!(si < self.samples, "sample {si} of a chunk of {}", self.samples);
        // SAFETY: the chunk holds `samples` samples of `stride` elements, of which this plane
        // (`len = ho·wo` elements at `first·len`) lies inside one; channel `first` belongs to
        // this task alone, and `&mut self` keeps one plane borrowed at a time.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.0.add(si * self.stride + self.first * len), len)
        }
    }
}

/// The input transforms of every tile of one channel, all samples of the
/// chunk, into `v_c` (`[ξ][t]`, rows `ld` apart), sixteen tiles at a time.
#[allow(clippy::needless_range_loop)] // `l` is a lane: it indexes every row of `d`
fn transform_channel<T: Float, const A: usize, const M: usize>(
    grid: &Grid,
    g: &ConvGeometry,
    planes: Planes<'_, T>,
    v_c: &mut [T],
    ld: usize,
) {
    let (ph, pw) = (g.opts.padding[0] as isize, g.opts.padding[1] as isize);
    let (h, w, area) = (g.h as isize, g.w as isize, g.h * g.w);
    let tps = grid.per_sample();
    let mut d: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    for t0 in (0..ld).step_by(LANES) {
        let lanes = LANES.min(ld - t0);
        for l in 0..LANES {
            if l >= lanes {
                (0..A * A).for_each(|p| d[p][l] = T::zero());
                continue;
            }
            let (si, t) = ((t0 + l) / tps, (t0 + l) % tps);
            let plane = &planes.data[si * planes.stride + planes.first * area..][..area];
            let (ty, tx) = (t / grid.cols, t % grid.cols);
            let (r0, c0) = ((ty * M) as isize - ph, (tx * M) as isize - pw);
            if r0 >= 0 && c0 >= 0 && r0 + A as isize <= h && c0 + A as isize <= w {
                for i in 0..A {
                    let row: &[T; A] = plane[((r0 + i as isize) * w + c0) as usize..][..A]
                        .try_into()
                        .expect("A elements");
                    (0..A).for_each(|j| d[i * A + j][l] = row[j]);
                }
            } else {
                for i in 0..A {
                    let r = r0 + i as isize;
                    for j in 0..A {
                        let c = c0 + j as isize;
                        let ok = (0..h).contains(&r) && (0..w).contains(&c);
                        d[i * A + j][l] = if ok { plane[(r * w + c) as usize] } else { T::zero() };
                    }
                }
            }
        }
        input_transform(grid.tile, &d, &mut out);
        store_lanes(&out, A * A, v_c, ld, t0, lanes);
    }
}

/// The output transforms of every tile of one output channel, all samples
/// of the chunk: `m_o[ξ·ld + t]` holds `M[ξ][o][t]`; writes the planes whole.
#[allow(clippy::needless_range_loop)] // `l` is a lane: it indexes every row of `out`
fn inverse_channel<T: Float, const A: usize, const M: usize>(
    grid: &Grid,
    g: &ConvGeometry,
    m_o: &[T],
    ld: usize,
    bias: T,
    relu: bool,
    mut out_planes: PlanesMut<'_, T>,
) {
    let mut v: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let tps = grid.per_sample();
    let t_all = tps * out_planes.samples;
    for t0 in (0..t_all).step_by(LANES) {
        let lanes = LANES.min(t_all - t0);
        for (xi, v_xi) in v.iter_mut().enumerate().take(A * A) {
            let src = &m_o[xi * ld + t0..][..lanes];
            if lanes == LANES {
                *v_xi = src.try_into().expect("LANES elements");
            } else {
                v_xi.iter_mut().zip(src).for_each(|(d, &s)| *d = s);
            }
        }
        output_transform(grid.tile, &v, &mut out);
        for l in 0..lanes {
            let (si, t) = ((t0 + l) / tps, (t0 + l) % tps);
            let (ty, tx) = (t / grid.cols, t % grid.cols);
            let y_p = out_planes.plane(si, g.out_area());
            let rows = M.min(g.ho - ty * M);
            let cols = M.min(g.wo - tx * M);
            for i in 0..rows {
                let dst = &mut y_p[(ty * M + i) * g.wo + tx * M..][..cols];
                for (j, d) in dst.iter_mut().enumerate() {
                    let v = out[i * M + j][l] + bias;
                    *d = if relu { crate::conv2d::relu(v) } else { v };
                }
            }
        }
    }
}

/// dx of a stride-1 3×3 conv by Winograd: the forward conv of `dy` that
/// `gt = g.dx_as_forward()` describes (flipped kernel, channel axes swapped,
/// padding `2 − p`).
pub(crate) fn backward_dx<T: Float>(
    tile: Tile,
    g: &ConvGeometry,
    gt: &ConvGeometry,
    w: &[T],
    dy: &[T],
    dx: &mut [T],
) {
    forward(tile, gt, dy, &g.dx_weight(w), None, dx);
}

/// `A·d` of F(2×2): the adjoint of [`at2`], 2 → 4.
#[inline(always)]
fn a2<T: Float>(d: [T; MAX_ALPHA]) -> [T; MAX_ALPHA] {
    let z = T::zero();
    [d[0], d[0] + d[1], d[0] - d[1], -d[1], z, z]
}

/// `A·d` of F(4×4): the adjoint of [`at4`], 4 → 6.
#[inline(always)]
fn a4<T: Float>(d: [T; MAX_ALPHA]) -> [T; MAX_ALPHA] {
    let (c2, c4, c8) = (T::of(2.0), T::of(4.0), T::of(8.0));
    let (s02, s13) = (d[0] + d[2], d[1] + d[3]);
    let (q02, q13) = (d[0] + c4 * d[2], c2 * d[1] + c8 * d[3]);
    [d[0], s02 + s13, s02 - s13, q02 + q13, q02 - q13, d[3]]
}

/// `A·dY·Aᵀ` of every lane: `[m][m]` in (row-major, stride m), `[α][α]` out.
#[inline(always)]
fn output_adjoint_body<T: Float>(tile: Tile, dy: &Lanes<T>, out: &mut Lanes<T>) {
    match tile {
        Tile::F2 => separable::<T, 2, 4>(dy, out, a2),
        Tile::F4 => separable::<T, 4, 6>(dy, out, a4),
    }
}

cnn_tensor::simd_fn! {
    /// The adjoint of the output transform, compiled per SIMD level.
    fn output_adjoint<T: Float>(tile: Tile, dy: &Lanes<T>, out: &mut Lanes<T>) = output_adjoint_body
}

/// `A · dy_tile · Aᵀ` of every tile of one output channel, all samples of the
/// chunk, into `dm_o` (`[ξ][t]`, rows `ld` apart): the gradient of `M[·][o][t]`.
#[allow(clippy::needless_range_loop)] // `l` is a lane: it indexes every row of `d`
fn adjoint_channel<T: Float, const A: usize, const M: usize>(
    grid: &Grid,
    g: &ConvGeometry,
    planes: Planes<'_, T>,
    dm_o: &mut [T],
    ld: usize,
) {
    let (ho, wo, area) = (g.ho, g.wo, g.out_area());
    let tps = grid.per_sample();
    let mut d: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    for t0 in (0..ld).step_by(LANES) {
        let lanes = LANES.min(ld - t0);
        for l in 0..LANES {
            if l >= lanes {
                (0..M * M).for_each(|p| d[p][l] = T::zero());
                continue;
            }
            let (si, t) = ((t0 + l) / tps, (t0 + l) % tps);
            let plane = &planes.data[si * planes.stride + planes.first * area..][..area];
            let (r0, c0) = ((t / grid.cols) * M, (t % grid.cols) * M);
            for i in 0..M {
                for j in 0..M {
                    let (r, c) = (r0 + i, c0 + j);
                    // Outputs past the map's edge were computed and dropped: their gradient is 0.
                    d[i * M + j][l] = if r < ho && c < wo { plane[r * wo + c] } else { T::zero() };
                }
            }
        }
        output_adjoint(grid.tile, &d, &mut out);
        store_lanes(&out, A * A, dm_o, ld, t0, lanes);
    }
}

/// Positions of `dU` turned into dW taps per task (9 tap rows of this many
/// stay in L1 while the α² planes stream past once).
const TAP_BLOCK: usize = 512;

/// `taps[ij][p] = Σ_ξ coef[ξ][ij] · planes[ξ][p0 + p]` for the nine taps `ij`
/// and `p < taps[0].len()`: each plane is read once (ξ outer), each output
/// sums ξ in order. Compiled per SIMD level.
#[inline(always)]
fn gather_taps_body<T: Float>(
    planes: &[T],
    len: usize,
    p0: usize,
    coef: &[[T; 9]],
    taps: &mut [[T; TAP_BLOCK]; 9],
    n: usize,
) {
    taps.iter_mut().for_each(|t| t[..n].fill(T::zero()));
    for (xi, c) in coef.iter().enumerate() {
        let plane = &planes[xi * len + p0..xi * len + p0 + n];
        for (ij, t) in taps.iter_mut().enumerate() {
            let cij = c[ij];
            t[..n].iter_mut().zip(plane).for_each(|(o, &v)| *o += cij * v);
        }
    }
}

cnn_tensor::simd_fn! {
    /// See `gather_taps_body`.
    fn gather_taps<T: Float>(
        planes: &[T],
        len: usize,
        p0: usize,
        coef: &[[T; 9]],
        taps: &mut [[T; TAP_BLOCK]; 9],
        n: usize,
    ) = gather_taps_body
}

/// dW of a stride-1 3×3 conv by Winograd `tile`: `dU[ξ] = Σ_t dM[ξ][·][t] · V[ξ][·][t]ᵀ`
/// (α² GEMMs over the tiles), then `dW[o, c] = Gᵀ · dU[o, c] · G`, which uses
/// the forward weight transform's coefficients transposed. `dw` is written whole.
pub(crate) fn backward_dw<T: Float>(tile: Tile, g: &ConvGeometry, x: &[T], dy: &[T], dw: &mut [T]) {
    let grid = Grid::new(tile, g);
    let (cg, cog, a2) = (g.c_in_g(), g.c_out_g(), tile.alpha() * tile.alpha());
    let (tps, samples) = (grid.per_sample(), grid.samples_per_chunk::<T>(g));
    let (per_in, per_out) = (g.c_in * g.h * g.w, g.c_out * g.out_area());
    // From the scratch pool: written before read, kept for the next call.
    let mut v = Pooled::<T>::take(a2 * cg * samples * tps);
    let mut dm = Pooled::<T>::take(a2 * cog * samples * tps);
    // dU[group][ξ][o·Cg + c], summed over the chunks in order (the first chunk writes it).
    let mut du = Pooled::<T>::take(g.opts.groups * a2 * cog * cg);
    for n0 in (0..g.n).step_by(samples) {
        let s = samples.min(g.n - n0);
        let x_chunk = &x[n0 * per_in..(n0 + s) * per_in];
        let dy_chunk = &dy[n0 * per_out..(n0 + s) * per_out];
        let t_all = s * tps;
        for grp in 0..g.opts.groups {
            transform_input(&grid, g, x_chunk, grp, &mut v, t_all);
            dm[..a2 * cog * t_all].par_chunks_mut(a2 * t_all).enumerate().for_each(|(o, dm_o)| {
                let planes = Planes { data: dy_chunk, first: grp * cog + o, stride: per_out };
                match tile {
                    Tile::F2 => adjoint_channel::<T, 4, 2>(&grid, g, planes, dm_o, t_all),
                    Tile::F4 => adjoint_channel::<T, 6, 4>(&grid, g, planes, dm_o, t_all),
                }
            });
            let (v_ref, dm_ref) = (&v[..a2 * cg * t_all], &dm[..a2 * cog * t_all]);
            let du_g = &mut du[grp * a2 * cog * cg..(grp + 1) * a2 * cog * cg];
            // One task per ξ and block of tiles (the long shared axis): each
            // writes a partial dU[ξ] of its own, added in block order (fixed by
            // the shapes). Cutting by output channels instead repacked V[ξ]
            // once per block.
            let split = crate::plan::gemm_split(a2, (cog, t_all, cg), (g.flops() / 2) as usize);
            let parts = crate::plan::shared_axis_parts(split, t_all);
            let mut partials = Pooled::<T>::take(a2 * parts * cog * cg);
            partials.par_chunks_mut(cog * cg).enumerate().for_each(|(task, part)| {
                let (xi, p) = (task / parts, task % parts);
                let (t0, t1) = (p * t_all / parts, (p + 1) * t_all / parts);
                let dm_xi = mat(&dm_ref[xi * t_all + t0..], cog, t1 - t0, a2 * t_all);
                let v_xi = mat(&v_ref[xi * t_all + t0..], cg, t1 - t0, a2 * t_all);
                cnn_tensor::gemm(T::one(), dm_xi, v_xi.t(), T::zero(), mat_mut(part, cog, cg, cg))
                    .expect("shapes agree by construction");
            });
            du_g.par_chunks_mut(cog * cg)
                .zip(partials.par_chunks(parts * cog * cg))
                .for_each(|(du_xi, parts_xi)| crate::plan::add_partials(du_xi, parts_xi, n0 == 0));
        }
    }
    // dW[oc][ij] = Σ_ξ coef[ξ][ij] · dU[ξ][oc], a block of positions per task.
    let coef = weight_coefficients::<T>(tile);
    let len = cog * cg;
    for grp in 0..g.opts.groups {
        let du_g = &du[grp * a2 * len..(grp + 1) * a2 * len];
        let dw_g = &mut dw[grp * len * 9..(grp + 1) * len * 9];
        dw_g.par_chunks_mut(TAP_BLOCK * 9).enumerate().for_each(|(blk, dw_blk)| {
            let (p0, n) = (blk * TAP_BLOCK, dw_blk.len() / 9);
            let mut taps = [[T::zero(); TAP_BLOCK]; 9];
            gather_taps(du_g, len, p0, &coef, &mut taps, n);
            for (p, k) in dw_blk.chunks_mut(9).enumerate() {
                for (ij, kv) in k.iter_mut().enumerate() {
                    *kv = taps[ij][p];
                }
            }
        });
    }
}

/// The work (multiply-adds) of each parallel GEMM task of a Winograd
/// forward (`backward = false`) or dW (`true`) on `g`: what the plan test counts.
#[cfg(test)]
pub(crate) fn gemm_tasks<T>(tile: Tile, g: &ConvGeometry, backward: bool) -> Vec<f64> {
    let grid = Grid::new(tile, g);
    let (cg, cog, a2) = (g.c_in_g(), g.c_out_g(), tile.alpha() * tile.alpha());
    let (tps, samples) = (grid.per_sample(), grid.samples_per_chunk::<T>(g));
    let mut tasks = Vec::new();
    for n0 in (0..g.n).step_by(samples) {
        let t_all = samples.min(g.n - n0) * tps;
        for _ in 0..g.opts.groups * a2 {
            if backward {
                let split = crate::plan::gemm_split(a2, (cog, t_all, cg), (g.flops() / 2) as usize);
                let parts = crate::plan::shared_axis_parts(split, t_all);
                tasks.extend((0..parts).map(|_| (cog * cg * t_all / parts) as f64));
            } else {
                let blocks = crate::plan::gemm_split(
                    a2,
                    (cog, t_all, cg),
                    (g.flops() / 2) as usize,
                )
                .blocks(cog, t_all, (8, 48));
                tasks.extend(blocks.iter().map(|&(r, c)| (r * c * cg) as f64));
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms against the matrices of Lavin & Gray, applied densely.
    #[test]
    fn one_dimensional_transforms_match_the_matrices() {
        let bt4m: [[f64; 6]; 6] = [
            [4., 0., -5., 0., 1., 0.],
            [0., -4., -4., 1., 1., 0.],
            [0., 4., -4., -1., 1., 0.],
            [0., -2., -1., 2., 1., 0.],
            [0., 2., -1., -2., 1., 0.],
            [0., 4., 0., -5., 0., 1.],
        ];
        let at4m: [[f64; 6]; 4] = [
            [1., 1., 1., 1., 1., 0.],
            [0., 1., -1., 2., -2., 0.],
            [0., 1., 1., 4., 4., 0.],
            [0., 1., -1., 8., -8., 1.],
        ];
        let g4m: [[f64; 3]; 6] = [
            [0.25, 0., 0.],
            [-1. / 6., -1. / 6., -1. / 6.],
            [-1. / 6., 1. / 6., -1. / 6.],
            [1. / 24., 1. / 12., 1. / 6.],
            [1. / 24., -1. / 12., 1. / 6.],
            [0., 0., 1.],
        ];
        let d = [0.3, -1.2, 2.5, 0.7, -0.4, 1.9];
        let mv = |m: &[[f64; 6]], v: &[f64; 6]| -> Vec<f64> {
            m.iter().map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum()).collect()
        };
        let close = |got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-13, "{got:?} vs {want:?}");
            }
        };
        close(&bt4(d), &mv(&bt4m, &d));
        close(&at4(d)[..4], &mv(&at4m, &d));
        let gg = [0.5, -2.0, 1.5];
        let want: Vec<f64> =
            g4m.iter().map(|r| r.iter().zip(&gg).map(|(a, b)| a * b).sum()).collect();
        for (got, want) in g1d(Tile::F4, gg).iter().zip(&want) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        let d2 = [0.3, -1.2, 2.5, 0.7, 0.0, 0.0];
        assert_eq!(bt2(d2)[..4], [0.3 - 2.5, -1.2 + 2.5, 2.5 + 1.2, -1.2 - 0.7]);
        assert_eq!(at2(d2)[..2], [0.3 - 1.2 + 2.5, -1.2 - 2.5 - 0.7]);
    }
}
