//! `report.md`: one section per step.

use std::fmt::Write as _;

use super::TuneReport;

pub(crate) fn markdown(report: &TuneReport, title: &str, context: &[String]) -> String {
    let mut md = format!("# {title}\n\n");
    for line in context {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(md, "- Wall time: {:.1} s\n", report.seconds);
    md.push_str("| step | verdict | finding |\n| --- | :---: | --- |\n");
    for s in &report.steps {
        let _ = writeln!(
            md,
            "| {}. {} | {} | {} |",
            s.number,
            s.title,
            s.verdict,
            s.summary.replace('|', "\\|")
        );
    }
    if let (Some(best), Some(acc)) = (&report.best, report.best_val_accuracy) {
        let _ = writeln!(
            md,
            "\nBest configuration (best.json): lr {:.3e}, weight decay {:.3e}, {} epochs, {:?} schedule, {:?}; validation accuracy {:.2}%. Train it with `cnn train --config best.json` and the same data and network options.",
            best.optimizer.lr, best.optimizer.weight_decay, best.epochs, best.schedule, best.optimizer, 100.0 * acc
        );
    }
    for s in &report.steps {
        let _ = write!(
            md,
            "\n## Step {}: {}\n\n**Verdict: {}.** {}\n\n",
            s.number, s.title, s.verdict, s.summary
        );
        if !s.table.is_empty() {
            let _ = writeln!(md, "{}", s.table.trim_end());
            md.push('\n');
        }
        if let Some(plot) = &s.plot {
            let _ = writeln!(md, "![Step {}]({plot})\n", s.number);
        }
        let _ = writeln!(md, "**What to do next:** {}", s.next);
    }
    md
}
