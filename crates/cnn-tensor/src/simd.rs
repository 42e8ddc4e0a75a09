//! The one SIMD dispatch layer of the workspace.
//!
//! Every crate is built for baseline x86-64 (SSE2), so that one binary runs
//! on any machine; vector code is compiled a second (and third) time for AVX2
//! + FMA and AVX-512 and chosen at run time here:
//!
//! - [`level`] detects the CPU once per process and caps it by the
//!   environment variable `CNN_SIMD` (`portable`, `avx2`, `avx512` or
//!   `avx512bf16`): the
//!   one switch every vector path honours, so that tests and users can run
//!   the portable path on any machine.
//! - [`simd_fn!`](crate::simd_fn) defines a function that runs an
//!   `#[inline(always)]` body compiled for the current level: kernels written
//!   as plain loops over slices are vectorized by the compiler for each level;
//!   hand-written intrinsics (the GEMM micro-kernel) check [`level`] themselves.
//! - [`Float::as_f32`](crate::Float::as_f32) sees a generic slice as `f32`
//!   without casts, for kernels that only exist in f32.
//! - [`uninit_vec`] and [`assume_init`] are the one way to allocate an output
//!   that is written whole, without a zeroing pass.
//!
//! Which paths give the same bits: the compiler never fuses a multiply and an
//! add by itself, so a loop without explicit `mul_add` is bitwise equal on
//! every level (lanes change how many elements go at once, not the order of a
//! sum). Code that calls `mul_add` gets an FMA instruction on the vector
//! levels and libm's correctly rounded `fma` on the portable one: equal bits
//! again. Only the GEMMs differ: AVX-512 and AVX2 run this crate's kernels
//! (the same bits on both), the portable level matrixmultiply, whose sums
//! are grouped differently.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// The vector instruction sets a kernel may use, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Baseline code only: what the crates are compiled for (SSE2 on x86-64).
    Portable,
    /// AVX2 with fused multiply-add (8 lanes of f32).
    Avx2,
    /// AVX-512F (16 lanes of f32), with AVX2 and FMA.
    Avx512,
    /// AVX-512 with the bf16 instructions (`vdpbf16ps`, `vcvtneps2bf16`;
    /// AVX512-BF16, -BW and -VL): the bf16 kernels' level. Every f32 path
    /// runs as on [`SimdLevel::Avx512`].
    Avx512Bf16,
}

impl SimdLevel {
    /// The name `CNN_SIMD` takes: `portable`, `avx2`, `avx512` or `avx512bf16`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Parses a `CNN_SIMD` value (case-insensitive).
    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "none" | "scalar" => Some(SimdLevel::Portable),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx512f" => Some(SimdLevel::Avx512),
            "avx512bf16" | "avx512_bf16" | "bf16" => Some(SimdLevel::Avx512Bf16),
            _ => None,
        }
    }
}

/// The best level this CPU supports, ignoring `CNN_SIMD`.
pub fn detected() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx512
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return SimdLevel::Avx512Bf16;
        }
        if avx512 {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Portable
}

/// The level every vector path of the workspace uses: [`detected`], capped
/// by `CNN_SIMD` when it is set (read once per process; an unknown value is
/// ignored with a warning on stderr, and a level above the CPU's is capped).
pub fn level() -> SimdLevel {
    static CAP: OnceLock<Option<SimdLevel>> = OnceLock::new();
    let cpu = detected();
    crate::switches::SIMD.cached(&CAP, SimdLevel::parse).map_or(cpu, |cap| cap.min(cpu))
}

/// The x86 CPU vendor, for kernels whose best shape differs between vendors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD`.
    Amd,
    /// Anything else, or not x86-64.
    Other,
}

/// The CPU vendor (read once with `cpuid`).
pub fn vendor() -> CpuVendor {
    static VENDOR: OnceLock<CpuVendor> = OnceLock::new();
    *VENDOR.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // cpuid leaf 0 exists on every x86-64 CPU (a safe intrinsic there).
            let r = std::arch::x86_64::__cpuid(0);
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&r.ebx.to_le_bytes());
            id[4..8].copy_from_slice(&r.edx.to_le_bytes());
            id[8..].copy_from_slice(&r.ecx.to_le_bytes());
            match &id {
                b"GenuineIntel" => CpuVendor::Intel,
                b"AuthenticAMD" => CpuVendor::Amd,
                _ => CpuVendor::Other,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuVendor::Other
        }
    })
}

/// Defines a function that runs `$body` compiled for the current [`level`].
///
/// ```
/// use cnn_tensor::Float;
///
/// #[inline(always)] // inlined into each compiled copy: that is where it is vectorized
/// fn scale_body<T: Float>(xs: &mut [T], s: T) {
///     xs.iter_mut().for_each(|x| *x *= s);
/// }
///
/// cnn_tensor::simd_fn! {
///     /// `xs ← s·xs`, compiled for AVX-512, AVX2 + FMA and the baseline.
///     fn scale<T: Float>(xs: &mut [T], s: T) = scale_body
/// }
///
/// let mut v = vec![1.0f32, 2.0];
/// scale(&mut v, 3.0);
/// assert_eq!(v, [3.0, 6.0]);
/// ```
///
/// The body is an `#[inline(always)]` function taking the same arguments: it
/// is inlined into one copy per level (a closure would be inlined into none
/// of the three once it is large), and the copy for [`level`] runs.
#[macro_export]
macro_rules! simd_fn {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$g:ident : $bound:path>)? ( $($arg:ident : $ty:ty),* $(,)? )
        $(-> $ret:ty)? = $body:path
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$g: $bound>)? ( $($arg: $ty),* ) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512 $(<$g: $bound>)? ( $($arg: $ty),* ) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2 $(<$g: $bound>)? ( $($arg: $ty),* ) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` says Avx512 (or above) only when the CPU has AVX-512F, AVX2 and FMA.
                    $crate::simd::SimdLevel::Avx512 | $crate::simd::SimdLevel::Avx512Bf16 => unsafe {
                        avx512($($arg),*)
                    },
                    // SAFETY: `level` says Avx2 only when the CPU has AVX2 and FMA.
                    $crate::simd::SimdLevel::Avx2 => unsafe { avx2($($arg),*) },
                    $crate::simd::SimdLevel::Portable => $body($($arg),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                $body($($arg),*)
            }
        }
    };
}

/// A vector of `len` uninitialized elements, for an output written whole:
/// no zeroing pass, and (unlike `calloc`) reused heap memory is not cleared
/// again. Turn it into `Vec<T>` with [`assume_init`] once every slot is written.
pub fn uninit_vec<T: Copy>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit<T> needs no initialization; the capacity is at least len.
    unsafe { v.set_len(len) };
    v
}

/// The vector of [`uninit_vec`], every slot of it written.
///
/// # Safety
/// Every element of `v` must have been written.
pub unsafe fn assume_init<T: Copy>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<T> has T's layout; the caller guarantees every element is written,
    // and the allocation is handed over whole (pointer, length, capacity).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// A slice of [`uninit_vec`] whose every slot has been written, as values:
/// for a kernel that fills part of an output itself, then hands it on.
///
/// # Safety
/// Every element of `s` must have been written.
pub unsafe fn assume_init_mut<T: Copy>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: MaybeUninit<T> has T's layout; the caller guarantees every element is written.
    unsafe { &mut *(std::ptr::from_mut(s) as *mut [T]) }
}

/// Values seen as possibly-uninitialized ones (the same memory, read only):
/// the source of a copy into a slice of [`uninit_vec`].
pub fn as_uninit<T: Copy>(s: &[T]) -> &[MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout, every T is a valid MaybeUninit<T>, and the
    // shared borrow allows no write (which could store an uninitialized value into `s`).
    unsafe { &*(std::ptr::from_ref(s) as *const [MaybeUninit<T>]) }
}

/// Every level this CPU can run, lowest first: what a test of "every vector
/// path" iterates over.
pub fn levels() -> Vec<SimdLevel> {
    [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Avx512Bf16]
        .into_iter()
        .filter(|&l| l <= detected())
        .collect()
}

/// Runs the tests of the current test binary whose names contain `filter`
/// again, in a child process with the variables `env` set, since switches
/// such as `CNN_SIMD` are read once per process. Returns the child's output
/// as the error when it fails or runs no test. In the child itself (marked by
/// `CNN_TEST_CHILD`) it does nothing, so a test may call it unconditionally.
///
/// # Errors
/// The child's exit status and output, when it did not pass at least one test.
pub fn rerun_tests(filter: &str, env: &[(&str, &str)]) -> std::result::Result<(), String> {
    if std::env::var_os("CNN_TEST_CHILD").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("no test binary path: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(filter).arg("--test-threads=2").env("CNN_TEST_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("could not start the test binary: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let ran = text.lines().any(|l| l.starts_with("test result: ok.") && !l.contains(" 0 passed"));
    if out.status.success() && ran {
        Ok(())
    } else {
        // The end of the child's output: the failing case and its message, not every backtrace.
        let tail: String =
            text.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
        Err(format!("tests matching {filter:?} with {env:?}: {}\n…{tail}", out.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(SimdLevel::parse("AVX2"), Some(SimdLevel::Avx2));
        assert_eq!(SimdLevel::parse(" portable "), Some(SimdLevel::Portable));
        assert_eq!(SimdLevel::parse("avx512"), Some(SimdLevel::Avx512));
        assert_eq!(SimdLevel::parse("AVX512BF16"), Some(SimdLevel::Avx512Bf16));
        for l in levels() {
            assert_eq!(SimdLevel::parse(l.name()), Some(l), "{l:?} parses from its name");
        }
        assert_eq!(SimdLevel::parse("sse9"), None);
        assert!(SimdLevel::Portable < SimdLevel::Avx2 && SimdLevel::Avx2 < SimdLevel::Avx512);
        assert!(SimdLevel::Avx512 < SimdLevel::Avx512Bf16);
        assert!(level() <= detected());
    }

    #[inline(always)]
    fn half_sum_body(n: usize) -> f32 {
        (0..n).map(|i| i as f32 * 0.5).sum()
    }

    crate::simd_fn! {
        fn half_sum(n: usize) -> f32 = half_sum_body
    }

    #[test]
    fn simd_fn_runs_the_body() {
        assert_eq!(half_sum(100), 2475.0);
    }

    #[test]
    fn uninit_vec_round_trips() {
        let mut v = uninit_vec::<f32>(5);
        for (i, slot) in v.iter_mut().enumerate() {
            slot.write(i as f32);
        }
        // SAFETY: every slot was written just above.
        let v = unsafe { assume_init(v) };
        assert_eq!(v, [0.0, 1.0, 2.0, 3.0, 4.0]);
        // A part written by copying from values, then used as values.
        let mut w = uninit_vec::<f32>(7);
        w[2..].copy_from_slice(as_uninit(&v));
        // SAFETY: slots 2..7 were written by the copy.
        let part = unsafe { assume_init_mut(&mut w[2..]) };
        part[0] += 10.0;
        assert_eq!(part, [10.0, 1.0, 2.0, 3.0, 4.0]);
    }
}
