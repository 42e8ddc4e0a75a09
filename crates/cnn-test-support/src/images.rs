//! Image files for the fuzz corpora and the bad-image tests, made here rather
//! than kept as binaries: JPEGs from two encoders (the `image` crate's
//! baseline, and `jpeg-encoder`'s progressive, subsampled, restart-marked
//! and CMYK files), PNGs of every colour type and depth the `png` crate
//! writes plus an Adam7-interlaced one built by hand, and the JPEG that
//! makes zune-jpeg 0.5.15 panic.

use crate::formats::{write_png_chunks, zlib};

/// A noisy RGB image (non-zero AC coefficients everywhere, as photos have).
pub fn noise_rgb(w: u32, h: u32) -> Vec<u8> {
    (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503))
                    .wrapping_mul(2_246_822_519)
                    >> 24;
                [n as u8, (n * 3) as u8, (x * 9 + y) as u8]
            })
        })
        .collect()
}

/// A baseline JPEG from the `image` crate (4:4:4), RGB or gray.
pub fn jpeg_baseline(w: u32, h: u32, gray: bool) -> Vec<u8> {
    let rgb = image::RgbImage::from_raw(w, h, noise_rgb(w, h)).unwrap_or_default();
    let img = image::DynamicImage::from(rgb);
    let img = if gray { image::DynamicImage::from(img.to_luma8()) } else { img };
    let mut out = std::io::Cursor::new(Vec::new());
    let _ = img.write_to(&mut out, image::ImageFormat::Jpeg);
    out.into_inner()
}

/// How `jpeg-encoder` writes a JPEG.
#[derive(Debug, Clone, Copy)]
pub struct JpegOptions {
    /// Progressive (spectral selection and successive approximation scans).
    pub progressive: bool,
    /// Chroma subsampling: `(h, v)` of luma relative to chroma: (1, 1), (2, 1), (2, 2).
    pub sampling: (u8, u8),
    /// Restart interval in MCUs (0: none).
    pub restart: u16,
    /// CMYK instead of RGB (Adobe APP14, four components).
    pub cmyk: bool,
}

/// A JPEG from `jpeg-encoder` (quality 85) of a noisy image.
pub fn jpeg_encoded(w: u16, h: u16, o: JpegOptions) -> Vec<u8> {
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    let rgb = noise_rgb(u32::from(w), u32::from(h));
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, 85);
    e.set_progressive(o.progressive);
    e.set_sampling_factor(match o.sampling {
        (2, 2) => SamplingFactor::F_2_2,
        (2, 1) => SamplingFactor::F_2_1,
        _ => SamplingFactor::F_1_1,
    });
    if o.restart > 0 {
        e.set_restart_interval(o.restart);
    }
    let result = if o.cmyk {
        let cmyk: Vec<u8> =
            rgb.chunks(3).flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], p[0] / 2]).collect();
        e.encode(&cmyk, w, h, ColorType::Cmyk)
    } else {
        e.encode(&rgb, w, h, ColorType::Rgb)
    };
    result.map(|()| out).unwrap_or_default()
}

/// The JPEG of issue 22, made here: a progressive 24×24 4:4:4 file whose
/// frame header is rewritten to baseline (SOF2 → SOF0) and whose second
/// component's sampling factors read 4×4. zune-jpeg 0.5.15 (the `image`
/// crate's JPEG decoder) panics on it in its AVX2 IDCT
/// (`called Option::unwrap() on a None value`); found by the
/// structure-aware fuzzer, which rewrites both fields.
pub fn panicking_jpeg() -> Vec<u8> {
    let opts = JpegOptions { progressive: true, sampling: (1, 1), restart: 0, cmyk: false };
    let mut j = jpeg_encoded(24, 24, opts);
    if let Some(sof) = (0..j.len().saturating_sub(1)).find(|&i| j[i] == 0xff && j[i + 1] == 0xc2) {
        j[sof + 1] = 0xc0;
        // FF C0, length (2), precision, height (2), width (2), count, then
        // (id, sampling, table) per component: the second's sampling byte.
        j[sof + 14] = 0x44;
    }
    j
}

/// A PNG from the `png` crate: `color` and `depth` as named there, with a
/// palette (and tRNS) for indexed colour.
pub fn png_encoded(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
    let samples = color.samples();
    let bits = samples * depth as usize;
    let row = (w as usize * bits).div_ceil(8);
    let data: Vec<u8> = (0..row * h as usize).map(|i| (i * 37 % 251) as u8).collect();
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(color);
        e.set_depth(depth);
        if color == png::ColorType::Indexed {
            e.set_palette((0..768).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>());
            e.set_trns(vec![0u8, 128, 255]);
        }
        let Ok(mut w) = e.write_header() else { return out };
        let _ = w.write_image_data(&data);
    }
    out
}

/// An Adam7-interlaced 8-bit RGB PNG, built chunk by chunk (the `png` crate
/// does not write interlaced files).
pub fn png_interlaced(w: u32, h: u32) -> Vec<u8> {
    const PASSES: [(u32, u32, u32, u32); 7] = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ];
    let mut raw = Vec::new();
    for (x0, y0, dx, dy) in PASSES {
        let cols = if w > x0 { (w - x0).div_ceil(dx) } else { 0 };
        let rows = if h > y0 { (h - y0).div_ceil(dy) } else { 0 };
        if cols == 0 {
            continue;
        }
        for r in 0..rows {
            raw.push(0); // filter: none
            raw.extend((0..cols * 3).map(|c| ((r * 31 + c * 7) % 256) as u8));
        }
    }
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 1]].concat();
    write_png_chunks(&[(*b"IHDR", ihdr), (*b"IDAT", zlib(&raw)), (*b"IEND", Vec::new())])
}

/// A seed corpus of real-looking images: baseline JPEG (RGB, gray),
/// progressive, 4:2:0, 4:2:2 with restart markers and CMYK JPEGs; 8-bit RGB,
/// gray, gray+alpha, RGBA, 16-bit, 1-bit and palette (with tRNS) PNGs, and
/// an interlaced one. All small (a few KB at most).
pub fn image_corpus() -> Vec<Vec<u8>> {
    use png::{BitDepth, ColorType};
    let jpeg =
        |progressive, sampling, restart, cmyk| JpegOptions { progressive, sampling, restart, cmyk };
    vec![
        jpeg_baseline(16, 8, false),
        jpeg_baseline(12, 10, true),
        jpeg_encoded(24, 24, jpeg(true, (1, 1), 0, false)),
        jpeg_encoded(33, 17, jpeg(true, (2, 2), 0, false)),
        jpeg_encoded(40, 24, jpeg(false, (2, 2), 0, false)),
        jpeg_encoded(48, 16, jpeg(false, (2, 1), 2, false)),
        jpeg_encoded(16, 16, jpeg(false, (1, 1), 0, true)),
        png_encoded(12, 10, ColorType::Rgb, BitDepth::Eight),
        png_encoded(7, 9, ColorType::Grayscale, BitDepth::Eight),
        png_encoded(6, 5, ColorType::GrayscaleAlpha, BitDepth::Eight),
        png_encoded(5, 6, ColorType::Rgba, BitDepth::Eight),
        png_encoded(6, 4, ColorType::Rgb, BitDepth::Sixteen),
        png_encoded(9, 3, ColorType::Grayscale, BitDepth::One),
        png_encoded(8, 8, ColorType::Indexed, BitDepth::Eight),
        png_interlaced(11, 9),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_corpus_image_decodes() {
        for (i, bytes) in image_corpus().iter().enumerate() {
            let img = image::load_from_memory(bytes);
            assert!(img.is_ok(), "corpus image {i}: {:?}", img.err());
        }
    }

    #[test]
    fn the_issue_jpeg_still_panics_the_decoder() {
        // When a zune-jpeg release fixes this path, this test says so: the
        // guard in cnn-data stays either way.
        let bytes = panicking_jpeg();
        let r = std::panic::catch_unwind(|| image::load_from_memory(&bytes).map(drop));
        assert!(r.is_err(), "the decoder no longer panics on it: {:?}", r.ok());
    }
}
