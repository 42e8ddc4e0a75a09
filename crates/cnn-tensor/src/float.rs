//! The element types the library computes in: `f32` and `f64`.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::mem::MaybeUninit;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use ndarray::{LinalgScalar, ScalarOperand};

/// A floating-point element type: `f32` (training) or `f64` (gradient checks, parity).
///
/// Besides arithmetic it carries the raw GEMM entry point, so that generic
/// kernels reach `sgemm` or `dgemm` of matrixmultiply without dispatch traits.
///
/// Sealed: only `f32` and `f64` implement it. Unsafe code across the
/// workspace relies on that (a weight cache compares weights as bytes,
/// assuming no padding; [`Float::as_f32`] reinterprets slices; the GEMM
/// micro-kernel runs for `T` exactly when `as_f32` says it is `f32`), and a
/// downstream type could break those assumptions without writing `unsafe`
/// itself if it could implement the trait.
pub trait Float:
    sealed::Sealed
    + num_traits::Float
    + LinalgScalar
    + ScalarOperand
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// `"f32"` or `"f64"`, for messages and bench names.
    const NAME: &'static str;

    /// `v` rounded to this type.
    fn of(v: f64) -> Self;

    /// This value widened (or kept) as `f64`.
    fn as_f64(self) -> f64;

    /// The error function `erf(x) = 2/√π ∫₀ˣ e^(−t²) dt` (libm's `erff` / `erf`).
    fn erf(self) -> Self;

    /// `s` as `&[f32]` when `Self` is f32 (kernels that exist in f32 only), else `None`.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;

    /// `s` as `&mut [f32]` when `Self` is f32, else `None`.
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;

    /// Uninitialized slots of `Self` as slots of f32 when `Self` is f32, else `None`.
    fn as_f32_uninit(s: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<f32>]>;

    /// `v` as values of this type: moved as it is for `f32`, widened for `f64`
    /// (data loaders give f32 images; an f64 check trains on them exactly).
    fn from_f32_vec(v: Vec<f32>) -> Vec<Self>;

    /// `C ← α·A·B + β·C` on raw strided matrices (matrixmultiply's `sgemm`/`dgemm`).
    ///
    /// When `beta` is zero, `C` is written without being read (it may hold NaN).
    ///
    /// # Safety
    /// Every element `a + i·rsa + j·csa` for `i < m, j < k` (likewise `b` over
    /// `k×n`, `c` over `m×n`) must be in bounds of a live allocation, and `c`
    /// must not alias `a` or `b`. Prefer the checked [`crate::gemm`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

mod sealed {
    /// Implemented for `f32` and `f64` only: see [`super::Float`].
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl Float for f32 {
    const NAME: &'static str = "f32";

    fn of(v: f64) -> Self {
        v as f32
    }

    fn as_f64(self) -> f64 {
        self as f64
    }

    fn erf(self) -> Self {
        libm::erff(self)
    }

    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }

    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }

    fn as_f32_uninit(s: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<f32>]> {
        Some(s)
    }

    fn from_f32_vec(v: Vec<f32>) -> Vec<Self> {
        v
    }

    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded; the caller upholds matrixmultiply's contract.
        unsafe {
            matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

impl Float for f64 {
    const NAME: &'static str = "f64";

    fn of(v: f64) -> Self {
        v
    }

    fn as_f64(self) -> f64 {
        self
    }

    fn erf(self) -> Self {
        libm::erf(self)
    }

    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }

    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }

    fn as_f32_uninit(_: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<f32>]> {
        None
    }

    fn from_f32_vec(v: Vec<f32>) -> Vec<Self> {
        v.into_iter().map(f64::from).collect()
    }

    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded; the caller upholds matrixmultiply's contract.
        unsafe {
            matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}
