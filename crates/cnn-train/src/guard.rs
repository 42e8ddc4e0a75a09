//! The divergence guard: stop a run whose loss has left the rails, and say why.

use cnn_tensor::{Error, Result};
use serde::{Deserialize, Serialize};

/// Trips on a non-finite loss at once, or on a loss above `factor ×` the
/// first step's loss for `patience` steps in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DivergenceGuard {
    /// Multiple of the initial loss counted as diverging.
    pub factor: f64,
    /// Steps in a row above the bound before it trips.
    pub patience: usize,
    /// The first step's loss (set by the first check).
    pub initial: Option<f64>,
    /// Steps in a row above the bound so far.
    pub strikes: usize,
}

impl DivergenceGuard {
    /// A guard with no loss seen yet.
    pub fn new(factor: f64, patience: usize) -> Self {
        DivergenceGuard { factor, patience, initial: None, strikes: 0 }
    }

    /// Checks the loss of `step` (taken at learning rate `lr`).
    ///
    /// # Errors
    /// [`Error::Diverged`] with what was seen and what to try.
    pub fn check(&mut self, step: u64, loss: f64, lr: f64) -> Result<()> {
        let advice = "lower the learning rate (--lr), or add a warmup (--schedule warmup-cosine or one-cycle)";
        if !loss.is_finite() {
            return Err(Error::Diverged {
                step,
                msg: format!("the loss is {loss} (lr {lr:.3e}); {advice}"),
            });
        }
        let initial = *self.initial.get_or_insert(loss);
        if loss > self.factor * initial {
            self.strikes += 1;
            if self.strikes >= self.patience {
                return Err(Error::Diverged {
                    step,
                    msg: format!(
                        "the loss has been above {}× its initial {initial:.4} for {} steps (now {}, lr {lr:.3e}); {advice}",
                        self.factor,
                        self.strikes,
                        if loss < 1e5 { format!("{loss:.4}") } else { format!("{loss:.3e}") }
                    ),
                });
            }
        } else {
            self.strikes = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_trips_at_once_with_advice() {
        let mut g = DivergenceGuard::new(4.0, 3);
        g.check(0, 2.3, 0.1).unwrap();
        let e = g.check(1, f64::NAN, 0.1).unwrap_err().to_string();
        assert!(e.starts_with("training diverged at step 1: the loss is NaN"), "{e}");
        assert!(e.contains("lower the learning rate"), "{e}");
    }

    #[test]
    fn high_loss_trips_after_patience_and_recovery_resets() {
        let mut g = DivergenceGuard::new(4.0, 3);
        g.check(0, 1.0, 0.1).unwrap();
        g.check(1, 5.0, 0.1).unwrap();
        g.check(2, 5.0, 0.1).unwrap();
        g.check(3, 1.0, 0.1).unwrap();
        g.check(4, 5.0, 0.1).unwrap();
        g.check(5, 5.0, 0.1).unwrap();
        assert!(matches!(g.check(6, 5.0, 0.1), Err(Error::Diverged { step: 6, .. })));
    }
}
