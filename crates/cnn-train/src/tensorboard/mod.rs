//! TensorBoard event files (`events.out.tfevents.*`), as PyTorch's
//! `SummaryWriter` writes them: TFRecord framing (a length, its masked
//! CRC-32C, the record, its masked CRC-32C) around `Event` messages.
//!
//! ```
//! use cnn_train::tensorboard::{read_events, EventWriter};
//!
//! let dir = tempfile::tempdir()?;
//! let mut w = EventWriter::create(dir.path())?;
//! w.add_scalar("train/loss", 0.5, 1)?;
//! w.flush()?;
//! let events = read_events(w.path())?;
//! assert_eq!(events.len(), 2); // the file version, then the scalar
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod proto;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use cnn_tensor::{Error, Result};
use prost::Message;

use proto::{Event, Image, Kind, SessionLog, Summary, Value, What, SESSION_START};

/// CRC-32C masked as TFRecord stores it (so that a CRC of data holding CRCs
/// does not degenerate).
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Writes one event file; a new file per writer (TensorBoard reads every
/// `events.out.tfevents.*` of a directory, in name order, as one stream).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing), named as TensorFlow
    /// does: `events.out.tfevents.{seconds}.{host}.{pid}.{n}`.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory or the file cannot be created.
    pub fn create(dir: &Path) -> Result<Self> {
        static WRITERS: AtomicUsize = AtomicUsize::new(0);
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && !h.contains(['/', '\\']))
            .unwrap_or_else(|| "localhost".into());
        let name = format!(
            "events.out.tfevents.{}.{host}.{}.{}",
            now() as u64,
            std::process::id(),
            WRITERS.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        let mut writer = EventWriter { path, out: BufWriter::new(file) };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(writer)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event (buffered: [`EventWriter::flush`] makes it visible).
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        // The four parts straight into the buffer: the frame, then the event.
        [&len[..], &masked_crc(&len).to_le_bytes(), &data, &masked_crc(&data).to_le_bytes()]
            .iter()
            .try_for_each(|part| self.out.write_all(part))
            .map_err(|e| Error::io("write", &self.path, e))
    }

    /// Writes `values` as one summary at `step`.
    ///
    /// # Errors
    /// As [`EventWriter::write`].
    pub fn add_summary(&mut self, step: u64, values: Vec<Value>) -> Result<()> {
        let summary = Summary { value: values };
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(summary)),
        })
    }

    /// One scalar under `tag` at `step`.
    ///
    /// # Errors
    /// As [`EventWriter::write`].
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: u64) -> Result<()> {
        self.add_summary(step, vec![scalar(tag, value)])
    }

    /// A PNG image under `tag` at `step`.
    ///
    /// # Errors
    /// [`Error::Format`] when `png` is not a PNG, else as [`EventWriter::write`].
    pub fn add_png(&mut self, tag: &str, png: Vec<u8>, step: u64) -> Result<()> {
        let (width, height, colorspace) =
            png_header(&png).ok_or_else(|| Error::format(tag, "the image is not a PNG file"))?;
        let image = Image { height, width, colorspace, encoded_image_string: png };
        let value = Value { tag: tag.into(), kind: Some(Kind::Image(image)) };
        self.add_summary(step, vec![value])
    }

    /// Marks a session start at `step`: TensorBoard then drops events of
    /// earlier files at steps ≥ `step` (a resumed run's checkpoint step:
    /// anything logged after the checkpoint, before the stop, is replaced).
    ///
    /// # Errors
    /// As [`EventWriter::write`].
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        let log = SessionLog { status: SESSION_START, ..Default::default() };
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::SessionLog(log)),
        })
    }

    /// Writes out what is buffered.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io("write", &self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// A scalar [`Value`].
pub fn scalar(tag: &str, value: f64) -> Value {
    Value { tag: tag.into(), kind: Some(Kind::SimpleValue(value as f32)) }
}

/// Width, height and TensorBoard colorspace from a PNG's IHDR chunk.
fn png_header(png: &[u8]) -> Option<(i32, i32, i32)> {
    if png.len() < 26 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| i32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    let colorspace = match png[25] {
        0 => 1,
        4 => 2,
        6 => 4,
        _ => 3,
    };
    Some((be(16), be(20), colorspace))
}

/// Reads every event of a file, checking each record's two CRCs.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Format`] naming the
/// record's offset for a truncated record, a bad CRC or an undecodable event.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let bad =
        |at: usize, msg: &str| Error::format(path.display(), format!("record at byte {at}: {msg}"));
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 12) else { return Err(bad(at, "truncated header")) };
        let (len, crc) = head.split_at(8);
        if masked_crc(len) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(bad(at, "the length's CRC does not match"));
        }
        let n = u64::from_le_bytes(len.try_into().map_err(|_| bad(at, "length"))?) as usize;
        let end = (at + 12)
            .checked_add(n)
            .filter(|&e| e.checked_add(4).is_some_and(|stop| stop <= bytes.len()));
        let Some(end) = end else { return Err(bad(at, "truncated record")) };
        let data = &bytes[at + 12..end];
        let crc = &bytes[end..end + 4];
        if masked_crc(data) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(bad(at, "the data's CRC does not match"));
        }
        events.push(Event::decode(data).map_err(|e| bad(at, &e.to_string()))?);
        at = end + 4;
    }
    Ok(events)
}

/// The event files of `dir`, in name order (TensorBoard's reading order).
///
/// # Errors
/// [`Error::Io`] when the directory cannot be listed.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A confusion matrix as a small PNG heatmap for TensorBoard: one 16-pixel
/// cell per (true, predicted) pair, darker for a larger share of the true
/// class's row (the labeled version is `cnn eval`'s `confusion.png`).
///
/// # Errors
/// [`Error::Format`] when the PNG cannot be encoded.
pub fn confusion_png(confusion: &[Vec<u64>]) -> Result<Vec<u8>> {
    const CELL: usize = 16;
    let c = confusion.len().max(1);
    let side = c * CELL;
    let mut rgb = vec![255u8; side * side * 3];
    for (i, row) in confusion.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (j, &count) in row.iter().enumerate().take(c) {
            let share = count as f64 / total;
            // White to a deep blue.
            let px = [
                (255.0 * (1.0 - 0.9 * share)) as u8,
                (255.0 * (1.0 - 0.75 * share)) as u8,
                (255.0 * (1.0 - 0.35 * share)) as u8,
            ];
            for y in i * CELL..(i + 1) * CELL {
                for x in j * CELL..(j + 1) * CELL {
                    rgb[(y * side + x) * 3..][..3].copy_from_slice(&px);
                }
            }
        }
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        side as u32,
        side as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::format("confusion image", e.to_string()))?;
    Ok(png)
}
