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

mod blocked;
mod transforms;

use cnn_tensor::scratch::Scratch as Pooled;
use cnn_tensor::{Float, PackedLhs};
use rayon::prelude::*;

use crate::epilogue::{relu, Epilogue};
use crate::matrix::{mat, mat_mut, product, SharedOut};
use crate::ConvGeometry;
use transforms::{
    gather_patches, gather_taps, input_transform, output_adjoint, output_transform, store_lanes,
    weight_coefficients, Lanes, LANES, MAX_ALPHA, TAP_BLOCK,
};
pub(crate) use transforms::{transform_weights, Tile};

/// Bytes of `V` and `M` of one chunk of samples.
const CHUNK_BYTES: usize = 16 << 20;

/// Whether Winograd can compute `g`: a 3×3 kernel, stride 1, dilation 1.
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.opts.stride == [1, 1] && g.opts.dilation == [1, 1]
}

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

    /// `(height, width)` of an input plane zero-padded so that every tile's
    /// `α × α` patch lies inside: `rows·m + α − m` by `cols·m + α − m`.
    fn padded_size(&self) -> (usize, usize) {
        let (m, alpha) = (self.tile.m(), self.tile.alpha());
        (self.rows * m + alpha - m, self.cols * m + alpha - m)
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

/// Columns of the forward's α² GEMMs (a block's tiles, or a chunk's on the
/// phase-by-phase path): what the weight transform is packed for, and what
/// a cache keys it by.
pub(crate) fn gemm_cols<T: Float>(tile: Tile, g: &ConvGeometry) -> usize {
    if blocked::applies::<T>(tile, g) {
        return blocked::block_tiles::<T>(tile, g);
    }
    let grid = Grid::new(tile, g);
    grid.per_sample() * grid.samples_per_chunk::<T>(g)
}

/// `y = epilogue(conv3x3(x, w) + b)` by Winograd `tile`, for `g` (stride 1,
/// dilation 1; any padding, groups and sizes), with `u` the weight transform
/// ([`transform_weights`] of `w` for [`gemm_cols`]). `y` is `[n, c_out, ho, wo]`,
/// written whole; the epilogue runs in the output transform. By blocks of
/// tiles where the products run in the micro-kernel (`blocked.rs`), else
/// phase by phase: the same bits.
pub(crate) fn forward<T: Float>(
    tile: Tile,
    g: &ConvGeometry,
    x: &[T],
    u: &[Vec<PackedLhs<T>>],
    b: Option<&[T]>,
    y: &mut [T],
    epilogue: Epilogue,
) {
    if blocked::applies::<T>(tile, g) && blocked::pays(tile, g) {
        blocked::forward(tile, g, x, u, b, y, epilogue);
    } else {
        forward_by_phases(tile, g, x, u, b, y, epilogue);
    }
}

/// [`forward`] one step at a time over chunks of samples: every tile's input
/// transform, then the α² products over all of them, then every output
/// transform (the path of f64, and of f32 below AVX2).
fn forward_by_phases<T: Float>(
    tile: Tile,
    g: &ConvGeometry,
    x: &[T],
    u: &[Vec<PackedLhs<T>>],
    b: Option<&[T]>,
    y: &mut [T],
    epilogue: Epilogue,
) {
    let grid = Grid::new(tile, g);
    let (cg, cog, a2) = (g.c_in_g(), g.c_out_g(), tile.alpha() * tile.alpha());
    let (tps, samples) = (grid.per_sample(), grid.samples_per_chunk::<T>(g));
    let (per_in, per_out) = (g.c_in * g.h * g.w, g.c_out * g.out_area());
    // From the scratch pool: written before read, kept for the next call.
    let mut v = Pooled::<T>::take(a2 * cg * samples * tps);
    let mut m = Pooled::<T>::take(a2 * cog * samples * tps);
    for (chunk, y_chunk) in y.chunks_mut(samples * per_out).enumerate() {
        let s = y_chunk.len() / per_out;
        let n0 = chunk * samples;
        let x_chunk = &x[n0 * per_in..(n0 + s) * per_in];
        let t_all = s * tps;
        for (grp, u) in u.iter().enumerate() {
            transform_input(&grid, g, x_chunk, grp, &mut v, t_all);
            // M[ξ] = U[ξ] · V[ξ]: one GEMM per ξ.
            let v_ref = &v[..a2 * cg * t_all];
            let split = crate::plan::gemm_split(a2, (cog, t_all, cg), (g.flops() / 2) as usize, 1);
            m[..a2 * cog * t_all].par_chunks_mut(cog * t_all).enumerate().for_each_init(
                Vec::new,
                |packed, (xi, m_xi)| {
                    let v_xi = mat(&v_ref[xi * t_all..], cg, t_all, a2 * t_all);
                    let out = mat_mut(m_xi, cog, t_all, t_all);
                    product(&u[xi], v_xi, out, split, packed);
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
                        inverse_channel::<T, 4, 2>(&grid, g, m_o, cog * t_all, bias, epilogue, out)
                    }
                    Tile::F4 => {
                        inverse_channel::<T, 6, 4>(&grid, g, m_o, cog * t_all, bias, epilogue, out)
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
///
/// The channel's planes are first copied into zero-padded planes in which
/// every tile's `α × α` patch lies inside ([`PaddedPlanes`]), so that the
/// sixteen patches are gathered without a bounds check or a division per
/// tile; on AVX-512 as sixteen-lane gathers (the per-element copy with
/// border checks was 7–10% of the MNIST and ResNet-20 train steps).
fn transform_channel<T: Float, const A: usize, const M: usize>(
    grid: &Grid,
    g: &ConvGeometry,
    planes: Planes<'_, T>,
    v_c: &mut [T],
    ld: usize,
) {
    let padded = PaddedPlanes::new::<A, M>(grid, g, planes, ld / grid.per_sample());
    let mut d: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut tiles = padded.lane_offsets(ld);
    for t0 in (0..ld).step_by(LANES) {
        let (offsets, max_offset) = tiles.next_group();
        gather_patches::<T>(&padded.data, offsets, max_offset, A, padded.width, &mut d);
        tiles.prepare_next();
        input_transform(grid.tile, &d, &mut out);
        store_lanes(&out, A * A, v_c, ld, t0, LANES.min(ld - t0));
    }
}

/// One channel's planes of every sample of a chunk, zero-padded so that the
/// `α × α` patch of tile `(ty, tx)` starts at row `ty·m`, column `tx·m`:
/// `rows·m + α − m` rows of `cols·m + α − m` values per sample, the input
/// at offset `(pad_top, pad_left)`.
struct PaddedPlanes<T: Float> {
    data: Pooled<T>,
    /// Values per padded row.
    width: usize,
    /// Values per padded plane (one sample).
    area: usize,
    /// Tile side `m` and tiles per row and per sample.
    m: usize,
    cols: usize,
    rows: usize,
}

/// The patch offsets of sixteen tiles at a time, the next group written
/// one group ahead: the gathers read an array stored long before, not one
/// still in the store buffer.
struct LaneOffsets<'a, T: Float> {
    planes: &'a PaddedPlanes<T>,
    at: TileCursor,
    /// Tiles not yet put in a group.
    left: usize,
    /// Two groups and their largest offsets, used in turn.
    groups: [([u32; LANES], usize); 2],
    current: usize,
}

impl<T: Float> LaneOffsets<'_, T> {
    /// The current group: offsets (lanes past the last tile repeat tile 0:
    /// transformed, never stored) and the largest of them.
    fn next_group(&mut self) -> (&[u32; LANES], usize) {
        let (offsets, max) = &self.groups[self.current];
        (offsets, *max)
    }

    /// Fills the other group with the following tiles and makes it current
    /// for the next [`LaneOffsets::next_group`].
    fn prepare_next(&mut self) {
        self.current ^= 1;
        self.fill(self.current);
    }

    fn fill(&mut self, slot: usize) {
        let lanes = LANES.min(self.left);
        self.left -= lanes;
        let mut max = 0;
        for l in 0..LANES {
            let offset = if l < lanes { self.planes.next_offset(&mut self.at) } else { 0 };
            self.groups[slot].0[l] = offset;
            max = max.max(offset as usize);
        }
        self.groups[slot].1 = max;
    }
}

/// Where [`PaddedPlanes::next_offset`] is: sample, tile row, tile column.
struct TileCursor {
    si: usize,
    ty: usize,
    tx: usize,
}

impl<T: Float> PaddedPlanes<T> {
    /// The input planes of `planes` (`g.h × g.w`) padded for patches of
    /// `A × A` of tiles of `M` (the forward's and dx's input transform).
    fn new<const A: usize, const M: usize>(
        grid: &Grid,
        g: &ConvGeometry,
        planes: Planes<'_, T>,
        samples: usize,
    ) -> Self {
        debug_assert_eq!((A, M), (grid.tile.alpha(), grid.tile.m()));
        let corner = (g.opts.padding[0], g.opts.padding[1]);
        Self::copied(grid, M, planes, samples, (g.h, g.w), corner, grid.padded_size())
    }

    /// The output-gradient planes of `planes` (`g.ho × g.wo`) padded with
    /// zeros to whole tiles of `M`: outputs past the map's edge were computed
    /// and dropped, so their gradient is 0 (dW's adjoint transform).
    fn for_outputs<const M: usize>(
        grid: &Grid,
        g: &ConvGeometry,
        planes: Planes<'_, T>,
        samples: usize,
    ) -> Self {
        let size = (grid.rows * M, grid.cols * M);
        Self::copied(grid, M, planes, samples, (g.ho, g.wo), (0, 0), size)
    }

    /// Planes of whole tiles of `M` (contents unspecified: every tile is
    /// written before the crop reads it), for the output transform to write
    /// into before the planes are cropped onto the output.
    fn blank<const M: usize>(grid: &Grid, samples: usize) -> Self {
        let (height, width) = (grid.rows * M, grid.cols * M);
        // Every tile's values are written before the crop reads them.
        let data = Pooled::<T>::take(samples * height * width);
        PaddedPlanes { data, width, area: height * width, m: M, cols: grid.cols, rows: grid.rows }
    }

    /// `samples` planes of `size = (h, w)` copied into planes of `(height,
    /// width)` with their top-left corner at `corner`, zeros around.
    fn copied(
        grid: &Grid,
        m: usize,
        planes: Planes<'_, T>,
        samples: usize,
        (h, w): (usize, usize),
        (top, left): (usize, usize),
        (height, width): (usize, usize),
    ) -> Self {
        let area = height * width;
        // Written whole: zeros around the copied planes.
        let mut data = Pooled::<T>::take(samples * area);
        copy_padded(planes, (h, w), (top, left), (height, width), &mut data[..samples * area]);
        PaddedPlanes { data, width, area, m, cols: grid.cols, rows: grid.rows }
    }

    fn first_tile(&self) -> TileCursor {
        TileCursor { si: 0, ty: 0, tx: 0 }
    }

    /// The offsets of the first `tiles` tiles' patches, sixteen at a time.
    fn lane_offsets(&self, tiles: usize) -> LaneOffsets<'_, T> {
        let mut offsets = LaneOffsets {
            planes: self,
            at: self.first_tile(),
            left: tiles,
            groups: [([0; LANES], 0); 2],
            current: 0,
        };
        offsets.fill(0);
        offsets
    }

    /// The offset of the cursor's patch, then the cursor moves to the next
    /// tile (along the row, then down, then to the next sample).
    fn next_offset(&self, at: &mut TileCursor) -> u32 {
        let offset = at.si * self.area + at.ty * self.m * self.width + at.tx * self.m;
        at.tx += 1;
        if at.tx == self.cols {
            at.tx = 0;
            at.ty += 1;
            if at.ty == self.rows {
                at.ty = 0;
                at.si += 1;
            }
        }
        // A chunk's V is bounded to tens of MiB: offsets fit 32 bits.
        u32::try_from(offset).expect("a chunk's planes fit 32-bit offsets")
    }
}

/// The planes of `planes` (`h × w`, one per sample, as many as `dst` holds
/// planes of `height × width`), each copied with its top-left corner at
/// `(top, left)`, zeros around: `dst` is written whole.
fn copy_padded<T: Float>(
    planes: Planes<'_, T>,
    (h, w): (usize, usize),
    (top, left): (usize, usize),
    (height, width): (usize, usize),
    dst: &mut [T],
) {
    for (si, dst) in dst.chunks_mut(height * width).enumerate() {
        let src = &planes.data[si * planes.stride + planes.first * h * w..][..h * w];
        // Padded row r holds row r − top; column q column q − left.
        for (r, row) in dst.chunks_mut(width).enumerate() {
            let Some(ih) = r.checked_sub(top).filter(|&ih| ih < h) else {
                row.fill(T::zero());
                continue;
            };
            let (lo, hi) = (left.min(width), (left + w).min(width));
            row[..lo].fill(T::zero());
            row[lo..hi].copy_from_slice(&src[ih * w..ih * w + (hi - lo)]);
            row[hi..].fill(T::zero());
        }
    }
}

/// The output transforms of every tile of one output channel, all samples
/// of the chunk: `m_o[ξ·ld + t]` holds `M[ξ][o][t]`; writes the planes whole.
///
/// Each tile's `m × m` outputs go into planes of whole tiles without a
/// bounds check, and those are cropped onto `y` row by row with the bias
/// and the epilogue: no per-element edge test, no division per tile.
fn inverse_channel<T: Float, const A: usize, const M: usize>(
    grid: &Grid,
    g: &ConvGeometry,
    m_o: &[T],
    ld: usize,
    bias: T,
    epilogue: Epilogue,
    mut out_planes: PlanesMut<'_, T>,
) {
    let mut v: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let samples = out_planes.samples;
    let t_all = grid.per_sample() * samples;
    let mut tiles = PaddedPlanes::<T>::blank::<M>(grid, samples);
    let mut at = tiles.first_tile();
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
        #[allow(clippy::needless_range_loop)] // `l` is a lane: it indexes every row of `out`
        for l in 0..lanes {
            let off = tiles.next_offset(&mut at) as usize;
            let width = tiles.width;
            for i in 0..M {
                let row: &mut [T; M] =
                    (&mut tiles.data[off + i * width..][..M]).try_into().expect("M values");
                for (j, d) in row.iter_mut().enumerate() {
                    *d = out[i * M + j][l];
                }
            }
        }
    }
    let (ho, wo) = (g.ho, g.wo);
    for si in 0..samples {
        let y_p = out_planes.plane(si, g.out_area());
        let src = &tiles.data[si * tiles.area..];
        for (r, dst) in y_p.chunks_mut(wo).enumerate().take(ho) {
            let row = &src[r * tiles.width..][..wo];
            match epilogue {
                Epilogue::None => dst.iter_mut().zip(row).for_each(|(d, &v)| *d = v + bias),
                Epilogue::Relu => dst.iter_mut().zip(row).for_each(|(d, &v)| *d = relu(v + bias)),
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
    let u = transform_weights(tile, gt, &g.dx_weight(w), gemm_cols::<T>(tile, gt));
    forward(tile, gt, dy, &u, None, dx, Epilogue::None);
}

/// `A · dy_tile · Aᵀ` of every tile of one output channel, all samples of the
/// chunk, into `dm_o` (`[ξ][t]`, rows `ld` apart): the gradient of `M[·][o][t]`.
/// The tiles' `m × m` patches are gathered from zero-padded planes, as in
/// [`transform_channel`].
fn adjoint_channel<T: Float, const A: usize, const M: usize>(
    grid: &Grid,
    g: &ConvGeometry,
    planes: Planes<'_, T>,
    dm_o: &mut [T],
    ld: usize,
) {
    let padded = PaddedPlanes::for_outputs::<M>(grid, g, planes, ld / grid.per_sample());
    let mut d: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
    let mut tiles = padded.lane_offsets(ld);
    for t0 in (0..ld).step_by(LANES) {
        let (offsets, max_offset) = tiles.next_group();
        gather_patches::<T>(&padded.data, offsets, max_offset, M, padded.width, &mut d);
        tiles.prepare_next();
        output_adjoint(grid.tile, &d, &mut out);
        store_lanes(&out, A * A, dm_o, ld, t0, LANES.min(ld - t0));
    }
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
            let split = crate::plan::gemm_split(a2, (cog, t_all, cg), (g.flops() / 2) as usize, 1);
            let parts = crate::plan::shared_axis_parts(split, t_all);
            let mut partials = Pooled::<T>::take(a2 * parts * cog * cg);
            partials.par_chunks_mut(cog * cg).enumerate().for_each(|(task, part)| {
                let (xi, p) = (task / parts, task % parts);
                let (t0, t1) = (p * t_all / parts, (p + 1) * t_all / parts);
                let dm_xi = mat(&dm_ref[xi * t_all + t0..], cog, t1 - t0, a2 * t_all);
                let v_xi = mat(&v_ref[xi * t_all + t0..], cg, t1 - t0, a2 * t_all);
                cnn_tensor::gemm_nt(dm_xi, v_xi, T::zero(), mat_mut(part, cog, cg, cg))
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
                let split =
                    crate::plan::gemm_split(a2, (cog, t_all, cg), (g.flops() / 2) as usize, 1);
                let parts = crate::plan::shared_axis_parts(split, t_all);
                tasks.extend((0..parts).map(|_| (cog * cg * t_all / parts) as f64));
            } else {
                let blocks =
                    crate::plan::gemm_split(a2, (cog, t_all, cg), (g.flops() / 2) as usize, 1)
                        .blocks(cog, t_all, (8, 48));
                tasks.extend(blocks.iter().map(|&(r, c)| (r * c * cg) as f64));
            }
        }
    }
    tasks
}
