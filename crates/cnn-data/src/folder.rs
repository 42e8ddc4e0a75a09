//! Image folders (`root/<class>/*.png|jpg`), as torchvision's `ImageFolder`.

use std::path::{Path, PathBuf};

use cnn_augment::resize_from;
use cnn_tensor::{Error, Result};
use ndarray::Array3;

use crate::Dataset;

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The most bytes one image may decode to by default: 128 MiB, an 8K
/// (7680×4320) RGB photo with room to spare. A file whose header declares more
/// (a 261 KB PNG can declare 16384×16384 pixels) is refused with an error
/// naming it before its pixels are allocated; [`ImageFolder::with_max_decoded_bytes`]
/// and [`read_image_limited`] take another cap.
pub const MAX_DECODED_BYTES: u64 = 128 << 20;

/// The longest side an image may declare: 16384 pixels.
pub const MAX_SIDE: u32 = 16384;

/// Images under `root/<class>/`, classes sorted by name, decoded on access to
/// RGB `3×H×W` in [0, 1] and resized (bilinear) to a fixed size.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    files: Vec<(PathBuf, usize)>,
    classes: Vec<String>,
    size: [usize; 2],
    max_decoded_bytes: u64,
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
            .map_err(|e| Error::io("read", root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        class_dirs.sort();
        if class_dirs.is_empty() {
            return Err(Error::format(root.display(), "no class directories"));
        }
        let mut files = Vec::new();
        let mut classes = Vec::new();
        for (class, dir) in class_dirs.iter().enumerate() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io("read", dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(Error::format(dir.display(), "empty class directory"));
            }
            for f in entries {
                let ext = f.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                if !ext.as_deref().is_some_and(|e| EXTENSIONS.contains(&e)) {
                    return Err(Error::format(
                        f.display(),
                        "not an image file (expected .png, .jpg or .jpeg)",
                    ));
                }
                files.push((f, class));
            }
            classes.push(
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            );
        }
        Ok(ImageFolder { files, classes, size, max_decoded_bytes: MAX_DECODED_BYTES })
    }

    cnn_tensor::setters! {
        /// With another cap on the bytes one image may decode to (default [`MAX_DECODED_BYTES`]).
        with_max_decoded_bytes: max_decoded_bytes: u64;
    }

    /// The file behind sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(|(p, _)| p.as_path())
    }
}

/// Reads an image file (PNG, JPEG, …) as RGB `[3, H, W]` with values in [0, 1],
/// decoding at most [`MAX_DECODED_BYTES`].
///
/// # Errors
/// [`Error::Format`] naming the file when it cannot be read or decoded, or
/// declares more pixels than the cap.
pub fn read_image(path: &Path) -> Result<Array3<f32>> {
    Ok(to_array(&decode_rgb8(path, MAX_DECODED_BYTES)?))
}

/// 8-bit RGB as `[3, H, W]` in [0, 1].
fn to_array(img: &image::RgbImage) -> Array3<f32> {
    let (w, h) = img.dimensions();
    Array3::from_shape_fn((3, h as usize, w as usize), |(c, i, j)| {
        img.get_pixel(j as u32, i as u32)[c] as f32 / 255.0
    })
}

/// [`read_image`] resized (bilinear) to `size`, decoding at most
/// `max_decoded_bytes`: the pixels are resized from the decoder's bytes, with
/// no full-resolution float copy.
///
/// # Errors
/// As [`read_image`].
pub fn read_image_limited(
    path: &Path,
    size: [usize; 2],
    max_decoded_bytes: u64,
) -> Result<Array3<f32>> {
    let img = decode_rgb8(path, max_decoded_bytes)?;
    let (w, h) = img.dimensions();
    if [h as usize, w as usize] == size {
        return Ok(to_array(&img));
    }
    let pixel = |c: usize, i: usize, j: usize| img.get_pixel(j as u32, i as u32)[c] as f32 / 255.0;
    resize_from((3, h as usize, w as usize), size, pixel)
        .map_err(|e| Error::format(path.display(), e.to_string()))
}

/// Decodes `path` to 8-bit RGB under the `image` crate's limits: each side at
/// most [`MAX_SIDE`], at most `max_bytes` allocated by the decoder (checked
/// against the header before any pixel buffer is made).
///
/// The file is read whole first, so one that vanishes or is rewritten while a
/// run reads it gives one clear error (or the old bytes), never a decoder
/// reading a moving file; the decode then runs under
/// [`cnn_tensor::untrusted::contain_panic`], so a panic inside the decoder
/// becomes an error naming the file and its detected format.
fn decode_rgb8(path: &Path, max_bytes: u64) -> Result<image::RgbImage> {
    let bad = |msg: String| Error::format(path.display(), msg);
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let format = reader.format().map_or("image".to_string(), |f| format!("{f:?}").to_uppercase());
    cnn_tensor::untrusted::contain_panic(path.display(), &format!("the {format} decoder"), || {
        decode_limited(reader, max_bytes).map_err(bad)
    })
}

/// The decode itself, on bytes already in memory.
fn decode_limited(
    mut reader: image::ImageReader<std::io::Cursor<&[u8]>>,
    max_bytes: u64,
) -> std::result::Result<image::RgbImage, String> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(max_bytes);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => format!(
            "the image is larger than this reader decodes ({l}; at most {MAX_SIDE} pixels a side and {max_bytes} bytes decoded)"
        ),
        e => format!("cannot decode: {e}"),
    })?;
    // An 8-bit RGB image is taken as it is; others are converted (at most 3
    // bytes a pixel, so within 3× the decoded size).
    Ok(img.into_rgb8())
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
        Ok((read_image_limited(path, self.size, self.max_decoded_bytes)?, *class))
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn source(&self, index: usize) -> Option<String> {
        self.path(index).map(|p| p.display().to_string())
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
