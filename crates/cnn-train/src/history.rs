//! The per-epoch record of a run, written as `metrics.csv` and `metrics.json`.

use std::fmt::Write as _;
use std::path::Path;

use cnn_tensor::{write_atomic, Error, Result};
use serde::{Deserialize, Serialize};

/// One epoch of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (train mode, augmented data).
    pub train_loss: f64,
    /// Training top-1 accuracy in [0, 1].
    pub train_accuracy: f64,
    /// Validation loss (eval mode), when there is a validation split.
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy.
    pub val_accuracy: Option<f64>,
    /// Validation top-5 accuracy, past 5 classes.
    pub val_top5: Option<f64>,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch, validation included, in seconds.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

impl EpochRecord {
    /// The record without its timings: what must repeat bitwise when a run is repeated or resumed.
    pub fn without_timings(&self) -> EpochRecord {
        EpochRecord { seconds: 0.0, images_per_second: 0.0, ..self.clone() }
    }

    /// One line for logs: `epoch 3/30  train loss 0.2345 acc 93.12%  val …  lr 0.0812  2.1 s  812 img/s`.
    pub fn line(&self, epochs: usize) -> String {
        let mut s = format!(
            "epoch {:>w$}/{epochs}  train loss {:.4} acc {:6.2}%",
            self.epoch,
            self.train_loss,
            100.0 * self.train_accuracy,
            w = epochs.to_string().len()
        );
        if let (Some(l), Some(a)) = (self.val_loss, self.val_accuracy) {
            let _ = write!(s, "  val loss {l:.4} acc {:6.2}%", 100.0 * a);
        }
        let _ = write!(
            s,
            "  lr {:.3e}  {:.1} s  {:.0} img/s",
            self.lr, self.seconds, self.images_per_second
        );
        s
    }
}

/// Every epoch of a run so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// One record per finished epoch, in order.
    pub epochs: Vec<EpochRecord>,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

impl History {
    /// The CSV text: a header, then one row per epoch (empty cells where there is no validation).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_top5,lr,seconds,images_per_second\n",
        );
        for r in &self.epochs {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{}",
                r.epoch,
                r.train_loss,
                r.train_accuracy,
                opt(r.val_loss),
                opt(r.val_accuracy),
                opt(r.val_top5),
                r.lr,
                r.seconds,
                r.images_per_second
            );
        }
        out
    }

    /// Writes `metrics.csv` and `metrics.json` into `dir`, each atomically.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join("metrics.csv"), self.to_csv().as_bytes())?;
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::format("metrics.json", e.to_string()))?;
        write_atomic(&dir.join("metrics.json"), &json)
    }

    /// Reads a `metrics.json` written by [`History::write`].
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read, [`Error::Format`] naming the file when it does not parse.
    pub fn read_json(path: &Path) -> Result<History> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let context = path.display().to_string();
        cnn_tensor::untrusted::contain_panic(&context, "the JSON parser", || {
            serde_json::from_slice(&bytes).map_err(|e| Error::format(&context, e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, val: bool) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: 0.5,
            train_accuracy: 0.875,
            val_loss: val.then_some(0.25),
            val_accuracy: val.then_some(0.9),
            val_top5: None,
            lr: 0.01,
            seconds: 1.5,
            images_per_second: 1000.0,
        }
    }

    #[test]
    fn csv_has_a_header_and_empty_cells_without_validation() {
        let h = History { epochs: vec![record(1, true), record(2, false)] };
        let csv = h.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], "1,0.5,0.875,0.25,0.9,,0.01,1.5,1000");
        assert_eq!(lines[2], "2,0.5,0.875,,,,0.01,1.5,1000");
    }

    #[test]
    fn line_reads_well() {
        assert_eq!(
            record(3, true).line(30),
            "epoch  3/30  train loss 0.5000 acc  87.50%  val loss 0.2500 acc  90.00%  lr 1.000e-2  1.5 s  1000 img/s"
        );
    }
}
