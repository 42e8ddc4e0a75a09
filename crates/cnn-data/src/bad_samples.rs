//! What a run does with samples it cannot read: the policy
//! ([`BadSamples`]) and the log of what was left out ([`SkipLog`]).

use std::sync::Arc;

use cnn_tensor::untrusted::contain_panic;
use cnn_tensor::{Error, Result};
use ndarray::Array3;

use crate::Dataset;

/// What a loader does with a sample it cannot read: a corrupt, truncated or
/// vanished file ([`Error::Format`] or [`Error::Io`] from [`crate::Dataset::get`],
/// or a panic inside its decoder).
#[derive(Debug, Clone, Default)]
pub enum BadSamples {
    /// The batch fails with the error, which names the sample's file and the
    /// count of samples read before it (PyTorch's `ImageFolder` habit).
    #[default]
    Fail,
    /// The sample is left out of its batch (the others keep their order, so
    /// a batch can come out short, or empty) and recorded once in the log.
    /// A file that stays bad is left out of every epoch, so runs stay
    /// deterministic and resume exactly.
    Skip(Arc<SkipLog>),
}

impl BadSamples {
    /// Reads sample `i` of `dataset` under this policy, a panic in its reader
    /// contained: `Some` when read; `None` when it cannot be read (a format
    /// or I/O error) and the policy skips it (it is logged); under `Fail`
    /// that error, with `read_before` samples noted in its message. Other
    /// errors (an index out of range) pass through.
    ///
    /// # Errors
    /// As said: an unreadable sample under `Fail`, or any other error of `get`.
    pub fn read(
        &self,
        dataset: &dyn Dataset,
        i: usize,
        read_before: u64,
    ) -> Result<Option<(Array3<f32>, usize)>> {
        let name = SampleName { dataset, index: i };
        match contain_panic(&name, "the dataset's reader", || dataset.get(i)) {
            Ok(sample) => Ok(Some(sample)),
            Err(e @ (Error::Format { .. } | Error::Io { .. })) => match self {
                BadSamples::Skip(log) => {
                    log.record(&name.to_string(), &e.to_string());
                    Ok(None)
                }
                BadSamples::Fail => {
                    Err(e.with_note(&format!("{read_before} samples read before it")))
                }
            },
            Err(e) => Err(e),
        }
    }
}

/// Where sample `index` comes from, for messages: [`Dataset::source`] (an
/// image folder's path) or `sample N`; formatted only when printed.
pub struct SampleName<'a> {
    /// The dataset.
    pub dataset: &'a dyn Dataset,
    /// The sample.
    pub index: usize,
}

impl std::fmt::Display for SampleName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dataset.source(self.index) {
            Some(s) => f.write_str(&s),
            None => write!(f, "sample {}", self.index),
        }
    }
}

/// The samples a loader left out under [`BadSamples::Skip`]: each one's
/// source (a file's path, or `sample N`) once, with the error that made it
/// unreadable. Shared by the loaders of a run (training, validation, test),
/// and written as `skipped.txt` (`path<TAB>error` a line).
#[derive(Debug, Default)]
pub struct SkipLog {
    entries: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl SkipLog {
    /// An empty log.
    pub fn new() -> Self {
        SkipLog::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        // A panic while the lock was held cannot leave the map half-written
        // (one insert), so a poisoned lock is taken as it is.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `source` as unreadable with `error`; `true` the first time.
    pub fn record(&self, source: &str, error: &str) -> bool {
        // The error usually starts with the file's name: once per line is enough.
        let error = error.strip_prefix(source).and_then(|e| e.strip_prefix(": ")).unwrap_or(error);
        let line = error.replace(['\n', '\t'], " ");
        let mut map = self.lock();
        if map.contains_key(source) {
            return false;
        }
        map.insert(source.replace(['\n', '\t'], " "), line);
        true
    }

    /// How many distinct samples were left out.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(source, error)` pairs, sorted by source.
    pub fn entries(&self) -> Vec<(String, String)> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The log as `skipped.txt` holds it: `source<TAB>error` a line, sorted.
    pub fn to_text(&self) -> String {
        self.lock().iter().map(|(k, v)| format!("{k}\t{v}\n")).collect()
    }

    /// Adds the lines of a `skipped.txt` (a resumed run keeps what it skipped before).
    pub fn extend_from_text(&self, text: &str) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (source, error) = line.split_once('\t').unwrap_or((line, ""));
            self.record(source, error);
        }
    }
}
