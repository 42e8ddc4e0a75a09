//! Every environment switch of the workspace, in one table.
//!
//! A switch is read once per process, the first time a kernel asks. Each is
//! parsed the same way: surrounding space and case ignored, and a value that
//! is not one of its own prints one warning on stderr
//! (`warning: CNN_X="bad" is not one of a, b, c; using <default>`) and counts as unset.
//! [`SWITCHES`] is what `cnn env` and the README list.
//!
//! Two of them can also be set for one thread and one call, ahead of the
//! environment, by a scoped override ([`scoped`]): `cnn_conv::with_conv_algorithm`
//! and `cnn_nn::with_fusion` are that guard over their own thread-local.

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread::LocalKey;

/// One environment variable that changes how the workspace computes, never what.
#[derive(Debug)]
pub struct Switch {
    /// The variable's name, e.g. `CNN_SIMD`.
    pub name: &'static str,
    /// The values it takes, as the user writes them.
    pub values: &'static [&'static str],
    /// What applies when it is unset (or set to a value it does not take).
    pub default: &'static str,
    /// What it does, in one sentence.
    pub what: &'static str,
}

/// `CNN_SIMD`: caps the vector instruction set (`crate::simd::level`).
pub static SIMD: Switch = Switch {
    name: "CNN_SIMD",
    values: &["portable", "avx2", "avx512", "avx512bf16"],
    default: "the best level the CPU has",
    what: "caps the vector instructions every kernel uses (portable runs the baseline path on any CPU)",
};

/// `CNN_GEMM_PANEL`: the micro-kernel's panel shape (`crate::PackedLhs`).
pub static GEMM_PANEL: Switch = Switch {
    name: "CNN_GEMM_PANEL",
    values: &["8x48", "4x96", "12x32", "14x32", "6x64", "16x16", "6x16"],
    default: "6x16 on AVX2, else the CPU vendor's table",
    what: "forces the GEMM micro-kernel's panel, rows x columns",
};

/// `CNN_CONV_ALGORITHM`: how 3×3 stride-1 convolutions are computed (`cnn_conv`).
pub static CONV_ALGORITHM: Switch = Switch {
    name: "CNN_CONV_ALGORITHM",
    values: &["auto", "im2col", "winograd", "winograd2", "winograd4"],
    default: "auto (Winograd F(4x4) where the shape rule says it is faster)",
    what: "chooses the algorithm of convolutions whose options say auto, where it applies",
};

/// `CNN_FUSION`: fused inference, and BatchNorm + ReLU in training (`cnn_nn`).
pub static FUSION: Switch = Switch {
    name: "CNN_FUSION",
    values: &["on", "off"],
    default: "on",
    what: "fuses conv + BatchNorm + ReLU and ConvNeXt's MLP in eval-mode forwards, BatchNorm + ReLU in training (off runs every layer by itself)",
};

/// Every switch, in the order `cnn env` lists them.
pub static SWITCHES: [&Switch; 4] = [&SIMD, &GEMM_PANEL, &CONV_ALGORITHM, &FUSION];

impl Switch {
    /// The switch's value from the environment, parsed by `parse`, or `None`
    /// when it is unset or not a value `parse` takes (then with the warning).
    ///
    /// `parse` sees the value trimmed and lower-cased. Uncached: kernels keep
    /// the result in a `OnceLock` through [`Switch::cached`].
    pub fn read<V>(&self, parse: impl FnOnce(&str) -> Option<V>) -> Option<V> {
        let raw = std::env::var(self.name).ok()?;
        let value = parse(&raw.trim().to_ascii_lowercase());
        if value.is_none() {
            eprintln!("{}", self.warning(&raw));
        }
        value
    }

    /// [`Switch::read`] once per process, kept in `cell`.
    pub fn cached<V: Copy>(
        &self,
        cell: &OnceLock<Option<V>>,
        parse: impl FnOnce(&str) -> Option<V>,
    ) -> Option<V> {
        *cell.get_or_init(|| self.read(parse))
    }

    /// The warning printed for a value the switch does not take.
    pub fn warning(&self, raw: &str) -> String {
        format!(
            "warning: {}={raw:?} is not one of {}; using {}",
            self.name,
            self.values.join(", "),
            self.default
        )
    }
}

/// Parses an on/off switch: `on`, `1`, `true`, `yes` or `off`, `0`, `false`, `no`.
pub fn parse_on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "1" | "true" | "yes" => Some(true),
        "off" | "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// The scoped override of a switch: runs `f` with `key` (a thread-local
/// `Cell<Option<V>>`) set to `Some(value)` on this thread, and restores what
/// it held afterwards, also when `f` panics. Overrides nest.
pub fn scoped<V: Copy + 'static, R>(
    key: &'static LocalKey<Cell<Option<V>>>,
    value: V,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<V: Copy + 'static> {
        key: &'static LocalKey<Cell<Option<V>>>,
        old: Option<V>,
    }
    impl<V: Copy + 'static> Drop for Restore<V> {
        fn drop(&mut self) {
            self.key.with(|c| c.set(self.old));
        }
    }
    let _restore = Restore { key, old: key.with(|c| c.replace(Some(value))) };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static KEY: Cell<Option<u8>> = const { Cell::new(None) };
    }

    #[test]
    fn scoped_overrides_nest_and_restore_on_panic() {
        assert_eq!(KEY.with(Cell::get), None);
        scoped(&KEY, 1, || {
            assert_eq!(KEY.with(Cell::get), Some(1));
            scoped(&KEY, 2, || assert_eq!(KEY.with(Cell::get), Some(2)));
            assert_eq!(KEY.with(Cell::get), Some(1));
            let caught = std::panic::catch_unwind(|| scoped(&KEY, 3, || panic!("inside")));
            assert!(caught.is_err());
            assert_eq!(KEY.with(Cell::get), Some(1));
        });
        assert_eq!(KEY.with(Cell::get), None);
    }

    #[test]
    fn a_bad_value_is_named_with_the_values_and_the_default() {
        assert_eq!(
            FUSION.warning("maybe"),
            "warning: CNN_FUSION=\"maybe\" is not one of on, off; using on"
        );
        assert_eq!(parse_on_off("off"), Some(false));
        assert_eq!(parse_on_off("1"), Some(true));
        assert_eq!(parse_on_off("maybe"), None);
    }

    #[test]
    fn every_switch_is_named_once_and_documented() {
        let mut names: Vec<_> = SWITCHES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SWITCHES.len());
        for s in SWITCHES {
            assert!(s.name.starts_with("CNN_") && !s.values.is_empty() && !s.what.is_empty());
        }
    }

    #[test]
    fn the_panel_values_are_the_compiled_panels() {
        let compiled: Vec<String> =
            crate::PANELS.iter().map(|(m, v)| format!("{m}x{}", 16 * v)).collect();
        assert_eq!(GEMM_PANEL.values, compiled.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
