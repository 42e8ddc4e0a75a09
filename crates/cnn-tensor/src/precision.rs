//! The precision of products: f32, or bf16 inputs with f32 sums (mixed
//! precision, PyTorch's `torch.autocast("cpu", dtype=torch.bfloat16)`).
//!
//! A scope ([`with_precision`]) on the calling thread says which; the
//! products of this crate read it: [`crate::gemm`], [`crate::gemm_nt`] and
//! [`crate::PackedLhs::new`] (whose products then keep the precision it was
//! packed in). Under [`Precision::Bf16`], f32 products round both operands
//! to bf16 and sum in f32 ([`crate::bf16::gemm_reference`] is their
//! definition, bit for bit); f64 products are never rounded. Everything else
//! (norms, activations, the loss, optimizers, master weights) stays f32:
//! the scope changes products only.
//!
//! Unlike the `CNN_*` switches, which change how and never what, precision
//! changes the numbers, so it has no environment variable: it is part of a
//! run's configuration (`TrainConfig::precision`, `cnn train --precision`).
//!
//! The scope is this thread's: a kernel that fans out to rayon tasks reads
//! [`precision`] first and re-enters it in each task ([`with_precision`]).

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// How products compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32 inputs, f32 sums.
    #[default]
    F32,
    /// Inputs rounded to bf16 (nearest even), products summed in f32.
    Bf16,
}

impl Precision {
    /// Both, in the order `--precision` lists them.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// The name `--precision` and the run's record use: `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// `f32` or `bf16` (case and surrounding space ignored; `float32`,
    /// `bfloat16` too).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::config(
                "precision",
                format!("{other:?} is not a precision: expected f32 or bf16"),
            )),
        }
    }
}

thread_local! {
    static SCOPED: Cell<Option<Precision>> = const { Cell::new(None) };
}

/// Runs `f` with products on this thread in `precision`, and restores the
/// precision before it afterwards (also when `f` panics). Scopes nest.
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    crate::switches::scoped(&SCOPED, precision, f)
}

/// The precision of products on this thread: the innermost
/// [`with_precision`] scope, else [`Precision::F32`].
pub fn precision() -> Precision {
    SCOPED.with(Cell::get).unwrap_or_default()
}

/// Whether products of `T` round to bf16 here: `T` is f32 and the scope says bf16.
pub(crate) fn bf16_for<T: crate::Float>() -> bool {
    precision() == Precision::Bf16 && T::as_f32(&[]).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_bad_ones_are_errors() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(" BFloat16 ".parse::<Precision>().unwrap(), Precision::Bf16);
        let err = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert_eq!(
            err,
            "precision: invalid setting: \"fp16\" is not a precision: expected f32 or bf16"
        );
    }

    #[test]
    fn the_scope_is_this_threads_and_restored() {
        assert_eq!(precision(), Precision::F32);
        with_precision(Precision::Bf16, || {
            assert_eq!(precision(), Precision::Bf16);
            assert!(bf16_for::<f32>() && !bf16_for::<f64>());
            std::thread::scope(|s| {
                s.spawn(|| assert_eq!(precision(), Precision::F32, "another thread"));
            });
        });
        assert_eq!(precision(), Precision::F32);
    }
}
