//! What a run shows while it works: progress bars on a terminal, one line
//! per epoch otherwise, nothing when quiet.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::EpochRecord;

/// How [`crate::Trainer`] reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Bars when both stdout and stderr are terminals, else [`ProgressMode::Lines`].
    #[default]
    Auto,
    /// indicatif bars on stderr: epochs, and the batches with running loss,
    /// accuracy, images/s and ETA; a line per finished epoch above them.
    Bars,
    /// One plain line per epoch on stdout (logs, pipes, CI).
    Lines,
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto
                if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() =>
            {
                ProgressMode::Bars
            }
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        }
    }
}

/// The live display of one [`crate::Trainer::fit`].
pub(crate) struct Progress {
    mode: ProgressMode,
    epochs: usize,
    multi: Option<MultiProgress>,
    epoch_bar: Option<ProgressBar>,
    batch_bar: Option<ProgressBar>,
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode, epochs: usize, done_epochs: usize) -> Self {
        let mode = mode.resolve();
        let mut p = Progress { mode, epochs, multi: None, epoch_bar: None, batch_bar: None };
        if mode == ProgressMode::Bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let bar = multi.add(ProgressBar::new(epochs as u64));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>7} [{bar:30.green/white}] {pos}/{len} epochs  elapsed {elapsed}  eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix("run");
            bar.set_position(done_epochs as u64);
            p.epoch_bar = Some(bar);
            p.multi = Some(multi);
        }
        p
    }

    pub(crate) fn start_epoch(&mut self, epoch: usize, batches: usize, done: usize) {
        if let Some(multi) = &self.multi {
            let bar = multi.add(ProgressBar::new(batches as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>7} [{bar:30.cyan/white}] {pos}/{len}  {msg}  eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("epoch {}", epoch + 1));
            bar.set_position(done as u64);
            bar.enable_steady_tick(Duration::from_millis(250));
            self.batch_bar = Some(bar);
        }
    }

    pub(crate) fn batch(&self, loss: f64, accuracy: f64, images_per_second: f64) {
        if let Some(bar) = &self.batch_bar {
            bar.set_message(format!(
                "loss {loss:.4}  acc {:.2}%  {images_per_second:.0} img/s",
                100.0 * accuracy
            ));
            bar.inc(1);
        }
    }

    pub(crate) fn end_epoch(&mut self, record: &EpochRecord) {
        self.println(&record.line(self.epochs));
        if let Some(bar) = self.batch_bar.take() {
            bar.finish_and_clear();
            if let Some(multi) = &self.multi {
                multi.remove(&bar);
            }
        }
        if let Some(bar) = &self.epoch_bar {
            bar.inc(1);
        }
    }

    /// A warning on stderr (above the bars), shown even when quiet.
    pub(crate) fn warn(&self, line: &str) {
        match &self.multi {
            Some(multi) => {
                if multi.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }

    /// A line above the bars (or on stdout), unless quiet.
    pub(crate) fn println(&self, line: &str) {
        match (&self.multi, self.mode) {
            (_, ProgressMode::Quiet) => {}
            (Some(multi), _) => {
                let _ = multi.println(line);
            }
            _ => println!("{line}"),
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.batch_bar.take() {
            bar.finish_and_clear();
        }
        if let Some(bar) = self.epoch_bar.take() {
            bar.finish_and_clear();
        }
        if let Some(multi) = self.multi.take() {
            let _ = multi.clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
