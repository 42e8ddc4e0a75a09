//! Winograd's transforms for F(2×2, 3×3) and F(4×4, 3×3): the 1-D matrices
//! of Lavin & Gray written out (zeros skipped), applied separably to
//! [`LANES`] tiles at once, the weight transform `G·w·Gᵀ` as nine scaled plane
//! sums, and the adjoints the backward pass needs. Pure arithmetic: no
//! shapes of a convolution, no threads beyond the weight transform's.

use cnn_tensor::{Float, PackedLhs};
use rayon::prelude::*;

use crate::matrix::mat;
use crate::ConvGeometry;

/// Tiles transformed at once, one per vector lane (16 f32 in an AVX-512 register).
pub(super) const LANES: usize = 16;
/// The largest patch side, α of F(4×4, 3×3).
pub(super) const MAX_ALPHA: usize = 6;

/// The Winograd variants: output tile side `m` of F(m×m, 3×3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tile {
    /// F(2×2, 3×3): 4×4 patches, 16 GEMMs.
    F2,
    /// F(4×4, 3×3): 6×6 patches, 36 GEMMs.
    F4,
}

impl Tile {
    /// The output tile side `m`.
    pub(crate) fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    /// The input patch side `α = m + 2`.
    pub(crate) fn alpha(self) -> usize {
        self.m() + 2
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

pub(super) type Lanes<T> = [[T; LANES]; MAX_ALPHA * MAX_ALPHA];

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
    pub(super) fn input_transform<T: Float>(tile: Tile, d: &Lanes<T>, out: &mut Lanes<T>) = input_transform_body
}

cnn_tensor::simd_fn! {
    /// The output transform, compiled per SIMD level.
    pub(super) fn output_transform<T: Float>(tile: Tile, v: &Lanes<T>, out: &mut Lanes<T>) = output_transform_body
}

/// `d[i·α + j][l] = data[offsets[l] + i·width + j]`: the `α × α` patches
/// at `offsets` (none past `max_offset`), one per lane, every patch inside
/// `data`. The caller states the largest offset so that the array is not
/// read back right after it was written (a store-forwarding stall that was
/// most of this function's time).
///
/// On AVX-512 with f32, sixteen-lane gathers; on AVX2, a masked load of each
/// patch row and 8×8 register transposes (AVX2's gathers are slower than
/// that on the Zen 2); elsewhere a copy per element. All move the same
/// values: the transforms see the same bits.
pub(super) fn gather_patches<T: Float>(
    data: &[T],
    offsets: &[u32; LANES],
    max_offset: usize,
    alpha: usize,
    width: usize,
    d: &mut Lanes<T>,
) {
    let last = max_offset + (alpha - 1) * (width + 1);
    assert!(last < data.len() && alpha <= MAX_ALPHA, "patches inside the planes");
    debug_assert!(offsets.iter().all(|&o| o as usize <= max_offset));
    // The gathers index with signed 32-bit lanes: planes past 2^31 values
    // (8 GiB of f32 in one chunk) take the element copy.
    #[cfg(target_arch = "x86_64")]
    if cnn_tensor::simd::level() >= cnn_tensor::simd::SimdLevel::Avx512 && last <= i32::MAX as usize
    {
        if let (Some(src), Some(dst)) = (T::as_f32(data), as_f32_lanes(d)) {
            // SAFETY: AVX-512F is present (the level says so); every index read,
            // offsets[l] + i·width + j ≤ `last` ≤ i32::MAX, is inside `src` (asserted
            // above) and positive as a signed 32-bit lane.
            unsafe { gather_patches_avx512(src, offsets, alpha, width, dst) };
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if cnn_tensor::simd::level() == cnn_tensor::simd::SimdLevel::Avx2 {
        if let (Some(src), Some(dst)) = (T::as_f32(data), as_f32_lanes(d)) {
            // SAFETY: AVX2 is present (the level says so); every patch row
            // `offsets[l] + i·width .. + alpha` lies inside `src` (asserted above).
            unsafe {
                match alpha {
                    4 => gather_patches_avx2::<4>(src, offsets, width, dst),
                    6 => gather_patches_avx2::<6>(src, offsets, width, dst),
                    _ => gather_patches_scalar(data, offsets, alpha, width, d),
                }
            }
            return;
        }
    }
    gather_patches_scalar(data, offsets, alpha, width, d);
}

/// [`gather_patches`] one element at a time: every level's path, and the
/// twin the gathers are tested against.
fn gather_patches_scalar<T: Float>(
    data: &[T],
    offsets: &[u32; LANES],
    alpha: usize,
    width: usize,
    d: &mut Lanes<T>,
) {
    for (l, &off) in offsets.iter().enumerate() {
        let off = off as usize;
        for i in 0..alpha {
            let row = &data[off + i * width..][..alpha];
            for (j, &v) in row.iter().enumerate() {
                d[i * alpha + j][l] = v;
            }
        }
    }
}

/// The lanes of `d` as f32, when `T` is f32.
fn as_f32_lanes<T: Float>(d: &mut Lanes<T>) -> Option<&mut [[f32; LANES]; MAX_ALPHA * MAX_ALPHA]> {
    let flat = T::as_f32_mut(d.as_flattened_mut())?;
    let rows: &mut [[f32; LANES]] = flat.as_chunks_mut::<LANES>().0;
    rows.try_into().ok()
}

/// [`gather_patches`] with one 16-lane gather per patch element.
///
/// # Safety
/// The CPU has AVX-512F; every `offsets[l] + i·width + j` (`i, j < alpha`)
/// indexes `src` and is at most `i32::MAX` (the gathers' lanes are signed).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_patches_avx512(
    src: &[f32],
    offsets: &[u32; LANES],
    alpha: usize,
    width: usize,
    d: &mut [[f32; LANES]; MAX_ALPHA * MAX_ALPHA],
) {
    use std::arch::x86_64::*;
    // SAFETY: 16 u32 values are 64 readable bytes.
    let base = unsafe { _mm512_loadu_si512(offsets.as_ptr().cast()) };
    for i in 0..alpha {
        for j in 0..alpha {
            let idx = _mm512_add_epi32(base, _mm512_set1_epi32((i * width + j) as i32));
            // SAFETY: every lane's index is inside `src` (the caller's contract).
            let v = unsafe { _mm512_i32gather_ps::<4>(idx, src.as_ptr()) };
            // SAFETY: a lane row is 16 f32.
            unsafe { _mm512_storeu_ps(d[i * alpha + j].as_mut_ptr(), v) };
        }
    }
}

/// [`gather_patches`] by rows: for each patch row `i`, the row of each of 8
/// lanes in one masked load (`ALPHA` of 8 values, nothing read past them),
/// then an 8×8 transpose in registers gives the 8 lanes of each of the
/// row's `ALPHA` elements, stored whole.
///
/// # Safety
/// The CPU has AVX2; every `offsets[l] + i·width + j` (`i, j < ALPHA`)
/// indexes `src`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_patches_avx2<const ALPHA: usize>(
    src: &[f32],
    offsets: &[u32; LANES],
    width: usize,
    d: &mut [[f32; LANES]; MAX_ALPHA * MAX_ALPHA],
) {
    use std::arch::x86_64::*;
    let bits: [i32; 8] = std::array::from_fn(|j| if j < ALPHA { -1 } else { 0 });
    // SAFETY: 8 i32 values are 32 readable bytes.
    let mask = unsafe { _mm256_loadu_si256(bits.as_ptr().cast()) };
    for i in 0..ALPHA {
        for half in 0..LANES / 8 {
            let r: [__m256; 8] = std::array::from_fn(|k| {
                let at = offsets[8 * half + k] as usize + i * width;
                // SAFETY: the first ALPHA values at `at` lie inside `src` (the
                // caller's contract); the masked ones are not read.
                unsafe { _mm256_maskload_ps(src.as_ptr().add(at), mask) }
            });
            // The 8×8 transpose: t pairs lanes, s pairs pairs, o halves.
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let s = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            for (j, row) in d[i * ALPHA..(i + 1) * ALPHA].iter_mut().enumerate() {
                // Element j of the 8 lanes: low halves for j < 4, high ones after.
                let o = if j < 4 {
                    _mm256_permute2f128_ps::<0x20>(s[j], s[j + 4])
                } else {
                    _mm256_permute2f128_ps::<0x31>(s[j - 4], s[j])
                };
                // SAFETY: a lane row is 16 f32; half·8 + 8 ≤ 16.
                unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * half), o) };
            }
        }
    }
}

/// Writes `lanes` of each of the first `rows` lane rows of `out` to
/// `dst[row·ld + t0 ..]`: a transform's result, back in `[ξ][t]` order.
#[inline(always)]
pub(super) fn store_lanes<T: Float>(
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
pub(super) fn weight_coefficients<T: Float>(tile: Tile) -> Vec<[T; 9]> {
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
    pub(super) fn output_adjoint<T: Float>(tile: Tile, dy: &Lanes<T>, out: &mut Lanes<T>) = output_adjoint_body
}

/// Positions of `dU` turned into dW taps per task (9 tap rows of this many
/// stay in L1 while the α² planes stream past once).
pub(super) const TAP_BLOCK: usize = 512;

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
    pub(super) fn gather_taps<T: Float>(
        planes: &[T],
        len: usize,
        p0: usize,
        coef: &[[T; 9]],
        taps: &mut [[T; TAP_BLOCK]; 9],
        n: usize,
    ) = gather_taps_body
}

#[cfg(test)]
mod tests {
    /// The AVX-512 gathers and the AVX2 transposes move exactly what the
    /// element-by-element copy moves, for both tile sizes and every lane's
    /// patch anywhere in the planes, the last one ending at the planes' end.
    #[test]
    fn gathered_patches_are_the_copied_ones() {
        let data: Vec<f32> = (0..40 * 37).map(|v| (v as f32 * 0.37).sin()).collect();
        for alpha in [4, 6] {
            let last = 40 * 37 - 1 - (alpha - 1) * 38;
            let offsets: [u32; LANES] = std::array::from_fn(|l| {
                if l == LANES - 1 {
                    last as u32
                } else {
                    ((l * 97 + 13) % (34 * 37 - 1)) as u32
                }
            });
            let (mut want, mut got) = ([[0f32; LANES]; 36], [[0f32; LANES]; 36]);
            gather_patches_scalar(&data, &offsets, alpha, 37, &mut want);
            gather_patches(&data, &offsets, last, alpha, 37, &mut got);
            assert_eq!(want, got, "alpha {alpha}");
            assert!(want[alpha * alpha - 1].iter().any(|&v| v != 0.0));
        }
    }

    use super::*;

    /// The gathers at every SIMD level (AVX-512, AVX2, the copy), each held
    /// to the copy by the test above in a child process.
    #[test]
    fn every_simd_level_gathers_the_copied_patches() {
        for level in cnn_tensor::simd::levels() {
            let env = [("CNN_SIMD", level.name())];
            cnn_tensor::simd::rerun_tests("gathered_patches_are_the_copied_ones", &env).unwrap();
        }
    }

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
