//! Seeded random numbers: every random draw in the workspace starts here.

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::Float;

/// The generator the workspace uses: ChaCha8, whose stream is fixed by its
/// seed on every platform and version (unlike `StdRng`).
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// A generator from a seed: the same seed, the same numbers, everywhere.
pub fn seeded_rng(seed: u64) -> SeededRng {
    SeededRng::seed_from_u64(seed)
}

/// SplitMix64's finalizer: decorrelates nearby integers into seeds.
pub fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for the `index`-th stream under `seed`: nearby inputs give unrelated seeds.
pub fn mix_seed(seed: u64, index: u64) -> u64 {
    splitmix(seed ^ splitmix(index.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// A tensor of i.i.d. draws from U[low, high).
pub fn uniform<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    low: f64,
    high: f64,
    rng: &mut R,
) -> ArrayD<T> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || T::of(low + (high - low) * rng.random::<f64>()))
}

/// A tensor of i.i.d. draws from N(mean, std²).
pub fn normal<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    mean: f64,
    std: f64,
    rng: &mut R,
) -> ArrayD<T> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        let z: f64 = StandardNormal.sample(rng);
        T::of(mean + std * z)
    })
}
