//! Decoding bytes we did not write: a panic inside a dependency's decoder
//! (an image, gzip, safetensors or JSON reader) becomes our [`Error`] naming
//! the file, instead of ending the program.
//!
//! Decoders are fuzzed by their authors, but not to exhaustion: a JPEG with
//! lying sampling factors still panics inside zune-jpeg 0.5.15 (its issue
//! #361 is open). A training run over 50,000 photos must not die on the one
//! that is bad, so every decode of a user's bytes goes through
//! [`contain_panic`], which runs it under `catch_unwind`. That is sound here
//! because a decoder's state lives and dies inside the call: nothing it
//! half-built is used after the panic.
//!
//! Rust's default panic hook still prints `thread … panicked at …` for a
//! panic that is caught. A program that reports errors itself (the `cnn`
//! binary) calls [`quiet_contained_panics`] once at start: panics inside
//! [`contain_panic`] are then not printed (their message is in the error),
//! and every other panic is printed as before.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::{Error, Result};

thread_local! {
    /// How many [`contain_panic`] calls this thread is inside.
    static CONTAINING: Cell<usize> = const { Cell::new(0) };
}

/// Whether this thread is inside [`contain_panic`] (a panic now would be contained).
pub fn is_containing() -> bool {
    CONTAINING.with(Cell::get) > 0
}

/// Restores the depth counter even when the closure unwinds.
struct Depth;

impl Depth {
    fn enter() -> Depth {
        CONTAINING.with(|c| c.set(c.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        CONTAINING.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// The text of a panic's payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Runs `decode` (a dependency's decoder, on bytes from `file`); a panic
/// inside it becomes [`Error::Format`] with `file` as its context (formatted
/// only then: a lazy [`std::fmt::Display`] costs nothing per call), saying
/// that `decoder` (`"the JPEG decoder"`) failed on the file, with the
/// panic's message.
///
/// ```
/// use cnn_tensor::untrusted::contain_panic;
///
/// let r: cnn_tensor::Result<u8> = contain_panic("photos/cat.jpg", "the JPEG decoder", || {
///     let v: Vec<u8> = Vec::new();
///     Ok(v[3]) // a decoder's out-of-bounds index
/// });
/// let e = r.unwrap_err().to_string();
/// assert!(e.starts_with("photos/cat.jpg: the JPEG decoder failed on this file"), "{e}");
/// ```
///
/// # Errors
/// Whatever `decode` returns, and [`Error::Format`] for a panic inside it.
pub fn contain_panic<T>(
    file: impl std::fmt::Display,
    decoder: &str,
    decode: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let depth = Depth::enter();
    // AssertUnwindSafe: the decoder's state is created inside `decode` and
    // dropped with it; after a panic nothing of it is looked at again.
    let outcome = catch_unwind(AssertUnwindSafe(decode));
    drop(depth);
    outcome.unwrap_or_else(|payload| {
        Err(Error::format(
            file,
            format!(
                "{decoder} failed on this file (it panicked: {}); the file is likely corrupt",
                panic_message(&*payload)
            ),
        ))
    })
}

/// Installs, once per process, a panic hook that stays silent for panics
/// inside [`contain_panic`] (they become errors that say the same) and hands
/// every other panic to the hook that was there before.
///
/// For programs, not libraries: the hook is process-wide.
pub fn quiet_contained_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !is_containing() {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_the_file_and_the_depth_unwinds() {
        quiet_contained_panics();
        let r: Result<()> =
            contain_panic("a/b.png", "the PNG decoder", || panic!("index 7 out of range"));
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            "a/b.png: the PNG decoder failed on this file (it panicked: index 7 out of range); the file is likely corrupt"
        );
        assert!(!is_containing());
        // Errors and values pass through untouched, nested calls too.
        let ok = contain_panic("x", "the gzip decoder", || contain_panic("y", "inner", || Ok(5)));
        assert_eq!(ok.unwrap(), 5);
        let err: Result<()> =
            contain_panic("x", "the gzip decoder", || Err(Error::config("t", "no")));
        assert_eq!(err.unwrap_err().to_string(), "t: invalid setting: no");
        assert!(!is_containing());
    }

    #[test]
    fn a_formatted_panic_keeps_its_message() {
        let r: Result<()> = contain_panic("f", "the JPEG decoder", || panic!("{} of {}", 3, 4));
        assert!(r.unwrap_err().to_string().contains("it panicked: 3 of 4"));
    }
}
