//! Image folders (`root/<class>/*.png|jpg`), as torchvision's `ImageFolder`.

use std::path::{Path, PathBuf};

use cnn_augment::resize;
use cnn_tensor::{Error, Result};
use ndarray::Array3;

use crate::Dataset;

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Images under `root/<class>/`, classes sorted by name, decoded on access to
/// RGB `3×H×W` in [0, 1] and resized (bilinear) to a fixed size.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    files: Vec<(PathBuf, usize)>,
    classes: Vec<String>,
    size: [usize; 2],
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { context: format!("read {}", path.display()), source: e }
}

impl ImageFolder {
    /// Lists `root`: one sub-directory per class, each holding `.png`, `.jpg`
    /// or `.jpeg` files (sorted by name, so the order is the same everywhere).
    ///
    /// # Errors
    /// [`Error::Io`] for a missing or unreadable directory; [`Error::Format`]
    /// naming the path for a file that is not an image, an empty class, or a
    /// root without classes; [`Error::Config`] for a zero size.
    pub fn new(root: &Path, size: [usize; 2]) -> Result<Self> {
        if size.contains(&0) {
            return Err(Error::config("image_folder", "size must be positive"));
        }
        let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(|e| io_err(root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        class_dirs.sort();
        if class_dirs.is_empty() {
            return Err(Error::Format {
                context: root.display().to_string(),
                msg: "no class directories".into(),
            });
        }
        let mut files = Vec::new();
        let mut classes = Vec::new();
        for (class, dir) in class_dirs.iter().enumerate() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| io_err(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(Error::Format {
                    context: dir.display().to_string(),
                    msg: "empty class directory".into(),
                });
            }
            for f in entries {
                let ext = f.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                if !ext.as_deref().is_some_and(|e| EXTENSIONS.contains(&e)) {
                    return Err(Error::Format {
                        context: f.display().to_string(),
                        msg: "not an image file (expected .png, .jpg or .jpeg)".into(),
                    });
                }
                files.push((f, class));
            }
            classes.push(
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            );
        }
        Ok(ImageFolder { files, classes, size })
    }

    /// The file behind sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(|(p, _)| p.as_path())
    }
}

/// Reads an image file (PNG, JPEG, …) as RGB `[3, H, W]` with values in [0, 1].
///
/// # Errors
/// [`Error::Format`] naming the file when it cannot be read or decoded.
pub fn read_image(path: &Path) -> Result<Array3<f32>> {
    let img = image::open(path)
        .map_err(|e| Error::Format {
            context: path.display().to_string(),
            msg: format!("cannot decode: {e}"),
        })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok(Array3::from_shape_fn((3, h as usize, w as usize), |(c, i, j)| {
        img.get_pixel(j as u32, i as u32)[c] as f32 / 255.0
    }))
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn get(&self, index: usize) -> Result<(Array3<f32>, usize)> {
        let (path, class) = self.files.get(index).ok_or_else(|| {
            Error::config(
                "image_folder",
                format!("index {index} out of range for {} samples", self.files.len()),
            )
        })?;
        let raw = read_image(path)?;
        let (_, h, w) = raw.dim();
        let out = if [h, w] == self.size { raw } else { resize(raw.view(), self.size)? };
        Ok((out, *class))
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.files.get(index).map(|f| f.1).ok_or_else(|| {
            Error::config(
                "image_folder",
                format!("index {index} out of range for {} samples", self.files.len()),
            )
        })
    }
}
