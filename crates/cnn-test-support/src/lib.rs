//! Helpers shared by the workspace's tests, in one place instead of a copy
//! per test file: the proptest settings ([`proptest_config`]), comparisons of
//! a fast kernel with its naive twin ([`rel_err`], [`max_abs_diff`]),
//! temporary directories that are removed when dropped ([`temp_dir`]), the
//! mutation fuzzer the file parsers are run through ([`fuzz`]) with its
//! structure-aware mutators ([`formats`]), and image files made by several
//! encoders for its corpora and the bad-image tests ([`images`]).
//!
//! It depends on no crate of the workspace, so every crate, `cnn-tensor`
//! included, can take it as a dev-dependency. Not published.

pub mod formats;
pub mod fuzz;
pub mod images;
pub mod mpi;

use ndarray::{ArrayBase, Data, Dimension};
use proptest::test_runner::{Config, RngSeed};

/// Proptest settings for `cases` cases: a fixed seed, so a CI run is
/// repeatable, and no failure files written into the source tree.
pub fn proptest_config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5eed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// `max |a − b| / max |b|`: the error relative to the reference `b`'s scale
/// (`b` all zeros counts as scale `f64::MIN_POSITIVE`).
///
/// # Panics
/// When the shapes differ: a test comparing different shapes is wrong.
pub fn rel_err<A, B, D>(a: &ArrayBase<A, D>, b: &ArrayBase<B, D>) -> f64
where
    A: Data<Elem = f64>,
    B: Data<Elem = f64>,
    D: Dimension,
{
    assert_eq!(a.shape(), b.shape(), "rel_err: shapes differ");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    max_abs_diff(a, b) / scale
}

/// `max |a − b|` over all elements; NaN anywhere gives infinity.
///
/// # Panics
/// When the shapes differ.
pub fn max_abs_diff<A, B, D>(a: &ArrayBase<A, D>, b: &ArrayBase<B, D>) -> f64
where
    A: Data<Elem = f64>,
    B: Data<Elem = f64>,
    D: Dimension,
{
    assert_eq!(a.shape(), b.shape(), "max_abs_diff: shapes differ");
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    })
}

/// `max |a − b| / max |b|` for slices (see [`rel_err`]).
///
/// # Panics
/// When the lengths differ.
pub fn rel_err_slice(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err_slice: lengths differ");
    rel_err(&ndarray::ArrayView1::from(a), &ndarray::ArrayView1::from(b))
}

/// A test's own temporary directory `cnn-<name>-XXXXXX` under the system's
/// temporary folder, removed with everything in it when dropped, even when
/// the test fails.
///
/// # Panics
/// When the directory cannot be created (the test cannot run).
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cnn-{name}-"))
        .tempdir()
        .expect("create a temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_relative_to_the_reference() {
        let a = ndarray::arr1(&[1.0, 2.0, 3.5]);
        let b = ndarray::arr1(&[1.0, 2.0, 4.0]);
        assert_eq!(max_abs_diff(&a, &b), 0.5);
        assert_eq!(rel_err(&a, &b), 0.125);
        assert_eq!(rel_err_slice(&[f64::NAN], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn temporary_directories_are_removed() {
        let dir = temp_dir("support");
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("f"), b"x").expect("write");
        drop(dir);
        assert!(!path.exists());
    }
}
