//! `--data` specs and the train / validation / test splits they give.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cnn_data::{
    stratified_split, BadSamples, Cifar, Dataset, Digits, IdxDataset, ImageFolder, Resized,
};
use cnn_tensor::{Error, Result};

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// The embedded UCI digits (1797 8×8 images), split 80/20 stratified with seed 0.
    Digits,
    /// MNIST-format IDX files in a directory (train-… and t10k-…, plain or .gz).
    Mnist(PathBuf),
    /// CIFAR-10 binary batches in a directory.
    Cifar10(PathBuf),
    /// CIFAR-100 binaries in a directory.
    Cifar100(PathBuf),
    /// An image folder: one sub-directory per class.
    Folder(PathBuf),
}

impl FromStr for DataSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, path) = s.split_once(':').map_or((s, None), |(k, d)| (k, Some(d)));
        let dir = |name: &str| -> std::result::Result<PathBuf, String> {
            match path {
                Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
                _ => Err(format!("{name} needs a directory: --data {name}:DIR")),
            }
        };
        match kind {
            "digits" if path.is_none() => Ok(DataSpec::Digits),
            "mnist" => Ok(DataSpec::Mnist(dir("mnist")?)),
            "cifar10" => Ok(DataSpec::Cifar10(dir("cifar10")?)),
            "cifar100" => Ok(DataSpec::Cifar100(dir("cifar100")?)),
            "folder" => Ok(DataSpec::Folder(dir("folder")?)),
            _ => Err(format!(
                "unknown data set {s:?}: expected digits, mnist:DIR, cifar10:DIR, cifar100:DIR or folder:DIR"
            )),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Digits => write!(f, "digits"),
            DataSpec::Mnist(d) => write!(f, "mnist:{}", d.display()),
            DataSpec::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
            DataSpec::Cifar100(d) => write!(f, "cifar100:{}", d.display()),
            DataSpec::Folder(d) => write!(f, "folder:{}", d.display()),
        }
    }
}

/// How the splits are made, besides the data set itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitOptions {
    /// Folder data: the held-out fraction (validation and test) unless a
    /// validation directory is given; other data: a validation split carved
    /// from training (0: validate on the test split).
    pub val_fraction: f64,
    /// Folder data: a directory of validation images, laid out as the training one.
    pub val_dir: Option<PathBuf>,
    /// Folder data: images are resized to this square size.
    pub image_size: usize,
    /// Other data: images are resized to this square size when given.
    pub resize: Option<usize>,
    /// Seed of the stratified splits.
    pub split_seed: u64,
}

/// The datasets of a run.
pub struct Splits {
    /// What the model trains on.
    pub train: Arc<dyn Dataset>,
    /// What it is validated on after each epoch.
    pub val: Arc<dyn Dataset>,
    /// What the final line reports.
    pub test: Arc<dyn Dataset>,
    /// Where `val` came from, for the user.
    pub val_source: &'static str,
}

impl Splits {
    /// Class names of the training set.
    pub fn classes(&self) -> Vec<String> {
        self.train.classes().to_vec()
    }

    /// `[channels, height, width]` of the training images: the first one's,
    /// or under [`BadSamples::Skip`] the first readable one's (those before
    /// it are logged as skipped).
    ///
    /// # Errors
    /// Whatever reading the first image fails with (under `Fail`), or
    /// [`Error::Format`] when no image can be read.
    pub fn image_shape(&self, policy: &BadSamples) -> Result<[usize; 3]> {
        for i in 0..self.train.len() {
            if let Some((img, _)) = policy.read(&*self.train, i, 0)? {
                let (c, h, w) = img.dim();
                return Ok([c, h, w]);
            }
        }
        Err(Error::config("data", "no training image could be read"))
    }
}

fn check_fraction(f: f64) -> Result<()> {
    if !(0.0..1.0).contains(&f) {
        return Err(Error::config("data", format!("--val-fraction must be in [0, 1), got {f}")));
    }
    Ok(())
}

fn require_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(Error::io(
        "open",
        dir,
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
    ))
}

/// Loads `spec` and makes its splits.
///
/// # Errors
/// [`Error::Io`] naming a missing directory or file, [`Error::Format`] naming
/// a corrupt or truncated file, [`Error::Config`] for a bad fraction or an empty split.
pub fn load(spec: &DataSpec, opts: &SplitOptions) -> Result<Splits> {
    check_fraction(opts.val_fraction)?;
    let (train, test): (Arc<dyn Dataset>, Arc<dyn Dataset>) = match spec {
        DataSpec::Digits => {
            let (train, test) = Digits::load()?.split(0.2, 0)?;
            (Arc::new(train), Arc::new(test))
        }
        DataSpec::Mnist(dir) => {
            let (train, test) = IdxDataset::load_dir(dir)?;
            (Arc::new(train), Arc::new(test))
        }
        DataSpec::Cifar10(dir) => {
            require_dir(dir)?;
            let (train, test) = Cifar::cifar10(dir)?;
            (Arc::new(train), Arc::new(test))
        }
        DataSpec::Cifar100(dir) => {
            require_dir(dir)?;
            let (train, test) = Cifar::cifar100(dir)?;
            (Arc::new(train), Arc::new(test))
        }
        DataSpec::Folder(dir) => {
            let size = [opts.image_size, opts.image_size];
            let all: Arc<dyn Dataset> = Arc::new(ImageFolder::new(dir, size)?);
            if let Some(val_dir) = &opts.val_dir {
                let val: Arc<dyn Dataset> = Arc::new(ImageFolder::new(val_dir, size)?);
                if val.classes() != all.classes() {
                    return Err(Error::format(
                        val_dir.display(),
                        format!(
                            "classes {:?}, the training folder has {:?}",
                            val.classes(),
                            all.classes()
                        ),
                    ));
                }
                return finish(all, val.clone(), val, "the validation directory");
            }
            let fraction = if opts.val_fraction > 0.0 { opts.val_fraction } else { 0.2 };
            let (train, held) = stratified_split(all, fraction, opts.split_seed)?;
            let held: Arc<dyn Dataset> = Arc::new(held);
            return finish(Arc::new(train), held.clone(), held, "the held-out split of the folder");
        }
    };
    let (train, test) = match opts.resize {
        Some(size) => {
            let r =
                |d| -> Result<Arc<dyn Dataset>> { Ok(Arc::new(Resized::new(d, [size, size])?)) };
            (r(train)?, r(test)?)
        }
        None => (train, test),
    };
    if opts.val_fraction > 0.0 {
        let (rest, val) = stratified_split(train, opts.val_fraction, opts.split_seed)?;
        return finish(Arc::new(rest), Arc::new(val), test, "a split of the training set");
    }
    finish(train, test.clone(), test, "the test split")
}

fn finish(
    train: Arc<dyn Dataset>,
    val: Arc<dyn Dataset>,
    test: Arc<dyn Dataset>,
    val_source: &'static str,
) -> Result<Splits> {
    for (name, d) in [("training", &train), ("validation", &val), ("test", &test)] {
        if d.is_empty() {
            return Err(Error::config("data", format!("the {name} split is empty")));
        }
    }
    Ok(Splits { train, val, test, val_source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["digits", "mnist:/data/mnist", "cifar10:c10", "cifar100:c100", "folder:imgs"] {
            assert_eq!(s.parse::<DataSpec>().unwrap().to_string(), s);
        }
        assert_eq!(
            "mnist:".parse::<DataSpec>().unwrap_err(),
            "mnist needs a directory: --data mnist:DIR"
        );
        assert!("imagenet".parse::<DataSpec>().unwrap_err().starts_with("unknown data set"));
    }
}
