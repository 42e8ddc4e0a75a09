//! `C ← A·Bᵀ + β·C` with both operands read along their rows: the weight
//! gradient's product (`dW = dy · colᵀ`, Winograd's `dU = dM · Vᵀ`), whose
//! shared axis (output positions, tiles) is long and whose output is small.
//!
//! A GEMM on packed panels needs, for every step of the shared axis, a
//! vector across rows of one operand: here both operands are laid out along
//! the shared axis, so packing them is a transpose of all their values, for
//! only `m·n / (m + n)` multiply-adds per value (9 in ResNet-20's first
//! stage). matrixmultiply spends 40% of its dW time in that packing (the
//! ResNet-20 profile on the Zen 2). This kernel packs nothing: each output
//! is a dot product of two contiguous rows, kept in 16 lanes of partial
//! sums (lane `l` sums the products at positions `≡ l mod 16`, one chain of
//! fused multiply-adds in order), reduced once at the end by a fixed tree.
//! A block of `MR × NR` outputs shares its loads: `MR + NR` row loads feed
//! `MR·NR` fused multiply-adds.
//!
//! The bits: every output is that lane chain and that tree, whatever the
//! block shape, the chunking of the shared axis or the vector width, so the
//! AVX2 kernel (each 16 lanes in two ymm registers) and the AVX-512 one give
//! the same bits as the scalar twin [`gemm_nt_lanes`]. At the portable level,
//! for f64 and for rows that are not contiguous, the product runs in
//! matrixmultiply instead (other sums, other bits).

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::{gemm, Error, Float, Result};

/// Lanes of partial sums per output: the shared axis is summed in 16
/// interleaved chains, reduced by [`reduce_lanes`].
pub const NT_LANES: usize = 16;

/// Shared-axis values per chunk are chosen so that one chunk of every row of
/// `B` (re-read for each block of `A`'s rows) stays in half the 512 KiB L2
/// of the smallest core here (Zen 2)...
#[cfg(target_arch = "x86_64")]
const B_CHUNK_BYTES: usize = 256 << 10;
/// ...and at most this many: 16 × 144 × 4096 on one Zen 2 core ran at 49
/// GFLOP/s with chunks of 3072 (the rows of `A` and `B` no longer stay in L1
/// across a block), 55–59 with 512–1024, 47 with 256 and 39 with 128 (the
/// lanes stored and reloaded between chunks, and the call per block, then
/// weigh on 16 steps).
#[cfg(target_arch = "x86_64")]
const MAX_CHUNK: usize = 1024;

/// `C ← A·Bᵀ + β·C` for `A: [m, k]`, `B: [n, k]`, `C: [m, n]`.
///
/// The lane kernel of this module runs, bitwise equal to [`gemm_nt_lanes`],
/// when it pays ([`gemm_nt_uses_kernel`]): f32, rows of `A` and `B`
/// contiguous (unit column stride), SIMD level AVX2 or AVX-512, and a small
/// output and a long shared axis (`m·n ≤ 64·(m + n)`, `m·n ≤ 65536`, and
/// `k ≥ 256`, or `k ≥ 128` for `m·n ≤ 16·(m + n)`: packing for
/// matrixmultiply then costs more than it saves, and the lanes' reduction
/// less). Anything else runs matrixmultiply's GEMM.
/// `C` may have any strides. With `beta == 0`, `C` is written without being read.
/// For f32 under a bf16 scope ([`crate::with_precision`]) the rule is the
/// same at every SIMD level (rows contiguous, and the shape rule): where it
/// holds the product is [`crate::gemm_nt_lanes_bf16`]'s, bit for bit (16 lanes of
/// bf16 pairs, `VDPBF16PS` where the CPU has it), else [`gemm`]`(1, A, Bᵀ,
/// β, C)` in bf16 (summed in order of `k`).
///
/// # Errors
/// [`Error::Shape`] when the shapes do not agree.
pub fn gemm_nt<T: Float>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    beta: T,
    c: ArrayViewMut2<'_, T>,
) -> Result<()> {
    if crate::precision::bf16_for::<T>() && crate::PackedLhs::<T>::uses_kernel() {
        check_dims(&a, &b, &c)?;
        if bf16_lanes_apply(&a, &b) {
            crate::gemm_nt_bf16::product(a, b, beta, c);
            return Ok(());
        }
        return gemm(T::one(), a, b.t(), beta, c);
    }
    product(a, b, beta, c, true)
}

/// [`gemm_nt`], with the lane kernel taken wherever it can run when
/// `when_it_pays` is false (for the tests of its short and ragged cases).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, unused_mut))]
fn product<T: Float>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    beta: T,
    mut c: ArrayViewMut2<'_, T>,
    when_it_pays: bool,
) -> Result<()> {
    check_dims(&a, &b, &c)?;
    #[cfg(target_arch = "x86_64")]
    if lane_kernel_can_run(&a, &b) && (!when_it_pays || lanes_pay(&a, &b)) {
        let (m, k) = a.dim();
        let n = b.nrows();
        let beta = [beta];
        let beta = T::as_f32(&beta).expect("lane_kernel_can_run checked T is f32")[0];
        let (rsc, csc) = (c.strides()[0], c.strides()[1]);
        // SAFETY: T is f32 (checked by `lane_kernel_can_run`), so the views'
        // pointers address f32 values; `a` and `b` have m (n) rows of k
        // contiguous values at their row strides, `c` is a unique view of
        // m × n values at (rsc, csc); the SIMD level was checked.
        unsafe {
            lanes_f32(
                Operand { ptr: a.as_ptr().cast(), rows: m, stride: a.strides()[0] },
                Operand { ptr: b.as_ptr().cast(), rows: n, stride: b.strides()[0] },
                k,
                beta,
                Out { ptr: c.as_mut_ptr().cast(), rsc, csc },
                LaneKernel::F32,
            );
        }
        return Ok(());
    }
    gemm(T::one(), a, b.t(), beta, c)
}

/// Whether [`gemm_nt`] runs a lane kernel for these operands: the f32 one,
/// or under a bf16 scope the bf16 lanes (at every SIMD level).
pub fn gemm_nt_uses_kernel<T: Float>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>) -> bool {
    if crate::precision::bf16_for::<T>() {
        return bf16_lanes_apply(a, b);
    }
    lane_kernel_can_run(a, b) && lanes_pay(a, b)
}

/// The rule of the bf16 lanes: the shape's alone, the same at every SIMD level.
fn bf16_lanes_apply<T: Float>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>) -> bool {
    rows_contiguous(a, b) && lanes_pay(a, b)
}

/// f32, SIMD level AVX2 or higher, rows of both operands contiguous.
fn lane_kernel_can_run<T: Float>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>) -> bool {
    cfg!(target_arch = "x86_64")
        && T::as_f32(&[]).is_some()
        && crate::simd::level() >= crate::simd::SimdLevel::Avx2
        && rows_contiguous(a, b)
}

/// The rows of both operands are contiguous (unit column stride).
fn rows_contiguous<T>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>) -> bool {
    let contiguous = |v: &ArrayView2<'_, T>| v.ncols() <= 1 || v.strides()[1] == 1;
    contiguous(a) && contiguous(b)
}

/// The rule of [`gemm_nt`]. Where it pays was measured on one core of the
/// Zen 2 (`weight_grad` in benches/conv.rs, GFLOP/s of the lanes against
/// matrixmultiply): 16×16×4096 60 vs 26, 64×64×512 73 vs 49, 16×144×4096 58
/// vs 35, 32×288×2048 63 vs 46, 64×576×1024 62–69 vs 54, 64×576×3136 55–57
/// vs 54; but 256×2304×1568 39 vs 62 and 512×4608×392 30 vs 64, where the
/// packing is paid back by hundreds of multiply-adds per packed value
/// (`m·n/(m + n)`) and the lanes (16 partial sums an output) no longer stay
/// in cache. A short shared axis leaves few steps per output to pay for its
/// reduction (about three steps' worth): at `k` = 64, 64×256 ran at 36
/// against 56 and 16×144 at 34 against 37; at 128, 64×256 51 against 57 but
/// 16×144 50 against 38 (the thinner output packs worse in matrixmultiply);
/// at 256, 64×256 63 against 58.
fn lanes_pay<T: Float>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>) -> bool {
    let (m, n, k) = (a.nrows(), b.nrows(), a.ncols());
    m * n <= 64 * (m + n) && m * n <= 1 << 16 && (k >= 256 || (k >= 128 && m * n <= 16 * (m + n)))
}

pub(crate) fn check_dims<T: Float>(
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    c: &ArrayViewMut2<'_, T>,
) -> Result<()> {
    let ((m, k), (n, k2)) = (a.dim(), b.dim());
    if k != k2 || c.dim() != (m, n) {
        return Err(Error::shape(
            "gemm_nt",
            format!(
                "A is {m}x{k}, B is {n}x{k2}, C is {:?}: expected B {n}x{k} and C {m}x{n}",
                c.dim()
            ),
        ));
    }
    Ok(())
}

/// The scalar twin of the lane kernel, for any [`Float`]: `C ← A·Bᵀ + β·C`
/// with each output summed in [`NT_LANES`] chains of `mul_add` (lane `l`
/// over the positions `≡ l mod 16` in order, the positions past `k` of the
/// last group adding `0·0`), reduced by [`reduce_lanes`], then
/// `β·C + sum` (`C` not read when `β == 0`). [`gemm_nt`]'s kernel gives these
/// bits exactly.
///
/// # Errors
/// [`Error::Shape`] when the shapes do not agree.
pub fn gemm_nt_lanes<T: Float>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    beta: T,
    mut c: ArrayViewMut2<'_, T>,
) -> Result<()> {
    check_dims(&a, &b, &c)?;
    let k = a.ncols();
    for (i, a_row) in a.rows().into_iter().enumerate() {
        for (j, b_row) in b.rows().into_iter().enumerate() {
            let mut lanes = [T::zero(); NT_LANES];
            for k0 in (0..k).step_by(NT_LANES) {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let (x, y) = if k0 + l < k {
                        (a_row[k0 + l], b_row[k0 + l])
                    } else {
                        (T::zero(), T::zero())
                    };
                    *lane = x.mul_add(y, *lane);
                }
            }
            let sum = reduce_lanes(lanes);
            let out = &mut c[[i, j]];
            *out = if beta == T::zero() { sum } else { beta * *out + sum };
        }
    }
    Ok(())
}

/// The fixed reduction of 16 lanes: halves added (`l[i] + l[i+8]`), then
/// quarters, pairs, and the last two: the order every SIMD kernel here uses.
pub fn reduce_lanes<T: Float>(l: [T; NT_LANES]) -> T {
    let mut v = l;
    let mut width = NT_LANES / 2;
    while width >= 1 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

/// Rows of a matrix, each contiguous: row `r` starts at `ptr + r·stride`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub(crate) ptr: *const f32,
    pub(crate) rows: usize,
    pub(crate) stride: isize,
}

/// The output `C`: `C[i, j]` at `ptr + i·rsc + j·csc`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub(crate) ptr: *mut f32,
    pub(crate) rsc: isize,
    pub(crate) csc: isize,
}

/// Which block kernel [`lanes_f32`] runs.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneKernel {
    /// f32 values, one position a lane and step (AVX2 or AVX-512 by level).
    F32,
    /// bf16 pairs, two positions a lane and step (`VDPBF16PS`): the
    /// operands' "values" are 32-bit pairs, `k` counts pairs, a multiple of 16.
    Bf16Pairs,
}

/// The lane kernel over the whole product, chunk by chunk of the shared axis.
///
/// Within a chunk every `MR × NR` block of outputs runs its lane chains in
/// registers; between chunks the lanes wait in a scratch buffer (exactly, so
/// the chunking does not change the bits); after the last chunk each block
/// reduces its lanes into `C`.
///
/// # Safety
/// The SIMD level is AVX2 or higher (AVX512-BF16 for `Bf16Pairs`, with `k`
/// a multiple of 16); `a` and `b` address their rows of `k` readable values
/// each; `c` addresses a writable `a.rows × b.rows` matrix that nothing else
/// accesses meanwhile.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn lanes_f32(
    a: Operand,
    b: Operand,
    k: usize,
    beta: f32,
    c: Out,
    kernel: LaneKernel,
) {
    // The operand with fewer rows is `B`, re-read from cache for each block
    // of `A`'s rows: `Cᵀ = B·Aᵀ` has the same bits (each product `a·b` is `b·a`).
    let (a, b, c) =
        if a.rows < b.rows { (b, a, Out { rsc: c.csc, csc: c.rsc, ..c }) } else { (a, b, c) };
    let (m, n) = (a.rows, b.rows);
    if m == 0 || n == 0 {
        return;
    }
    let chunk = (B_CHUNK_BYTES / (4 * n)).clamp(256, MAX_CHUNK) / NT_LANES * NT_LANES;
    let chunks = k.div_ceil(chunk).max(1);
    let mut partial =
        crate::scratch::Scratch::<f32>::take(if chunks > 1 { m * n * NT_LANES } else { 0 });
    let avx512 = crate::simd::level() >= crate::simd::SimdLevel::Avx512;
    let pairs = kernel == LaneKernel::Bf16Pairs;
    let (mr, nr) = if avx512 || pairs { (4, 4) } else { (2, 3) };
    for ch in 0..chunks {
        let span = Span {
            start: ch * chunk,
            end: ((ch + 1) * chunk).min(k),
            first: ch == 0,
            last: ch + 1 == chunks,
        };
        for i0 in (0..m).step_by(mr) {
            for j0 in (0..n).step_by(nr) {
                let (bm, bn) = (mr.min(m - i0), nr.min(n - j0));
                let block = Block {
                    // Row i0 < m of A, j0 < n of B, C[i0, j0]: inside (caller's contract).
                    a: a.ptr.wrapping_offset(i0 as isize * a.stride),
                    lda: a.stride,
                    b: b.ptr.wrapping_offset(j0 as isize * b.stride),
                    ldb: b.stride,
                    lanes: partial.as_mut_ptr().wrapping_add((i0 * n + j0 * bm) * NT_LANES),
                    c: c.ptr.wrapping_offset(i0 as isize * c.rsc + j0 as isize * c.csc),
                    rsc: c.rsc,
                    csc: c.csc,
                    beta,
                };
                // SAFETY: the block lies inside the operands, the partials
                // (bm·bn·16 floats at its offset, when chunks > 1) and C.
                unsafe {
                    if pairs {
                        crate::gemm_nt_bf16::block_pairs_any(bm, bn, &block, &span);
                    } else if avx512 {
                        x86::block_avx512_any(bm, bn, &block, &span);
                    } else {
                        x86::block_avx2_any(bm, bn, &block, &span);
                    }
                }
            }
        }
    }
}

/// The shared-axis range of one chunk, and where it stands in the product.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The lanes start at zero (else they are loaded from the partials).
    pub(crate) first: bool,
    /// The lanes are reduced into `C` (else stored to the partials).
    pub(crate) last: bool,
}

/// One block of outputs: `MR` rows of `A` from `a`, `NR` rows of `B` from
/// `b`, its partial lanes at `lanes` (`MR·NR·16`, row-major by block) and
/// its corner of `C` at `c`.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Block {
    pub(crate) a: *const f32,
    pub(crate) lda: isize,
    pub(crate) b: *const f32,
    pub(crate) ldb: isize,
    lanes: *mut f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    beta: f32,
}

#[cfg(target_arch = "x86_64")]
impl Block {
    /// `C[i, j] ← β·C[i, j] + sum` (`C` not read when `β == 0`).
    ///
    /// # Safety
    /// `(i, j)` lies inside the block's part of `C`.
    #[inline(always)]
    unsafe fn store(&self, i: usize, j: usize, sum: f32) {
        // SAFETY: the caller's contract.
        let dst = unsafe { self.c.offset(i as isize * self.rsc + j as isize * self.csc) };
        // SAFETY: as above.
        unsafe { *dst = if self.beta == 0.0 { sum } else { self.beta * *dst + sum } };
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{Block, Span, NT_LANES};

    /// Mask of the first `len` (< 16) lanes of a 16-lane group, as the two
    /// 8-lane halves `_mm256_maskload_ps` takes.
    #[inline(always)]
    fn half_masks(len: usize) -> [__m256i; 2] {
        let lane = |h: usize| -> [i32; 8] {
            std::array::from_fn(|l| if 8 * h + l < len { -1 } else { 0 })
        };
        let (lo, hi) = (lane(0), lane(1));
        // SAFETY: unaligned loads of two 8-value local arrays (SSE2/AVX are
        // implied by the target features of every caller).
        unsafe { [_mm256_loadu_si256(lo.as_ptr().cast()), _mm256_loadu_si256(hi.as_ptr().cast())] }
    }

    /// Sums 8 lanes of `s8` by the fixed tree's last three levels.
    #[inline]
    #[target_feature(enable = "avx")]
    fn reduce8(s8: __m256) -> f32 {
        // Quarters: lanes i + (i + 4).
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        // Pairs: lanes i + (i + 2).
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        // The last two: lane 0 + lane 1.
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
        _mm_cvtss_f32(s1)
    }

    /// Dispatches a `bm × bn` block (at most 2 × 3) to its AVX2 kernel.
    ///
    /// # Safety
    /// As [`block_avx2`].
    pub(super) unsafe fn block_avx2_any(bm: usize, bn: usize, blk: &Block, span: &Span) {
        // SAFETY: the caller's contract, for the block shape it names.
        unsafe {
            match (bm, bn) {
                (2, 3) => block_avx2::<2, 3>(blk, span),
                (2, 2) => block_avx2::<2, 2>(blk, span),
                (2, 1) => block_avx2::<2, 1>(blk, span),
                (1, 3) => block_avx2::<1, 3>(blk, span),
                (1, 2) => block_avx2::<1, 2>(blk, span),
                _ => block_avx2::<1, 1>(blk, span),
            }
        }
    }

    /// One `MR × NR` block over one chunk in 256-bit registers, each 16 lanes
    /// in two of them (12 accumulators, two rows of `A` and one of `B` in
    /// the 16 registers for 2 × 3).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `blk.a` (`blk.b`) addresses `MR` (`NR`)
    /// rows, `lda` (`ldb`) apart, readable over `span`; `blk.lanes` holds
    /// `MR·NR·16` floats (read unless `span.first`, written unless
    /// `span.last`); `blk.c` an `MR × NR` corner of `C` (written when `span.last`).
    // Loops over constant ranges with indices, unrolled: the accumulators stay in registers.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2<const MR: usize, const NR: usize>(blk: &Block, span: &Span) {
        let a: [*const f32; MR] =
            std::array::from_fn(|i| blk.a.wrapping_offset(i as isize * blk.lda));
        let b: [*const f32; NR] =
            std::array::from_fn(|j| blk.b.wrapping_offset(j as isize * blk.ldb));
        let mut acc = [[[_mm256_setzero_ps(); 2]; NR]; MR];
        if !span.first {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, lanes) in row.iter_mut().enumerate() {
                    for (h, half) in lanes.iter_mut().enumerate() {
                        // SAFETY: the block's partials hold MR·NR·16 floats.
                        *half = unsafe {
                            _mm256_loadu_ps(blk.lanes.add((i * NR + j) * NT_LANES + 8 * h))
                        };
                    }
                }
            }
        }
        let full_end = span.start + (span.end - span.start) / NT_LANES * NT_LANES;
        let mut p = span.start;
        while p < full_end {
            for h in 0..2 {
                // SAFETY: positions p..p + 16 ≤ span.end lie inside every row.
                let av: [__m256; MR] =
                    std::array::from_fn(|i| unsafe { _mm256_loadu_ps(a[i].add(p + 8 * h)) });
                for j in 0..NR {
                    // SAFETY: as above.
                    let bv = unsafe { _mm256_loadu_ps(b[j].add(p + 8 * h)) };
                    for i in 0..MR {
                        acc[i][j][h] = _mm256_fmadd_ps(av[i], bv, acc[i][j][h]);
                    }
                }
            }
            p += NT_LANES;
        }
        if p < span.end {
            // The last, partial group: lanes past the end load 0 and add 0·0.
            let mask = half_masks(span.end - p);
            for h in 0..2 {
                // SAFETY: masked lanes are not read; the others lie before span.end.
                let av: [__m256; MR] = std::array::from_fn(|i| unsafe {
                    _mm256_maskload_ps(a[i].add(p + 8 * h), mask[h])
                });
                for j in 0..NR {
                    // SAFETY: as above.
                    let bv = unsafe { _mm256_maskload_ps(b[j].add(p + 8 * h), mask[h]) };
                    for i in 0..MR {
                        acc[i][j][h] = _mm256_fmadd_ps(av[i], bv, acc[i][j][h]);
                    }
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, lanes) in row.iter().enumerate() {
                if span.last {
                    // Halves first (lane i + lane i + 8), then the tree's rest.
                    let sum = reduce8(_mm256_add_ps(lanes[0], lanes[1]));
                    // SAFETY: (i, j) lies in the block's MR × NR corner of C.
                    unsafe { blk.store(i, j, sum) };
                } else {
                    for (h, &half) in lanes.iter().enumerate() {
                        // SAFETY: the block's partials hold MR·NR·16 floats.
                        unsafe {
                            _mm256_storeu_ps(blk.lanes.add((i * NR + j) * NT_LANES + 8 * h), half)
                        };
                    }
                }
            }
        }
    }

    /// Calls `$kernel::<MR, NR>(blk, span)` for a `bm × bn` block of at most
    /// 4 × 4 (the 512-bit kernels' block): one instance per shape.
    macro_rules! blocks_4x4 {
        ($kernel:ident, $bm:expr, $bn:expr, $blk:expr, $span:expr) => {
            blocks_4x4!(@rows $kernel, $bm, $bn, $blk, $span; 4, 3, 2)
        };
        (@rows $kernel:ident, $bm:expr, $bn:expr, $blk:expr, $span:expr; $($m:literal),*) => {
            match ($bm, $bn) {
                $(
                    ($m, 4) => $kernel::<$m, 4>($blk, $span),
                    ($m, 3) => $kernel::<$m, 3>($blk, $span),
                    ($m, 2) => $kernel::<$m, 2>($blk, $span),
                    ($m, _) => $kernel::<$m, 1>($blk, $span),
                )*
                _ => $kernel::<1, 1>($blk, $span),
            }
        };
    }
    pub(crate) use blocks_4x4;

    /// Dispatches a `bm × bn` block (at most 4 × 4) to its AVX-512 kernel.
    ///
    /// # Safety
    /// As [`block_avx512`].
    pub(super) unsafe fn block_avx512_any(bm: usize, bn: usize, blk: &Block, span: &Span) {
        // SAFETY: the caller's contract, for the block shape it names.
        unsafe { blocks_4x4!(block_avx512, bm, bn, blk, span) }
    }

    /// One `MR × NR` block over one chunk in 512-bit registers, 16 lanes in
    /// one (16 accumulators, 4 rows of `A`, one of `B` for 4 × 4).
    ///
    /// # Safety
    /// The CPU has AVX-512F; otherwise as [`block_avx2`].
    #[allow(clippy::needless_range_loop)] // as in `block_avx2`
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512<const MR: usize, const NR: usize>(blk: &Block, span: &Span) {
        let a: [*const f32; MR] =
            std::array::from_fn(|i| blk.a.wrapping_offset(i as isize * blk.lda));
        let b: [*const f32; NR] =
            std::array::from_fn(|j| blk.b.wrapping_offset(j as isize * blk.ldb));
        // SAFETY: the caller's contract on the block's partials.
        let mut acc = unsafe { start_512::<MR, NR>(blk, span) };
        let full_end = span.start + (span.end - span.start) / NT_LANES * NT_LANES;
        let mut p = span.start;
        while p < full_end {
            // SAFETY: positions p..p + 16 ≤ span.end lie inside every row.
            let av: [__m512; MR] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(a[i].add(p)) });
            for j in 0..NR {
                // SAFETY: as above.
                let bv = unsafe { _mm512_loadu_ps(b[j].add(p)) };
                for i in 0..MR {
                    acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
                }
            }
            p += NT_LANES;
        }
        if p < span.end {
            // The last, partial group: lanes past the end load 0 and add 0·0.
            let mask: __mmask16 = (1u16 << (span.end - p)) - 1;
            // SAFETY: masked lanes are not read; the others lie before span.end.
            let av: [__m512; MR] =
                std::array::from_fn(|i| unsafe { _mm512_maskz_loadu_ps(mask, a[i].add(p)) });
            for j in 0..NR {
                // SAFETY: as above.
                let bv = unsafe { _mm512_maskz_loadu_ps(mask, b[j].add(p)) };
                for i in 0..MR {
                    acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
                }
            }
        }
        // SAFETY: the caller's contract on the block's partials and C.
        unsafe { finish_512(blk, span, &acc) };
    }

    /// The lanes of an `MR × NR` block at the start of a chunk: zero on the
    /// first, else loaded from the block's partials.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `blk.lanes` holds `MR·NR·16` floats unless `span.first`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn start_512<const MR: usize, const NR: usize>(
        blk: &Block,
        span: &Span,
    ) -> [[__m512; NR]; MR] {
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        if !span.first {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, lanes) in row.iter_mut().enumerate() {
                    // SAFETY: the block's partials hold MR·NR·16 floats.
                    *lanes = unsafe { _mm512_loadu_ps(blk.lanes.add((i * NR + j) * NT_LANES)) };
                }
            }
        }
        acc
    }

    /// The lanes of an `MR × NR` block at the end of a chunk: reduced by the
    /// fixed tree into `C` after the last, else stored to the partials.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `blk.lanes` holds `MR·NR·16` floats unless
    /// `span.last`; `blk.c` an `MR × NR` corner of `C`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn finish_512<const MR: usize, const NR: usize>(
        blk: &Block,
        span: &Span,
        acc: &[[__m512; NR]; MR],
    ) {
        for (i, row) in acc.iter().enumerate() {
            for (j, &lanes) in row.iter().enumerate() {
                if span.last {
                    // Halves first (lane i + lane i + 8), then the tree's rest.
                    let lo = _mm512_castps512_ps256(lanes);
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(lanes)));
                    let sum = reduce8(_mm256_add_ps(lo, hi));
                    // SAFETY: (i, j) lies in the block's MR × NR corner of C.
                    unsafe { blk.store(i, j, sum) };
                } else {
                    // SAFETY: the block's partials hold MR·NR·16 floats.
                    unsafe { _mm512_storeu_ps(blk.lanes.add((i * NR + j) * NT_LANES), lanes) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::SimdLevel;
    use ndarray::{s, Array2};

    fn matrix(rows: usize, cols: usize, seed: f32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| ((i * cols + j) as f32 * seed).sin())
    }

    /// The lane kernel (taken whatever the rule says) gives the scalar twin's bits: every block remainder
    /// (m, n not multiples of the block), shared axes shorter than one lane
    /// group, with a tail, and long enough for several chunks (n = 1 makes
    /// chunks of 8192); β = 0 (C not read: NaN there stays unread), 1 and
    /// 0.5; row strides wider than the rows (views into a larger matrix).
    #[test]
    fn lane_kernel_equals_its_scalar_twin_bitwise() {
        if crate::simd::level() < SimdLevel::Avx2 {
            return; // the kernel never runs here; rerun at each level below
        }
        for (m, n, k) in [
            (1, 1, 1),
            (2, 3, 16),
            (5, 7, 37),
            (9, 4, 200),
            (16, 144, 300),
            (3, 1, 20000),
            (7, 2, 9000),
        ] {
            let wide_a = matrix(m, k + 5, 0.37);
            let wide_b = matrix(n, k + 3, 0.11);
            let (a, b) = (wide_a.slice(s![.., 2..k + 2]), wide_b.slice(s![.., ..k]));
            assert!(lane_kernel_can_run(&a, &b));
            for beta in [0.0f32, 1.0, 0.5] {
                let start = if beta == 0.0 { f32::NAN } else { 0.25 };
                let mut want = Array2::from_elem((m, n), start);
                gemm_nt_lanes(a, b, beta, want.view_mut()).unwrap();
                let mut got = Array2::from_elem((m, n), start);
                product(a, b, beta, got.view_mut(), false).unwrap();
                let diff =
                    got.iter().zip(&want).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                assert_eq!(diff, 0, "{m}x{n}x{k} beta {beta}: {diff} outputs differ");
            }
            // A transposed output view (what dWᵀ uses) is written in place.
            let mut want = Array2::<f32>::zeros((m, n));
            gemm_nt_lanes(a, b, 0.0, want.view_mut()).unwrap();
            let mut got_t = Array2::<f32>::zeros((n, m));
            product(a, b, 0.0, got_t.view_mut().reversed_axes(), false).unwrap();
            assert_eq!(got_t.t(), want, "{m}x{n}x{k} into a transposed view");
        }
    }

    /// The twin is a dot product: within f32 rounding of f64's.
    #[test]
    fn scalar_twin_is_the_product() {
        let (a, b) = (matrix(5, 333, 0.37), matrix(6, 333, 0.11));
        let mut c = Array2::<f32>::zeros((5, 6));
        gemm_nt_lanes(a.view(), b.view(), 0.0, c.view_mut()).unwrap();
        let exact = a.mapv(f64::from).dot(&b.mapv(f64::from).t());
        for (&got, &want) in c.iter().zip(&exact) {
            assert!((f64::from(got) - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    /// Operands whose rows are not contiguous, and f64, run matrixmultiply
    /// (the same product within rounding).
    #[test]
    fn strided_rows_and_f64_take_the_plain_gemm() {
        let (a, b) = (matrix(4, 50, 0.37), matrix(3, 50, 0.11));
        let at = Array2::from_shape_fn((50, 4), |(i, j)| a[[j, i]]); // rows of a.t() are strided
        assert!(!lane_kernel_can_run(&at.t(), &b.view()));
        let (mut c1, mut c2) = (Array2::<f32>::zeros((4, 3)), Array2::<f32>::zeros((4, 3)));
        gemm_nt(at.t(), b.view(), 0.0, c1.view_mut()).unwrap();
        gemm_nt_lanes(a.view(), b.view(), 0.0, c2.view_mut()).unwrap();
        c1.iter().zip(&c2).for_each(|(x, y)| assert!((x - y).abs() < 1e-4));
        let (a64, b64) = (a.mapv(f64::from), b.mapv(f64::from));
        assert!(!lane_kernel_can_run(&a64.view(), &b64.view()));
        let mut c = Array2::<f64>::zeros((4, 3));
        gemm_nt(a64.view(), b64.view(), 0.0, c.view_mut()).unwrap();
        assert!((&c - &a64.dot(&b64.t())).iter().all(|d| d.abs() < 1e-12));
    }

    /// The kernel takes the weight gradients of ResNet-20's stages and
    /// Winograd's `dU`, and leaves ResNet-18's deep layers to matrixmultiply.
    #[test]
    fn the_rule_takes_small_outputs_only() {
        if crate::simd::level() < SimdLevel::Avx2 {
            return;
        }
        for (m, n, k, takes) in [
            (16, 144, 4096, true),
            (64, 64, 512, true),
            (64, 576, 1024, true),
            (256, 2304, 1568, false),
            (512, 4608, 392, false),
            (16, 144, 128, true),
            (64, 256, 128, false),
            (64, 256, 64, false),
        ] {
            let (a, b) = (Array2::<f32>::zeros((m, k)), Array2::<f32>::zeros((n, k)));
            assert_eq!(gemm_nt_uses_kernel(&a.view(), &b.view()), takes, "{m}x{n}x{k}");
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let (a, b) = (Array2::<f32>::zeros((2, 5)), Array2::<f32>::zeros((3, 4)));
        let mut c = Array2::<f32>::zeros((2, 3));
        let err = gemm_nt(a.view(), b.view(), 0.0, c.view_mut()).unwrap_err();
        assert!(err.to_string().contains("gemm_nt"), "{err}");
        assert!(err.to_string().contains("A is 2x5, B is 3x4"), "{err}");
    }

    /// The kernel tests again in a child process per SIMD level: the AVX2
    /// and AVX-512 kernels each meet the same scalar twin.
    #[test]
    fn every_simd_level_equals_the_twin() {
        for level in crate::simd::levels() {
            for filter in ["lane_kernel_equals", "plain_gemm", "small_outputs"] {
                crate::simd::rerun_tests(filter, &[("CNN_SIMD", level.name())]).unwrap();
            }
        }
    }

    #[test]
    fn reduce_lanes_is_the_halving_tree() {
        // Values whose sum depends on the order: the tree pairs 1e8 with -1e8.
        let mut l = [1.0f32; 16];
        l[0] = 1e8;
        l[8] = -1e8;
        assert_eq!(reduce_lanes(l), 14.0);
    }
}
