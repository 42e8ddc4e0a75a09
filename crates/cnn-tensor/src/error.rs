//! The one error type of the workspace.

/// What went wrong, with the op's name and what was expected and found.
///
/// Every function that takes user shapes, files or settings answers with this
/// instead of panicking. New variants may be added, hence `#[non_exhaustive]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input's shape does not fit the op: `conv2d: input has 3 channels, weight expects 4`.
    #[error("{op}: {msg}")]
    Shape {
        /// The op that refused the input.
        op: &'static str,
        /// What was expected and what was found.
        msg: String,
    },
    /// A setting is out of its range: a zero stride, groups not dividing channels.
    #[error("{op}: invalid setting: {msg}")]
    Config {
        /// The op that refused the setting.
        op: &'static str,
        /// Which setting, and why.
        msg: String,
    },
    /// `backward` was called without a train-mode `forward` before it.
    #[error("{op}: backward called without a train-mode forward before it")]
    NoForward {
        /// The layer that has nothing cached.
        op: &'static str,
    },
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its contents are not what they should be.
    #[error("{context}: {msg}")]
    Format {
        /// The file or record being read.
        context: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Training stopped because the loss stopped being a usable number.
    #[error("training diverged at step {step}: {msg}")]
    Diverged {
        /// The global step (from 0) whose loss tripped the guard.
        step: u64,
        /// What was seen, and what to try.
        msg: String,
    },
    /// Data-parallel training failed across ranks: a transport error, a rank
    /// that left, or another rank's error relayed: `distributed: rank 0 failed: …`.
    #[error("distributed: {msg}")]
    Distributed {
        /// What failed, naming the rank.
        msg: String,
    },
}

impl Error {
    /// A [`Error::Shape`] for `op`.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }

    /// A [`Error::Config`] for `op`.
    pub fn config(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Config { op, msg: msg.into() }
    }

    /// A [`Error::Distributed`].
    pub fn distributed(msg: impl Into<String>) -> Self {
        Error::Distributed { msg: msg.into() }
    }
}

/// `Result` with this workspace's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ndarray::ShapeError> for Error {
    /// An ndarray reshape or view that does not fit, as an [`Error::Shape`] of
    /// op `ndarray`: so `?` works on `into_shape_with_order` and friends.
    fn from(e: ndarray::ShapeError) -> Self {
        Error::shape("ndarray", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndarray_shape_errors_convert() {
        fn reshape() -> Result<ndarray::ArrayD<f32>> {
            Ok(ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 3]))
                .into_shape_with_order(vec![4])?)
        }
        let e = reshape().unwrap_err();
        assert!(matches!(e, Error::Shape { op: "ndarray", .. }), "{e}");
        assert!(e.to_string().starts_with("ndarray: "), "{e}");
    }
}
