//! Fans and gains, as `torch.nn.init._calculate_fan_in_and_fan_out` and `calculate_gain`.

use cnn_tensor::{Error, Result};

/// Which fan a Kaiming init preserves the variance of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FanMode {
    /// Keeps activations' variance in the forward pass (PyTorch's default).
    #[default]
    FanIn,
    /// Keeps gradients' variance in the backward pass.
    FanOut,
}

/// The nonlinearity that follows a layer, which sets the init's gain.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Nonlinearity {
    /// Identity: gain 1.
    Linear,
    /// A convolution with no activation: gain 1.
    Conv,
    /// Gain 1.
    Sigmoid,
    /// Gain 5/3.
    Tanh,
    /// Gain √2: ReLU zeroes half its input, halving the second moment.
    #[default]
    Relu,
    /// Gain √(2 / (1 + slope²)).
    LeakyRelu(f64),
    /// Gain 3/4.
    Selu,
}

/// The recommended gain for a nonlinearity (`torch.nn.init.calculate_gain`).
pub fn calculate_gain(nonlinearity: Nonlinearity) -> f64 {
    match nonlinearity {
        Nonlinearity::Linear | Nonlinearity::Conv | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2f64.sqrt(),
        Nonlinearity::LeakyRelu(slope) => (2.0 / (1.0 + slope * slope)).sqrt(),
        Nonlinearity::Selu => 0.75,
    }
}

/// `(fan_in, fan_out)` of a weight shape: `[out, in, *kernel]` gives
/// `(in·∏kernel, out·∏kernel)`, PyTorch's layout for linear and conv weights.
///
/// # Errors
/// [`Error::Shape`] for fewer than two dimensions, as PyTorch raises.
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(
            "init",
            format!("fan in and fan out need a weight of at least 2 dimensions, got {shape:?}"),
        ));
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fans_follow_pytorch() {
        assert_eq!(fans(&[64, 3, 7, 7]).unwrap(), (147, 3136));
        assert_eq!(fans(&[10, 512]).unwrap(), (512, 10));
        assert!(fans(&[5]).is_err());
    }

    #[test]
    fn gains_follow_pytorch() {
        assert_eq!(calculate_gain(Nonlinearity::Relu), 2f64.sqrt());
        // kaiming_uniform_(a=√5), PyTorch's default for Linear and Conv: gain √(1/3).
        approx::assert_relative_eq!(
            calculate_gain(Nonlinearity::LeakyRelu(5f64.sqrt())),
            (1.0f64 / 3.0).sqrt()
        );
        assert_eq!(calculate_gain(Nonlinearity::Tanh), 5.0 / 3.0);
    }
}
