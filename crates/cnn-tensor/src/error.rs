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
    /// [`Error::Io`] while doing `verb` (`"read"`, `"create"`, `"write"`) to
    /// `path`: `read photos/a.jpg: No such file or directory (os error 2)`.
    pub fn io(verb: &str, path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { context: format!("{verb} {}", path.as_ref().display()), source }
    }

    /// [`Error::Format`] for `what` (the file or record read): `what: msg`.
    pub fn format(what: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Format { context: what.to_string(), msg: msg.into() }
    }

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

    /// This error with `note` after what it says, in parentheses
    /// (`file: cannot decode: … (12 samples read before it)`); variants
    /// without free text are returned as they are.
    pub fn with_note(self, note: &str) -> Self {
        match self {
            Error::Format { context, msg } => {
                Error::Format { context, msg: format!("{msg} ({note})") }
            }
            Error::Io { context, source } => {
                Error::Io { context: format!("{context} ({note})"), source }
            }
            e => e,
        }
    }

    /// This error led by `summary`, what failed following in parentheses
    /// (`the checkpoint of epoch 4 could not be written; … (write x.tmp): No space left`);
    /// variants without free text are returned as they are.
    pub fn led_by(self, summary: &str) -> Self {
        match self {
            Error::Io { context, source } => {
                Error::Io { context: format!("{summary} ({context})"), source }
            }
            Error::Format { context, msg } => {
                Error::Format { context, msg: format!("{summary}: {msg}") }
            }
            e => e,
        }
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

    #[test]
    fn notes_go_after_the_message_and_summaries_before_the_failed_step() {
        let io =
            || Error::Io { context: "write a.tmp".into(), source: std::io::Error::other("full") };
        assert_eq!(io().with_note("3 read").to_string(), "write a.tmp (3 read): full");
        assert_eq!(io().led_by("no checkpoint").to_string(), "no checkpoint (write a.tmp): full");
        let f = Error::Format { context: "x.png".into(), msg: "bad".into() };
        assert_eq!(f.with_note("n").to_string(), "x.png: bad (n)");
        assert_eq!(Error::config("t", "c").with_note("n").to_string(), "t: invalid setting: c");
    }
}
