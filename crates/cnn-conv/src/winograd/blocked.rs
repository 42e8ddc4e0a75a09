//! Winograd's forward by blocks of tiles, each block taken through all
//! three steps by one task while its data is in cache:
//!
//! ```text
//! for each block of Tb tiles (in parallel):
//!   V[ξ]  [Cg, Tb]   input transforms, written straight into the micro-kernel's panels
//!   M[ξ]  [Cog, Tb]  = U[ξ] · V[ξ]   α² products on the prepacked V
//!   y     tiles      Aᵀ · M[·][o][t] · A (+ bias, epilogue), written into y
//! ```
//!
//! The phase-by-phase forward (`super::forward_by_phases`) transforms every
//! tile of a chunk of samples, then runs the α² products over all of them,
//! then the output transforms: `V` and `M` (16 MiB a chunk) went through
//! memory between the steps, the products packed `V` again, and on the Zen 2
//! here only 29% of the 32-channel 16×16 forward was the micro-kernel (the
//! rest: reading `M` back 15%, writing `V` 7%, packing it 10%). A block's `V`
//! and `M` take about [`BLOCK_BYTES`].
//!
//! Every output is the same sums as on the phase-by-phase path (the same
//! transforms, each `M[ξ][o][t]` the same chain of multiply-adds over the
//! input channels, whatever block its tile falls in), so the two give the
//! same bits, and the block size may follow the thread count without
//! changing a result.

use cnn_tensor::{gemm_prepacked, Float, PackedLhs, RhsPanels};
use rayon::prelude::*;

use super::transforms::{gather_patches, input_transform, output_transform, Lanes};
use super::transforms::{LANES, MAX_ALPHA};
use super::{copy_padded, Grid, Planes, Tile};
use crate::epilogue::{relu, Epilogue};
use crate::matrix::{mat_mut, SharedOut};
use crate::ConvGeometry;
use cnn_tensor::scratch::Scratch as Pooled;

/// Bytes of a block's `V` and `M` together: half of a Zen 2 core's L2
/// (128 KiB to 1 MiB measured the same on ResNet-20's Winograd layers).
const BLOCK_BYTES: usize = 256 << 10;

/// Whether the forward runs by blocks: when the products run in the
/// micro-kernel, which can read `V` already packed (f32 at AVX2 or AVX-512),
/// and a channel's padded planes of the whole batch have 32-bit offsets.
pub(super) fn applies<T: Float>(tile: Tile, g: &ConvGeometry) -> bool {
    let (height, width) = Grid::new(tile, g).padded_size();
    let area = height * width;
    PackedLhs::<T>::uses_kernel() && g.n.checked_mul(area).is_some_and(|v| v <= u32::MAX as usize)
}

/// Parallel tasks the blocks should make: four a thread.
fn tasks() -> usize {
    4 * rayon::current_num_threads()
}

/// Whether the batch has tiles enough for blocks of 32 or more, four a
/// thread. With fewer (ResNet-18's layers at batch 1: 196 and 49 tiles)
/// blocks of 16 tiles read each `U[ξ]` once per 16 tiles, and the
/// phase-by-phase path, parallel over channels and `ξ`, was 7% faster on
/// that forward. The choice changes no bit (the paths give the same).
pub(super) fn pays(tile: Tile, g: &ConvGeometry) -> bool {
    g.n * Grid::new(tile, g).per_sample() >= 32 * tasks()
}

/// Tiles per block: as many as keep `V` and `M` (α² values per tile and
/// channel) near [`BLOCK_BYTES`], a multiple of the 16 lanes, at least 32.
pub(super) fn block_tiles<T>(tile: Tile, g: &ConvGeometry) -> usize {
    let a2 = tile.alpha() * tile.alpha();
    let per_tile = a2 * (g.c_in_g() + g.c_out_g()) * std::mem::size_of::<T>();
    (BLOCK_BYTES / per_tile).max(32).div_ceil(LANES) * LANES
}

/// `y = epilogue(conv3x3(x, w) + b)` by Winograd `tile` a block of tiles at a
/// time, `u` the weight transform packed for [`block_tiles`] columns. `y`
/// is `[n, c_out, ho, wo]`, written whole. Needs [`applies`].
pub(super) fn forward<T: Float>(
    tile: Tile,
    g: &ConvGeometry,
    x: &[T],
    u: &[Vec<PackedLhs<T>>],
    b: Option<&[T]>,
    y: &mut [T],
    epilogue: Epilogue,
) {
    match tile {
        Tile::F2 => forward_tile::<T, 4, 2>(tile, g, x, u, b, y, epilogue),
        Tile::F4 => forward_tile::<T, 6, 4>(tile, g, x, u, b, y, epilogue),
    }
}

/// [`forward`] for patches of `A × A` and output tiles of `M × M`.
fn forward_tile<T: Float, const A: usize, const M: usize>(
    tile: Tile,
    g: &ConvGeometry,
    x: &[T],
    u: &[Vec<PackedLhs<T>>],
    b: Option<&[T]>,
    y: &mut [T],
    epilogue: Epilogue,
) {
    let grid = Grid::new(tile, g);
    let (cg, cog) = (g.c_in_g(), g.c_out_g());
    let per_in = g.c_in * g.h * g.w;
    let t_all = g.n * grid.per_sample();
    // Four blocks a thread at least (`pays` saw to it that they have 32
    // tiles or more): the blocks change no sum, so they may follow the thread
    // count without changing a bit.
    let tb = block_tiles::<T>(tile, g).min(t_all / tasks() / LANES * LANES).max(LANES);
    assert_eq!(y.len(), g.n * g.c_out * g.out_area(), "y is [n, c_out, ho, wo]");
    let out = SharedOut(y.as_mut_ptr());
    // Each input channel's planes, zero-padded so that every patch lies
    // inside (`[c][sample][height × width]`): one pass over the group's input,
    // then gathers without checks. One buffer of the calling thread's pool.
    let (height, width) = grid.padded_size();
    let area = height * width;
    let corner = (g.opts.padding[0], g.opts.padding[1]);
    let mut padded = Pooled::<T>::take(cg * g.n * area);
    for (grp, u) in u.iter().enumerate() {
        padded[..cg * g.n * area].par_chunks_mut(g.n * area).enumerate().for_each(|(c, dst)| {
            let planes = Planes { data: x, first: grp * cg + c, stride: per_in };
            copy_padded(planes, (g.h, g.w), corner, (height, width), dst);
        });
        let padded = Padded { data: &padded[..cg * g.n * area], channel: g.n * area, width, area };
        let bias = |o: usize| b.map_or(T::zero(), |b| b[grp * cog + o]);
        (0..t_all.div_ceil(tb)).into_par_iter().for_each(|blk| {
            let t0 = blk * tb;
            let tiles = tb.min(t_all - t0);
            let block = Block { grid: &grid, g, t0, tiles };
            let layout = u[0].rhs_panels(tiles).expect("the micro-kernel runs (`applies`)");
            let (v_len, m_len) = (layout.len(), cog * tiles);
            // From this thread's pool: written before read (V whole, M by β = 0).
            let mut vm = Pooled::<T>::take(A * A * (v_len + m_len));
            let (v, m) = vm[..A * A * (v_len + m_len)].split_at_mut(A * A * v_len);
            block.transform_input::<A, T>(&padded, v, &layout);
            for (xi, (v_xi, m_xi)) in v.chunks(v_len).zip(m.chunks_mut(m_len)).enumerate() {
                let m_xi = mat_mut(m_xi, cog, tiles, tiles);
                gemm_prepacked(&u[xi], v_xi, tiles, T::zero(), m_xi)
                    .expect("shapes agree by construction");
            }
            for o in 0..cog {
                let oc = grp * cog + o;
                // SAFETY: `y` holds `n` samples of `c_out` planes of `ho·wo` (asserted above);
                // this task alone writes the outputs of tiles `t0 .. t0 + tiles` (the blocks
                // are disjoint), and `y` stays borrowed mutably until every task has returned.
                unsafe { block.inverse::<A, M, T>(m, m_len, o, oc, bias(o), epilogue, &out) };
            }
        });
    }
}

/// The group's input channels, zero-padded: channel `c`'s plane of sample
/// `si` at `c·channel + si·area`, rows of `width` values.
struct Padded<'a, T> {
    data: &'a [T],
    channel: usize,
    width: usize,
    area: usize,
}

/// One block of tiles: tiles `t0 .. t0 + tiles` of the whole batch (tile
/// `t` is sample `t / per_sample`, then row by row).
struct Block<'a> {
    grid: &'a Grid,
    g: &'a ConvGeometry,
    t0: usize,
    tiles: usize,
}

impl Block<'_> {
    /// Sample, tile row and tile column of the block's tile `t`.
    fn place(&self, t: usize) -> (usize, usize, usize) {
        let t = self.t0 + t;
        let per = self.grid.per_sample();
        let (si, r) = (t / per, t % per);
        (si, r / self.grid.cols, r % self.grid.cols)
    }

    /// `V[ξ]` of every channel for the block's tiles, each `V[ξ]` in the
    /// micro-kernel's panels (`layout`, from `ξ·layout.len()`), 16 tiles a
    /// lane group; lanes past the block's tiles are written as 0, as the
    /// panels' padding must be.
    fn transform_input<const A: usize, T: Float>(
        &self,
        padded: &Padded<'_, T>,
        v: &mut [T],
        layout: &RhsPanels,
    ) {
        let (m, width, area) = (self.grid.tile.m(), padded.width, padded.area);
        let v_len = layout.len();
        // The patch offsets of each lane group, the same in every channel's
        // planes; lane groups cover the panels' padded columns.
        let groups: Vec<([u32; LANES], usize, usize)> = (0..layout.padded_cols() / LANES)
            .map(|q| {
                let mut offsets = [0u32; LANES];
                let lanes = LANES.min(self.tiles.saturating_sub(q * LANES));
                for (l, off) in offsets.iter_mut().enumerate().take(lanes) {
                    let (si, ty, tx) = self.place(q * LANES + l);
                    let o = si * area + ty * m * width + tx * m;
                    *off = u32::try_from(o).expect("a channel's planes fit 32-bit offsets");
                }
                let max = offsets.iter().max().copied().unwrap_or(0) as usize;
                (offsets, max, lanes)
            })
            .collect();
        let mut d: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
        let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
        for (c, data) in padded.data.chunks(padded.channel).enumerate() {
            for (q, (offsets, max, lanes)) in groups.iter().enumerate() {
                gather_patches::<T>(data, offsets, *max, A, width, &mut d);
                input_transform(self.grid.tile, &d, &mut out);
                let start = layout.index(c, q * LANES);
                for (xi, o) in out.iter().enumerate().take(A * A) {
                    let dst: &mut [T; LANES] =
                        (&mut v[xi * v_len + start..][..LANES]).try_into().expect("LANES values");
                    *dst = *o;
                    dst[*lanes..].fill(T::zero());
                }
            }
        }
    }

    /// The output transforms of output channel `o` (of the group; `oc` in
    /// `y`) of the block's tiles, from `m` (`M[ξ]` at `ξ·m_len`, `[Cog,
    /// tiles]`), written into `y` with the bias and the epilogue; outputs
    /// past the map's edge dropped.
    ///
    /// # Safety
    /// `y` holds `n·c_out` planes of `ho·wo`, and no other live task writes
    /// the outputs of this block's tiles in plane `oc`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn inverse<const A: usize, const M: usize, T: Float>(
        &self,
        m: &[T],
        m_len: usize,
        o: usize,
        oc: usize,
        bias: T,
        epilogue: Epilogue,
        y: &SharedOut<T>,
    ) {
        let (ho, wo, c_out) = (self.g.ho, self.g.wo, self.g.c_out);
        let mut v: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
        let mut out: Lanes<T> = [[T::zero(); LANES]; MAX_ALPHA * MAX_ALPHA];
        for q in 0..self.tiles.div_ceil(LANES) {
            let lanes = LANES.min(self.tiles - q * LANES);
            for (xi, v_xi) in v.iter_mut().enumerate().take(A * A) {
                let src = &m[xi * m_len + o * self.tiles + q * LANES..][..lanes];
                v_xi[..lanes].copy_from_slice(src);
            }
            output_transform(self.grid.tile, &v, &mut out);
            #[allow(clippy::needless_range_loop)] // `l` is a lane: it indexes every row of `out`
            for l in 0..lanes {
                let (si, ty, tx) = self.place(q * LANES + l);
                let plane = (si * c_out + oc) * ho * wo;
                let (rows, cols) = (M.min(ho - ty * M), M.min(wo - tx * M));
                for i in 0..rows {
                    let at = plane + (ty * M + i) * wo + tx * M;
                    // SAFETY: row `ty·M + i < ho`, columns `tx·M .. tx·M + cols ≤ wo` of
                    // plane `oc` of sample `si < n`: inside `y`, and this tile's alone (the
                    // caller's contract).
                    let dst = unsafe { std::slice::from_raw_parts_mut(y.0.add(at), cols) };
                    for (j, d) in dst.iter_mut().enumerate() {
                        let value = out[i * M + j][l] + bias;
                        *d = match epilogue {
                            Epilogue::None => value,
                            Epilogue::Relu => relu(value),
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::winograd::{forward_by_phases, transform_weights};
    use crate::Conv2dOptions;

    /// The blocked forward gives the bits of the phase-by-phase one: F(2×2)
    /// and F(4×4); maps whose tiles overhang the edge; padding 0, 1 and 2;
    /// groups; a bias with and without the ReLU; batches whose tiles fill
    /// blocks exactly, leave a ragged last block, or fill less than one lane
    /// group; 3 to 96 channels.
    #[test]
    fn blocks_give_the_bits_of_the_phases() {
        if !PackedLhs::<f32>::uses_kernel() {
            return; // no micro-kernel at this SIMD level: the phases run alone
        }
        let cases = [
            // (n, c_in, side, c_out, padding, groups)
            (4, 16, 16, 32, 1, 1),
            (3, 32, 13, 32, 1, 1),
            (2, 8, 7, 12, 0, 2),
            (1, 3, 5, 4, 2, 1),
            (5, 96, 8, 64, 1, 1),
            (64, 16, 8, 16, 1, 1),
        ];
        for (n, c_in, side, c_out, padding, groups) in cases {
            let opts = Conv2dOptions::default().with_padding(padding).with_groups(groups);
            let g = ConvGeometry::new(&[n, c_in, side, side], &[c_out, c_in / groups, 3, 3], &opts)
                .unwrap();
            let x: Vec<f32> =
                (0..n * c_in * side * side).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> =
                (0..c_out * c_in / groups * 9).map(|i| (i as f32 * 0.11).cos()).collect();
            let b: Vec<f32> = (0..c_out).map(|o| o as f32 * 0.05 - 0.3).collect();
            for tile in [Tile::F2, Tile::F4] {
                let u = transform_weights(tile, &g, &w, block_tiles::<f32>(tile, &g));
                for (bias, epilogue) in [
                    (None, Epilogue::None),
                    (Some(&b[..]), Epilogue::None),
                    (Some(&b), Epilogue::Relu),
                ] {
                    let len = n * c_out * g.out_area();
                    let (mut blocked, mut phases) = (vec![f32::NAN; len], vec![0.0; len]);
                    forward(tile, &g, &x, &u, bias, &mut blocked, epilogue);
                    forward_by_phases(tile, &g, &x, &u, bias, &mut phases, epilogue);
                    let diff =
                        blocked.iter().zip(&phases).filter(|(a, b)| a.to_bits() != b.to_bits());
                    assert_eq!(
                        diff.count(),
                        0,
                        "n {n} c {c_in}->{c_out} side {side} pad {padding} groups {groups} \
                         {tile:?} bias {} {epilogue:?}",
                        bias.is_some()
                    );
                }
            }
        }
    }

    /// On 1, 2, 3 and 16 threads (blocks of other sizes each time) the
    /// blocked forward gives the same bits, and ResNet-20's 64-channel layer
    /// at batch 128 takes the blocked path (in f32, where the micro-kernel
    /// runs) while ResNet-18's 128-channel layer at batch 1 (49 tiles) does not.
    #[test]
    fn thread_counts_change_the_blocks_not_the_bits() {
        let opts = Conv2dOptions::default().with_padding(1);
        let g = ConvGeometry::new(&[64, 16, 8, 8], &[16, 16, 3, 3], &opts).unwrap();
        let x: Vec<f32> = (0..64 * 16 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..16 * 16 * 9).map(|i| (i as f32 * 0.11).cos()).collect();
        let u = transform_weights(Tile::F4, &g, &w, block_tiles::<f32>(Tile::F4, &g));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = vec![0f32; 64 * 16 * 64];
            pool.install(|| forward(Tile::F4, &g, &x, &u, None, &mut y, Epilogue::None));
            y
        };
        let one = run(1);
        for threads in [2, 3, 16] {
            let diff =
                run(threads).iter().zip(&one).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(diff, 0, "{threads} threads");
        }
        let resnet20 = ConvGeometry::new(&[128, 64, 8, 8], &[64, 64, 3, 3], &opts).unwrap();
        let resnet18 = ConvGeometry::new(&[1, 128, 28, 28], &[128, 128, 3, 3], &opts).unwrap();
        let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        two.install(|| {
            assert_eq!(applies::<f32>(Tile::F4, &resnet20), PackedLhs::<f32>::uses_kernel());
            assert!(!applies::<f64>(Tile::F4, &resnet20), "f64 has no micro-kernel");
            assert!(pays(Tile::F4, &resnet20));
            assert!(!pays(Tile::F4, &resnet18));
        });
    }
}
