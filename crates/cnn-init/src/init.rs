//! The initializers: each returns a new tensor drawn from the caller's generator.

use cnn_tensor::{random, ArrayD, Error, Float, IxDyn, Result};
use rand::Rng;

use crate::{calculate_gain, fans, FanMode, Nonlinearity};

fn fan(shape: &[usize], mode: FanMode) -> Result<usize> {
    let (fan_in, fan_out) = fans(shape)?;
    let f = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    if f == 0 {
        return Err(Error::shape("init", format!("weight {shape:?} has a zero fan")));
    }
    Ok(f)
}

/// Kaiming (He) normal: N(0, std²) with `std = gain / √fan` (`nn.init.kaiming_normal_`).
///
/// # Errors
/// [`Error::Shape`] for fewer than 2 dimensions or a zero fan.
pub fn kaiming_normal<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut R,
) -> Result<ArrayD<T>> {
    let std = calculate_gain(nonlinearity) / (fan(shape, mode)? as f64).sqrt();
    Ok(random::normal(shape, 0.0, std, rng))
}

/// Kaiming (He) uniform: U(±bound) with `bound = gain·√(3 / fan)`, the same
/// variance as [`kaiming_normal`] (`nn.init.kaiming_uniform_`).
///
/// # Errors
/// [`Error::Shape`] for fewer than 2 dimensions or a zero fan.
pub fn kaiming_uniform<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut R,
) -> Result<ArrayD<T>> {
    let bound = calculate_gain(nonlinearity) * (3.0 / fan(shape, mode)? as f64).sqrt();
    Ok(random::uniform(shape, -bound, bound, rng))
}

/// Xavier (Glorot) normal: `std = gain·√(2 / (fan_in + fan_out))` (`nn.init.xavier_normal_`).
///
/// # Errors
/// [`Error::Shape`] for fewer than 2 dimensions or zero fans.
pub fn xavier_normal<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    gain: f64,
    rng: &mut R,
) -> Result<ArrayD<T>> {
    let (fan_in, fan_out) = fans(shape)?;
    if fan_in + fan_out == 0 {
        return Err(Error::shape("init", format!("weight {shape:?} has zero fans")));
    }
    Ok(random::normal(shape, 0.0, gain * (2.0 / (fan_in + fan_out) as f64).sqrt(), rng))
}

/// Xavier (Glorot) uniform: `bound = gain·√(6 / (fan_in + fan_out))` (`nn.init.xavier_uniform_`).
///
/// # Errors
/// [`Error::Shape`] for fewer than 2 dimensions or zero fans.
pub fn xavier_uniform<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    gain: f64,
    rng: &mut R,
) -> Result<ArrayD<T>> {
    let (fan_in, fan_out) = fans(shape)?;
    if fan_in + fan_out == 0 {
        return Err(Error::shape("init", format!("weight {shape:?} has zero fans")));
    }
    let bound = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
    Ok(random::uniform(shape, -bound, bound, rng))
}

/// N(mean, std²) (`nn.init.normal_`).
///
/// # Errors
/// [`Error::Config`] for a negative or non-finite `std`.
pub fn normal<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    mean: f64,
    std: f64,
    rng: &mut R,
) -> Result<ArrayD<T>> {
    if !(std >= 0.0 && std.is_finite() && mean.is_finite()) {
        return Err(Error::config(
            "init",
            format!("normal needs a finite mean and std >= 0, got {mean}, {std}"),
        ));
    }
    Ok(random::normal(shape, mean, std, rng))
}

/// N(mean, std²) truncated to `[a, b]` (`nn.init.trunc_normal_`; timm's
/// init draws `trunc_normal_(std=0.02)` with PyTorch's absolute bounds ±2).
/// Values outside the bounds are drawn again.
///
/// # Errors
/// [`Error::Config`] for a negative or non-finite `std`, or bounds that do not
/// hold at least 1% of the distribution (a rejection loop could then spin).
pub fn trunc_normal<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    mean: f64,
    std: f64,
    (a, b): (f64, f64),
    rng: &mut R,
) -> Result<ArrayD<T>> {
    let cdf = |z: f64| 0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2));
    let mass = if std > 0.0 { cdf((b - mean) / std) - cdf((a - mean) / std) } else { 1.0 };
    let valid = std >= 0.0 && std.is_finite() && mean.is_finite() && a < b;
    if !valid || mass < 0.01 || (std == 0.0 && !(a..=b).contains(&mean)) {
        return Err(Error::config(
            "init",
            format!("trunc_normal needs std >= 0 and bounds [{a}, {b}] holding the mass around mean {mean} (std {std})"),
        ));
    }
    let n: usize = shape.iter().product();
    let mut values = Vec::with_capacity(n);
    while values.len() < n {
        let v = mean + std * random::normal::<f64, _>(&[1], 0.0, 1.0, rng)[[0]];
        if (a..=b).contains(&v) {
            values.push(T::of(v));
        }
    }
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .map_err(|e| Error::shape("trunc_normal", e.to_string()))
}

/// The error function, by Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7):
/// enough to check that truncation bounds hold the distribution's mass.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

/// U[low, high) (`nn.init.uniform_`).
///
/// # Errors
/// [`Error::Config`] when `low > high` or a bound is not finite.
pub fn uniform<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    low: f64,
    high: f64,
    rng: &mut R,
) -> Result<ArrayD<T>> {
    if !(low <= high && low.is_finite() && high.is_finite()) {
        return Err(Error::config(
            "init",
            format!("uniform needs finite low <= high, got [{low}, {high})"),
        ));
    }
    Ok(random::uniform(shape, low, high, rng))
}

/// All zeros (`nn.init.zeros_`).
pub fn zeros<T: Float>(shape: &[usize]) -> ArrayD<T> {
    ArrayD::zeros(IxDyn(shape))
}

/// All ones (`nn.init.ones_`).
pub fn ones<T: Float>(shape: &[usize]) -> ArrayD<T> {
    ArrayD::ones(IxDyn(shape))
}

/// Every entry `value` (`nn.init.constant_`).
pub fn constant<T: Float>(shape: &[usize], value: f64) -> ArrayD<T> {
    ArrayD::from_elem(IxDyn(shape), T::of(value))
}

/// PyTorch's default weight init for `nn.Linear` and `nn.Conv2d`:
/// `kaiming_uniform_(a=√5)`, which is U(±1/√fan_in).
///
/// # Errors
/// [`Error::Shape`] for fewer than 2 dimensions or a zero fan.
pub fn pytorch_default_weight<T: Float, R: Rng + ?Sized>(
    shape: &[usize],
    rng: &mut R,
) -> Result<ArrayD<T>> {
    kaiming_uniform(shape, FanMode::FanIn, Nonlinearity::LeakyRelu(5f64.sqrt()), rng)
}

/// PyTorch's default bias init for `nn.Linear` and `nn.Conv2d`: U(±1/√fan_in)
/// with the fan of the layer's weight shape.
///
/// # Errors
/// [`Error::Shape`] for a weight of fewer than 2 dimensions or a zero fan.
pub fn pytorch_default_bias<T: Float, R: Rng + ?Sized>(
    weight_shape: &[usize],
    rng: &mut R,
) -> Result<ArrayD<T>> {
    let bound = 1.0 / (fan(weight_shape, FanMode::FanIn)? as f64).sqrt();
    Ok(random::uniform(&[weight_shape[0]], -bound, bound, rng))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnn_tensor::random::seeded_rng;

    fn moments(a: &ArrayD<f64>) -> (f64, f64) {
        let n = a.len() as f64;
        let mean = a.sum() / n;
        (mean, (a.mapv(|v| (v - mean).powi(2)).sum() / n).sqrt())
    }

    #[test]
    fn trunc_normal_stays_in_bounds_with_the_truncated_std() {
        let mut rng = seeded_rng(1);
        // timm's ConvNeXt init: std 0.02, bounds ±2 (100σ): the plain normal.
        let w: ArrayD<f64> = trunc_normal(&[200_000], 0.0, 0.02, (-2.0, 2.0), &mut rng).unwrap();
        let (mean, std) = moments(&w);
        assert!(mean.abs() < 1e-3 * 0.02 * 5.0 && (std / 0.02 - 1.0).abs() < 0.01, "{mean} {std}");
        // Truncated at ±1σ: all inside, std √(1 − 2φ(1)/(Φ(1) − Φ(−1))) ≈ 0.5379.
        let w: ArrayD<f64> = trunc_normal(&[200_000], 0.0, 1.0, (-1.0, 1.0), &mut rng).unwrap();
        assert!(w.iter().all(|v| v.abs() <= 1.0));
        assert!((moments(&w).1 - 0.5379).abs() < 0.005, "{}", moments(&w).1);
        assert!(trunc_normal::<f64, _>(&[1], 0.0, 1.0, (5.0, 6.0), &mut rng).is_err());
        assert!(trunc_normal::<f64, _>(&[1], 0.0, -1.0, (-2.0, 2.0), &mut rng).is_err());
    }

    #[test]
    fn stds_match_the_formulas() {
        let mut rng = seeded_rng(0);
        let shape = [256, 128, 3, 3]; // fan_in 1152, fan_out 2304
        let cases: Vec<(ArrayD<f64>, f64)> = vec![
            (
                kaiming_normal(&shape, FanMode::FanIn, Nonlinearity::Relu, &mut rng).unwrap(),
                (2.0 / 1152.0f64).sqrt(),
            ),
            (
                kaiming_uniform(&shape, FanMode::FanOut, Nonlinearity::Relu, &mut rng).unwrap(),
                (2.0 / 2304.0f64).sqrt(),
            ),
            (xavier_normal(&shape, 1.0, &mut rng).unwrap(), (2.0 / 3456.0f64).sqrt()),
            (xavier_uniform(&shape, 1.0, &mut rng).unwrap(), (2.0 / 3456.0f64).sqrt()),
            (pytorch_default_weight(&shape, &mut rng).unwrap(), 1.0 / (3.0 * 1152.0f64).sqrt()),
        ];
        // 295k draws: the sample std is within 0.5% of the true one with overwhelming probability.
        for (i, (w, want)) in cases.iter().enumerate() {
            let (mean, std) = moments(w);
            assert!(mean.abs() < 0.01 * want, "case {i}: mean {mean}");
            assert!((std / want - 1.0).abs() < 0.005, "case {i}: std {std} want {want}");
        }
    }

    #[test]
    fn same_seed_same_weights() {
        let a: ArrayD<f32> =
            kaiming_normal(&[8, 4, 3, 3], FanMode::FanIn, Nonlinearity::Relu, &mut seeded_rng(5))
                .unwrap();
        let b: ArrayD<f32> =
            kaiming_normal(&[8, 4, 3, 3], FanMode::FanIn, Nonlinearity::Relu, &mut seeded_rng(5))
                .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut rng = seeded_rng(0);
        assert!(
            kaiming_normal::<f32, _>(&[4], FanMode::FanIn, Nonlinearity::Relu, &mut rng).is_err()
        );
        assert!(kaiming_normal::<f32, _>(&[4, 0], FanMode::FanIn, Nonlinearity::Relu, &mut rng)
            .is_err());
        assert!(uniform::<f32, _>(&[4], 1.0, 0.0, &mut rng).is_err());
        assert!(normal::<f32, _>(&[4], 0.0, -1.0, &mut rng).is_err());
        assert_eq!(constant::<f32>(&[2], 0.5).as_slice().unwrap(), &[0.5, 0.5]);
    }
}
