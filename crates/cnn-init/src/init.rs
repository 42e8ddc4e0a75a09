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
