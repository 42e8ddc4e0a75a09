//! `--arch` names and the networks they build.

use cnn_models::{
    alexnet, cifar_resnet, convnext, resnet101, resnet152, resnet18, resnet34, resnet50, small_cnn,
    vgg, CifarResNetConfig, ConvNeXtConfig, Shortcuts, VggConfig,
};
use cnn_tensor::random::seeded_rng;
use cnn_tensor::{Error, Layer, Result};

/// The names `--arch` takes, for help texts and errors.
pub const ARCH_HELP: &str = "small (default: a conv-BN-ReLU net fit to the image size), \
resnet20|32|44|56|110 (CIFAR ResNets), plain20|32|44|56|110 (their twins without skips), \
resnet18|34|50|101|152, alexnet, vgg11|13|16|19 and vgg11_bn|… (torchvision's), \
convnext_atto|femto|pico|nano|tiny (timm's)";

/// A built network and what it needs of its input.
pub struct Built {
    /// The network.
    pub model: Box<dyn Layer<f32>>,
    /// Whether it wants three input channels (gray images are then repeated into RGB).
    pub rgb: bool,
}

fn unknown(arch: &str) -> Error {
    Error::config("arch", format!("unknown architecture {arch:?}; expected {ARCH_HELP}"))
}

/// Builds `arch` for images `[c, h, w]` and `classes` classes, initialized from `seed`.
///
/// # Errors
/// [`Error::Config`] for an unknown name or a depth the family does not have.
pub fn build(arch: &str, image: [usize; 3], classes: usize, seed: u64) -> Result<Built> {
    let rng = &mut seeded_rng(seed);
    let boxed = |m: cnn_nn::Sequential<f32>| -> Box<dyn Layer<f32>> { Box::new(m) };
    if arch == "small" {
        return Ok(Built {
            model: boxed(small_cnn(image[0], [image[1], image[2]], classes, rng)?),
            rgb: false,
        });
    }
    let model = if let Some(depth) = arch.strip_prefix("resnet") {
        let depth: usize = depth.parse().map_err(|_| unknown(arch))?;
        match depth {
            18 => resnet18(classes, rng)?,
            34 => resnet34(classes, rng)?,
            50 => resnet50(classes, rng)?,
            101 => resnet101(classes, rng)?,
            152 => resnet152(classes, rng)?,
            d => cifar_resnet(&CifarResNetConfig::new(d).with_num_classes(classes), rng)?,
        }
    } else if let Some(depth) = arch.strip_prefix("plain") {
        let depth = depth.parse().map_err(|_| unknown(arch))?;
        let plain = CifarResNetConfig::new(depth).with_shortcuts(Shortcuts::Plain);
        cifar_resnet(&plain.with_num_classes(classes), rng)?
    } else if let Some(rest) = arch.strip_prefix("vgg") {
        let (depth, bn) = rest.strip_suffix("_bn").map_or((rest, false), |d| (d, true));
        let depth = depth.parse().map_err(|_| unknown(arch))?;
        vgg(&VggConfig::new(depth).with_batch_norm(bn).with_num_classes(classes), rng)?
    } else if arch == "alexnet" {
        alexnet(classes, rng)?
    } else if let Some(variant) = arch.strip_prefix("convnext_") {
        let cfg = ConvNeXtConfig::named(variant).ok_or_else(|| unknown(arch))?;
        // A 4× stem and three 2× downsamplings: 32 pixels leave one.
        if image[1].min(image[2]) < 32 {
            return Err(Error::config(
                "arch",
                format!(
                    "{arch} needs images of at least 32×32 (a 4× stem and three 2× downsamplings), got {}×{}: use --image-size 32 or more",
                    image[1], image[2]
                ),
            ));
        }
        convnext(&cfg.with_num_classes(classes), rng)?
    } else {
        return Err(unknown(arch));
    };
    Ok(Built { model: boxed(model), rgb: true })
}

/// The input `[c, h, w]` `cnn summary` uses for `arch` when none is given.
pub fn default_input(arch: &str) -> [usize; 3] {
    let cifar = |d: &str| d.parse::<usize>().is_ok_and(|d| ![18, 34, 50, 101, 152].contains(&d));
    match arch {
        "small" => [1, 8, 8],
        a if a.strip_prefix("resnet").is_some_and(cifar) || a.starts_with("plain") => [3, 32, 32],
        _ => [3, 224, 224],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_builds_and_unknown_names_are_errors() {
        for arch in [
            "small",
            "resnet20",
            "plain20",
            "resnet18",
            "vgg11",
            "vgg11_bn",
            "alexnet",
            "convnext_atto",
        ] {
            let b = build(arch, [1, 32, 32], 10, 0).unwrap();
            assert_eq!(b.rgb, arch != "small", "{arch}");
        }
        for bad in ["resnet", "resnet21", "vgg12", "lenet", "vggx", "convnext_huge"] {
            assert!(build(bad, [1, 8, 8], 10, 0).is_err(), "{bad}");
        }
        let e = build("lenet", [1, 8, 8], 10, 0).err().unwrap().to_string();
        assert!(
            e.starts_with("arch: invalid setting: unknown architecture \"lenet\"; expected small"),
            "{e}"
        );
        assert_eq!(default_input("resnet56"), [3, 32, 32]);
        assert_eq!(default_input("resnet50"), [3, 224, 224]);
        let e = build("convnext_atto", [1, 8, 8], 10, 0).err().unwrap().to_string();
        assert!(e.contains("needs images of at least 32×32"), "{e}");
    }
}
