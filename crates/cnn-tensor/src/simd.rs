//! Run a closure compiled for the widest vector unit the CPU has.

/// Calls `f` from a function compiled for AVX-512 (or AVX2 + FMA), picked
/// at run time, so that loops in `f` and in the `#[inline(always)]`
/// functions it calls are vectorized for that unit; elsewhere calls `f` as is.
///
/// The crates are built for the baseline x86-64 (SSE2, 4 lanes of f32), so
/// this is how a hot loop gets 16 lanes without `-C target-cpu=native`.
/// Floating-point results do not depend on the path: Rust never fuses a
/// multiply and an add on its own, and lanes only change how many elements
/// are processed at once, not the order of operations on each.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above (it implies AVX2 and FMA here).
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}
