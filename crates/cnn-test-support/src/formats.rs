//! Structure-aware mutations: inputs that stay well-formed containers and lie
//! inside them, so they get past the checks a byte flip dies at (a PNG
//! chunk's CRC, a gzip trailer's checksum, a JPEG's segment lengths, a
//! safetensors header's JSON) into the decoder's own paths.
//!
//! Each format is recognized by its magic bytes ([`Format::detect`]), so one
//! target can mix formats in its corpus (an image folder holds PNG and JPEG).
//!
//! - **JPEG**: the segments are parsed (SOI … SOF/DQT/DHT/DRI … SOS, entropy
//!   data, EOI) and one field is rewritten: SOF precision, size, component
//!   count, ids, sampling factors and quantization-table ids; the SOF kind
//!   (baseline, extended, progressive, lossless, arithmetic); DQT's
//!   precision/id byte and entries; DHT's class/id byte and code counts;
//!   SOS component selectors, table ids, spectral range and approximation
//!   bits; restart intervals (a DRI segment added or rewritten, RST markers
//!   put into the scan); segments dropped, duplicated or swapped; a scan
//!   repeated; bits flipped inside the entropy data only (byte stuffing kept).
//! - **PNG**: the chunks are parsed and every chunk written back with a valid
//!   CRC: IHDR's width, height, bit depth, colour type and interlace method;
//!   the image data inflated, its rows and filter bytes changed, deflated
//!   again and split over several IDAT chunks; PLTE and tRNS of lying sizes;
//!   chunks dropped, duplicated or put out of order.
//! - **gzip**: the member's content inflated, mutated (at the target's
//!   `fields`, offsets in the *content*: IDX dimensions, say) and deflated
//!   again with a valid trailer; extra members; header flags (FEXTRA, FNAME,
//!   FCOMMENT, FHCRC, reserved bits) with lying lengths; a trailer whose CRC
//!   or size lies.
//! - **safetensors**: the header parsed as JSON and written back as valid
//!   JSON (its length field updated) with a tensor's dtype, shape or data
//!   offsets lying, a tensor dropped or aliased, odd metadata, or the length
//!   field itself off by a little.

use std::io::{Read, Write};

use crate::fuzz::SplitMix;

/// A file format the structure-aware mutators know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Anything else: only byte-level mutations apply.
    Bytes,
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (its 8-byte signature).
    Png,
    /// gzip (`1F 8B`).
    Gzip,
    /// safetensors (an 8-byte header length, then a JSON object).
    Safetensors,
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

impl Format {
    /// The format of `data`, from its first bytes.
    pub fn detect(data: &[u8]) -> Format {
        if data.starts_with(&[0xff, 0xd8, 0xff]) {
            Format::Jpeg
        } else if data.starts_with(&PNG_SIGNATURE) {
            Format::Png
        } else if data.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if data.len() >= 10
            && u64::from_le_bytes(data[..8].try_into().unwrap_or_default())
                <= (data.len() - 8) as u64
            && data[8] == b'{'
        {
            Format::Safetensors
        } else {
            Format::Bytes
        }
    }
}

/// Whether `data` is a well-formed container of its format: a JPEG whose
/// segments parse from SOI to EOI with a frame and a scan, a PNG whose
/// chunks all have valid CRCs (IHDR first, IEND last), a gzip stream that
/// inflates with a valid trailer, a safetensors file whose header is a JSON
/// object within the file. Such an input reaches the decoder proper; the
/// fuzzer counts them. `Bytes` has no container: always `false`.
pub fn container_ok(data: &[u8]) -> bool {
    match Format::detect(data) {
        Format::Bytes => false,
        Format::Jpeg => jpeg_segments(data).is_some_and(|s| {
            s.iter().any(|g| is_sof(g.marker)) && s.iter().any(|g| g.marker == SOS)
        }),
        Format::Png => png_chunks(data).is_some_and(|c| {
            c.first().is_some_and(|f| &f.kind == b"IHDR" && f.data.len() == 13)
                && c.last().is_some_and(|l| &l.kind == b"IEND")
        }),
        Format::Gzip => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(data).take(64 << 20).read_to_end(&mut out).is_ok()
        }
        Format::Safetensors => {
            let n = u64::from_le_bytes(data[..8].try_into().unwrap_or_default()) as usize;
            serde_json::from_slice::<serde_json::Value>(&data[8..8 + n])
                .is_ok_and(|v| v.is_object())
        }
    }
}

/// Applies one structure-aware mutation to `data`, chosen by its format;
/// `fields` are offsets in a gzip member's content. Returns `false` (and
/// leaves `data` as it was) when the format is unknown or does not parse.
pub fn mutate(data: &mut Vec<u8>, fields: &[usize], rng: &mut SplitMix) -> bool {
    let out = match Format::detect(data) {
        Format::Bytes => None,
        Format::Jpeg => mutate_jpeg(data, rng),
        Format::Png => mutate_png(data, rng),
        Format::Gzip => mutate_gzip(data, fields, rng),
        Format::Safetensors => mutate_safetensors(data, rng),
    };
    match out {
        Some(new) => {
            *data = new;
            true
        }
        None => false,
    }
}

/// One of `values` (not empty).
fn pick<T: Copy>(rng: &mut SplitMix, values: &[T]) -> T {
    values[rng.below(values.len())]
}

/// One of `indices`, or `None` when there is none.
fn pick_index(rng: &mut SplitMix, indices: &[usize]) -> Option<usize> {
    (!indices.is_empty()).then(|| indices[rng.below(indices.len())])
}

// ---------------------------------------------------------------- JPEG --

const SOS: u8 = 0xda;
const DQT: u8 = 0xdb;
const DHT: u8 = 0xc4;
const DRI: u8 = 0xdd;
const EOI: u8 = 0xd9;
/// A pseudo-marker for a scan's entropy-coded bytes.
const SCAN_DATA: u8 = 0x00;

/// One piece of a JPEG: a marker segment (`bytes` from its `FF` through its
/// payload) or, with marker [`SCAN_DATA`], the entropy-coded bytes after an SOS.
#[derive(Debug, Clone)]
struct Segment {
    marker: u8,
    bytes: Vec<u8>,
}

fn is_sof(m: u8) -> bool {
    (0xc0..=0xcf).contains(&m) && ![DHT, 0xc8, 0xcc].contains(&m)
}

/// The segments after SOI, or `None` when the framing does not parse.
fn jpeg_segments(data: &[u8]) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    let mut i = 2;
    while i < data.len() {
        if data[i] != 0xff {
            return None;
        }
        let m = *data.get(i + 1)?;
        match m {
            EOI => {
                out.push(Segment { marker: EOI, bytes: vec![0xff, EOI] });
                return Some(out);
            }
            0xd0..=0xd7 | 0x01 => {
                out.push(Segment { marker: m, bytes: vec![0xff, m] });
                i += 2;
            }
            0xff => i += 1,
            _ => {
                let len = usize::from(u16::from_be_bytes([*data.get(i + 2)?, *data.get(i + 3)?]));
                if len < 2 {
                    return None;
                }
                let end = i + 2 + len;
                out.push(Segment { marker: m, bytes: data.get(i..end)?.to_vec() });
                i = end;
                if m == SOS {
                    // Entropy-coded data runs to the next marker other than a
                    // stuffed zero or a restart marker.
                    let mut j = i;
                    while j + 1 < data.len()
                        && !(data[j] == 0xff
                            && data[j + 1] != 0
                            && !(0xd0..=0xd7).contains(&data[j + 1]))
                    {
                        j += 1;
                    }
                    out.push(Segment { marker: SCAN_DATA, bytes: data[i..j].to_vec() });
                    i = j;
                }
            }
        }
    }
    None
}

fn join_jpeg(segments: &[Segment]) -> Vec<u8> {
    let mut out = vec![0xff, 0xd8];
    for s in segments {
        out.extend_from_slice(&s.bytes);
    }
    out
}

/// A marker segment with its length field.
fn segment(marker: u8, payload: &[u8]) -> Segment {
    let mut bytes = vec![0xff, marker];
    bytes.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    bytes.extend_from_slice(payload);
    Segment { marker, bytes }
}

const SAMPLING: [u8; 18] = [
    0x00, 0x01, 0x10, 0x11, 0x12, 0x21, 0x22, 0x13, 0x31, 0x14, 0x41, 0x24, 0x42, 0x44, 0x33, 0x23,
    0x32, 0xff,
];
const SIDE_LIES: [u16; 14] = [0, 1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 4096, 16385, 65535];

fn mutate_jpeg(data: &[u8], rng: &mut SplitMix) -> Option<Vec<u8>> {
    let mut segs = jpeg_segments(data)?;
    let find = |segs: &[Segment], pred: &dyn Fn(u8) -> bool| -> Vec<usize> {
        segs.iter().enumerate().filter(|(_, s)| pred(s.marker)).map(|(i, _)| i).collect()
    };
    let sofs = find(&segs, &is_sof);
    let choice = rng.below(12);
    match choice {
        // SOF fields.
        0..=2 if !sofs.is_empty() => {
            let s = &mut segs[pick_index(rng, &sofs)?].bytes;
            let comps = usize::from(*s.get(9)?);
            match rng.below(6) {
                0 => s[4] = pick(rng, &[0, 1, 2, 8, 12, 16, 255]),
                1 | 2 => {
                    let at = pick(rng, &[5, 7]);
                    let v = pick(rng, &SIDE_LIES);
                    s[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
                3 => s[9] = pick(rng, &[0, 1, 2, 3, 4, 5, 255]),
                _ if comps > 0 => {
                    let c = 10 + 3 * rng.below(comps);
                    let (field, values): (usize, &[u8]) = match rng.below(4) {
                        0 => (0, &[0, 1, 2, 3, 4, 0xff]),
                        1 | 2 => (1, &SAMPLING),
                        _ => (2, &[0, 1, 2, 3, 4, 255]),
                    };
                    *s.get_mut(c + field)? = pick(rng, values);
                }
                _ => return None,
            }
        }
        // The frame's kind: baseline, extended, progressive, lossless, arithmetic.
        3 if !sofs.is_empty() => {
            let s = &mut segs[pick_index(rng, &sofs)?];
            let m = pick(rng, &[0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc9, 0xca, 0xcb, 0xcd]);
            s.marker = m;
            s.bytes[1] = m;
        }
        // DQT: precision/id byte, or an entry set to 0 or 255.
        4 => {
            let dqts = find(&segs, &|m| m == DQT);
            let s = &mut segs[*dqts.first()?].bytes;
            if rng.below(2) == 0 {
                s[4] = pick(rng, &[0x00, 0x01, 0x02, 0x03, 0x04, 0x10, 0x13, 0xff]);
            } else if s.len() > 5 {
                let at = 5 + rng.below(s.len() - 5);
                s[at] = pick(rng, &[0, 1, 255]);
            }
        }
        // DHT: class/id byte, or a code count that lies.
        5 => {
            let dhts = find(&segs, &|m| m == DHT);
            if dhts.is_empty() {
                return None;
            }
            let s = &mut segs[pick(rng, &dhts)].bytes;
            if rng.below(3) == 0 {
                s[4] = pick(rng, &[0x00, 0x01, 0x10, 0x11, 0x02, 0x12, 0x20, 0x04, 0xff]);
            } else {
                let at = 5 + rng.below(16);
                let old = *s.get(at)?;
                s[at] = pick(rng, &[0, 1, 2, 255, old.wrapping_add(1), old.wrapping_sub(1)]);
            }
        }
        // SOS fields: count, selectors, table ids, spectral range, approximation.
        6 | 7 => {
            let scans = find(&segs, &|m| m == SOS);
            if scans.is_empty() {
                return None;
            }
            let s = &mut segs[pick(rng, &scans)].bytes;
            let ns = usize::from(*s.get(4)?);
            let tail = 5 + 2 * ns;
            match rng.below(5) {
                0 => s[4] = pick(rng, &[0, 1, 2, 3, 4, 255]),
                1 if ns > 0 => *s.get_mut(5 + 2 * rng.below(ns))? = pick(rng, &[0, 1, 2, 3, 9]),
                2 if ns > 0 => {
                    *s.get_mut(6 + 2 * rng.below(ns))? =
                        pick(rng, &[0x00, 0x11, 0x01, 0x10, 0x22, 0x44, 0xff])
                }
                3 => *s.get_mut(tail + rng.below(2))? = pick(rng, &[0, 1, 5, 63, 64, 255]),
                _ => *s.get_mut(tail + 2)? = pick(rng, &[0x00, 0x01, 0x10, 0x11, 0x0f, 0xff]),
            }
        }
        // Restart intervals: DRI added or rewritten; RST markers in the scan.
        8 => {
            let interval: u16 = pick(rng, &[0, 1, 2, 3, 7, 65535]);
            let dri = segment(DRI, &interval.to_be_bytes());
            match find(&segs, &|m| m == DRI).first() {
                Some(&i) => segs[i] = dri,
                None => {
                    let at = *find(&segs, &|m| m == SOS).first()?;
                    segs.insert(at, dri);
                }
            }
            if rng.below(2) == 0 {
                let d = *find(&segs, &|m| m == SCAN_DATA).first()?;
                let scan = &mut segs[d].bytes;
                for k in 0..1 + rng.below(4) {
                    let at = rng.below(scan.len() + 1);
                    scan.splice(at..at, [0xff, 0xd0 + (k as u8 & 7)]);
                }
            }
        }
        // Bits flipped in the entropy-coded data only (0xFF stuffed with a zero).
        9 => {
            let d = pick_index(rng, &find(&segs, &|m| m == SCAN_DATA))?;
            let scan = &mut segs[d].bytes;
            if scan.is_empty() {
                return None;
            }
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(scan.len());
                scan[at] ^= 1 << rng.below(8);
                if scan[at] == 0xff {
                    scan.insert(at + 1, 0);
                }
            }
        }
        // A segment dropped, duplicated or two swapped; a scan repeated; the scan cut short.
        _ => {
            let n = segs.len().saturating_sub(1); // EOI stays last
            if n == 0 {
                return None;
            }
            let i = rng.below(n);
            match rng.below(5) {
                0 => {
                    segs.remove(i);
                }
                1 => {
                    let s = segs[i].clone();
                    segs.insert(i, s);
                }
                2 => {
                    let j = rng.below(n);
                    segs.swap(i, j);
                }
                3 => {
                    let at = *find(&segs, &|m| m == SOS).first()?;
                    let scan: Vec<Segment> = segs[at..n.min(at + 2)].to_vec();
                    let end = n.min(at + 2);
                    segs.splice(end..end, scan);
                }
                _ => {
                    let d = pick_index(rng, &find(&segs, &|m| m == SCAN_DATA))?;
                    let len = segs[d].bytes.len();
                    segs[d].bytes.truncate(rng.below(len + 1));
                }
            }
        }
    }
    Some(join_jpeg(&segs))
}

// ----------------------------------------------------------------- PNG --

/// One PNG chunk: its type and data (the CRC is recomputed on writing).
#[derive(Debug, Clone)]
struct Chunk {
    kind: [u8; 4],
    data: Vec<u8>,
}

/// The chunks of a PNG whose every CRC is valid, or `None`.
fn png_chunks(data: &[u8]) -> Option<Vec<Chunk>> {
    let mut out = Vec::new();
    let mut i = 8;
    while i < data.len() {
        let len = u32::from_be_bytes(data.get(i..i + 4)?.try_into().ok()?) as usize;
        let kind: [u8; 4] = data.get(i + 4..i + 8)?.try_into().ok()?;
        let body = data.get(i + 8..i + 8 + len)?;
        let crc = u32::from_be_bytes(data.get(i + 8 + len..i + 12 + len)?.try_into().ok()?);
        if crc != chunk_crc(&kind, body) {
            return None;
        }
        out.push(Chunk { kind, data: body.to_vec() });
        i += 12 + len;
    }
    Some(out)
}

fn chunk_crc(kind: &[u8; 4], data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    crc.sum()
}

/// A PNG file from its chunks, every CRC valid.
pub fn write_png_chunks(chunks: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = PNG_SIGNATURE.to_vec();
    for (kind, data) in chunks {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&chunk_crc(kind, data).to_be_bytes());
    }
    out
}

/// zlib-compressed `raw`.
pub fn zlib(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(raw);
    e.finish().unwrap_or_default()
}

fn mutate_png(data: &[u8], rng: &mut SplitMix) -> Option<Vec<u8>> {
    let mut chunks = png_chunks(data)?;
    let ihdr = chunks.iter().position(|c| &c.kind == b"IHDR");
    match rng.below(8) {
        // IHDR: sizes, depth, colour type, compression, filter, interlace.
        0..=2 => {
            let h = &mut chunks[ihdr?].data;
            if h.len() != 13 {
                return None;
            }
            match rng.below(5) {
                0 | 1 => {
                    let at = pick(rng, &[0, 4]);
                    let old = u32::from_be_bytes(h[at..at + 4].try_into().ok()?);
                    let v = pick(
                        rng,
                        &[
                            0,
                            1,
                            2,
                            old + 1,
                            old.saturating_sub(1),
                            1 << 16,
                            16384,
                            16385,
                            i32::MAX as u32,
                            1 << 31,
                            u32::MAX,
                        ],
                    );
                    h[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
                2 => h[8] = pick(rng, &[0, 1, 2, 3, 4, 8, 16, 32]),
                3 => h[9] = pick(rng, &[0, 1, 2, 3, 4, 5, 6, 7]),
                _ => {
                    let at = pick(rng, &[10, 11, 12]);
                    h[at] = pick(rng, &[0, 1, 2, 255]);
                }
            }
        }
        // The image data: inflated, rows changed, deflated, split over IDATs.
        3 | 4 => {
            let idats: Vec<usize> =
                (0..chunks.len()).filter(|&i| &chunks[i].kind == b"IDAT").collect();
            let first = *idats.first()?;
            let z: Vec<u8> = idats.iter().flat_map(|&i| chunks[i].data.clone()).collect();
            let mut raw = Vec::new();
            flate2::read::ZlibDecoder::new(&z[..]).take(16 << 20).read_to_end(&mut raw).ok()?;
            match rng.below(4) {
                // A filter byte (or any byte) set to 0–4, 5 or 255.
                0 if !raw.is_empty() => {
                    let at = rng.below(raw.len());
                    raw[at] = pick(rng, &[0, 1, 2, 3, 4, 5, 255]);
                }
                1 => {
                    let len = raw.len();
                    raw.truncate(rng.below(len + 1));
                }
                2 => {
                    let extra = 1 + rng.below(64);
                    raw.extend((0..extra).map(|_| rng.next_u64() as u8));
                }
                _ if !raw.is_empty() => {
                    let at = rng.below(raw.len());
                    raw[at] ^= 1 << rng.below(8);
                }
                _ => {}
            }
            let z = zlib(&raw);
            let parts = 1 + rng.below(4);
            let step = z.len().div_ceil(parts).max(1);
            let new: Vec<Chunk> =
                z.chunks(step).map(|p| Chunk { kind: *b"IDAT", data: p.to_vec() }).collect();
            for &i in idats.iter().rev() {
                chunks.remove(i);
            }
            chunks.splice(first..first, new);
        }
        // PLTE or tRNS of a lying size, before the first IDAT.
        5 => {
            let at = chunks.iter().position(|c| &c.kind == b"IDAT").unwrap_or(chunks.len());
            let (kind, len) = if rng.below(2) == 0 {
                (*b"PLTE", pick(rng, &[0, 3, 6, 48, 767, 768, 769, 771]))
            } else {
                (*b"tRNS", pick(rng, &[0, 1, 2, 6, 255, 256, 257]))
            };
            let data = (0..len).map(|_| rng.next_u64() as u8).collect();
            match chunks.iter().position(|c| c.kind == kind) {
                Some(i) => chunks[i].data = data,
                None => chunks.insert(at, Chunk { kind, data }),
            }
        }
        // A chunk dropped, duplicated or moved; an unknown critical chunk.
        _ => {
            let n = chunks.len();
            let i = rng.below(n);
            match rng.below(4) {
                0 => {
                    chunks.remove(i);
                }
                1 => {
                    let c = chunks[i].clone();
                    chunks.insert(rng.below(n + 1), c);
                }
                2 => {
                    let j = rng.below(n);
                    chunks.swap(i, j);
                }
                _ => chunks.insert(i, Chunk { kind: *b"ABCD", data: vec![1, 2, 3] }),
            }
        }
    }
    let pairs: Vec<([u8; 4], Vec<u8>)> = chunks.into_iter().map(|c| (c.kind, c.data)).collect();
    Some(write_png_chunks(&pairs))
}

// ---------------------------------------------------------------- gzip --

/// `content` as one gzip member.
pub fn gzip(content: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(content);
    e.finish().unwrap_or_default()
}

fn mutate_gzip(data: &[u8], fields: &[usize], rng: &mut SplitMix) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    flate2::read::MultiGzDecoder::new(data).take(64 << 20).read_to_end(&mut content).ok()?;
    match rng.below(8) {
        // The content mutated at the target's fields (or anywhere), then a valid member.
        0..=3 => {
            let value = match rng.below(6) {
                0 => 0,
                1 => 1,
                2 => u64::from(u32::MAX),
                3 => content.len() as u64 + 1,
                4 => 1 << (8 + rng.below(24)),
                _ => rng.next_u64() >> rng.below(64),
            };
            let at = match fields {
                [] => rng.below(content.len().max(1)),
                f => pick(rng, f),
            };
            let bytes = (value as u32).to_be_bytes();
            for (k, b) in bytes.iter().enumerate() {
                if let Some(d) = content.get_mut(at + k) {
                    *d = *b;
                }
            }
            if rng.below(4) == 0 {
                let len = content.len();
                content.truncate(rng.below(len + 1));
            }
            Some(gzip(&content))
        }
        // Extra members: the content split in two, or a member appended.
        4 => {
            let cut = rng.below(content.len() + 1);
            let mut out = gzip(&content[..cut]);
            out.extend(gzip(&content[cut..]));
            if rng.below(2) == 0 {
                out.extend(gzip(&content[..rng.below(content.len() + 1)]));
            }
            Some(out)
        }
        // Header flags with lying lengths: FEXTRA, FNAME, FCOMMENT, FHCRC, reserved bits.
        5 | 6 => {
            let member = gzip(&content);
            let (head, rest) = member.split_at(10);
            let mut out = head.to_vec();
            let mut extra = Vec::new();
            match rng.below(5) {
                0 => {
                    out[3] |= 0x04;
                    let xlen: u16 = pick(rng, &[0, 1, 4, 200, 65535]);
                    extra.extend_from_slice(&xlen.to_le_bytes());
                    extra.extend((0..rng.below(8)).map(|_| rng.next_u64() as u8));
                }
                1 => {
                    out[3] |= pick(rng, &[0x08, 0x10]);
                    // A name or comment, with or without its terminating zero.
                    extra.extend_from_slice(b"digits.csv");
                    if rng.below(2) == 0 {
                        extra.push(0);
                    }
                }
                2 => {
                    out[3] |= 0x02;
                    extra.extend_from_slice(&[rng.next_u64() as u8, rng.next_u64() as u8]);
                }
                3 => out[3] |= pick(rng, &[0x20, 0x40, 0x80]),
                _ => out[2] = pick(rng, &[0, 7, 9, 255]),
            }
            out.extend(extra);
            out.extend_from_slice(rest);
            Some(out)
        }
        // A trailer that lies: CRC or size.
        _ => {
            let mut out = gzip(&content);
            let n = out.len();
            let at = if rng.below(2) == 0 { n - 8 } else { n - 4 };
            let v: u32 = pick(rng, &[0, 1, u32::MAX, content.len() as u32 + 1]);
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
            Some(out)
        }
    }
}

// --------------------------------------------------------- safetensors --

fn mutate_safetensors(data: &[u8], rng: &mut SplitMix) -> Option<Vec<u8>> {
    use serde_json::{json, Value};
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(data.get(8..8 + n)?).ok()?;
    let mut body = data[8 + n..].to_vec();
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let mut length_lie: i64 = 0;
    match rng.below(9) {
        0 | 1 if !names.is_empty() => {
            let t = header.get_mut(&names[rng.below(names.len())])?.as_object_mut()?;
            t.insert(
                "dtype".into(),
                json!(pick(
                    rng,
                    &[
                        "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
                        "F8_E4M3", "C64", "X"
                    ]
                )),
            );
        }
        2 | 3 if !names.is_empty() => {
            let t = header.get_mut(&names[rng.below(names.len())])?.as_object_mut()?;
            let old: Vec<Value> =
                t.get("shape").and_then(Value::as_array).cloned().unwrap_or_default();
            let shape = match rng.below(8) {
                0 => json!([]),
                1 => json!([0]),
                2 => json!([1u64 << 31, 1u64 << 31]),
                3 => json!([u64::MAX]),
                4 => json!([-1]),
                5 => json!([1.5]),
                6 => {
                    let mut s = old;
                    s.push(json!(1 + rng.below(3)));
                    Value::Array(s)
                }
                _ => {
                    let mut s = old;
                    s.pop();
                    Value::Array(s)
                }
            };
            t.insert("shape".into(), shape);
        }
        4 | 5 if !names.is_empty() => {
            let t = header.get_mut(&names[rng.below(names.len())])?.as_object_mut()?;
            let total = body.len() as u64;
            let [a, b] = t
                .get("data_offsets")
                .and_then(Value::as_array)
                .and_then(|o| Some([o.first()?.as_u64()?, o.get(1)?.as_u64()?]))?;
            let offsets = match rng.below(7) {
                0 => json!([b, a]),
                1 => json!([a, total + 1 + rng.below(16) as u64]),
                2 => json!([0, 0]),
                3 => json!([0, u64::MAX]),
                4 => json!([a]),
                5 => json!([a + 1, b + 1]),
                _ => json!("0,4"),
            };
            t.insert("data_offsets".into(), offsets);
        }
        // A tensor dropped, or aliased under another name.
        6 if !names.is_empty() => {
            let name = names[rng.below(names.len())].clone();
            if rng.below(2) == 0 {
                header.remove(&name);
            } else {
                let t = header.get(&name)?.clone();
                header.insert(format!("{name}.alias"), t);
            }
        }
        // Odd metadata, or a header that is not an object of tensors.
        7 => {
            let options =
                [json!({"format": 1}), json!([1, 2]), json!("pt"), json!({"a": {"b": "c"}})];
            let v = options[rng.below(options.len())].clone();
            if rng.below(3) == 0 {
                let name = names.first()?.clone();
                header.insert(name, v);
            } else {
                header.insert("__metadata__".into(), v);
            }
        }
        // The length field a little off (valid JSON inside), or the data cut short.
        _ => {
            if rng.below(2) == 0 {
                length_lie = pick(rng, &[-2, -1, 1, 2, 7]);
            } else {
                let len = body.len();
                body.truncate(rng.below(len + 1));
            }
        }
    }
    let text = serde_json::to_vec(&header).ok()?;
    let claimed = (text.len() as i64 + length_lie).max(0) as u64;
    let mut out = claimed.to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 0, 0, 0, 0]].concat();
        let raw: Vec<u8> =
            (0..h).flat_map(|_| std::iter::once(0).chain((0..w).map(|x| x as u8))).collect();
        write_png_chunks(&[(*b"IHDR", ihdr), (*b"IDAT", zlib(&raw)), (*b"IEND", Vec::new())])
    }

    #[test]
    fn png_mutations_keep_every_crc_valid() {
        let mut rng = SplitMix(7);
        let base = png(5, 3);
        assert!(container_ok(&base));
        let mut changed = 0;
        for _ in 0..500 {
            let mut d = base.clone();
            assert!(mutate(&mut d, &[], &mut rng));
            assert!(png_chunks(&d).is_some(), "a chunk CRC broke");
            changed += usize::from(d != base);
        }
        assert!(changed > 400, "{changed}");
    }

    #[test]
    fn gzip_mutations_reach_the_content_fields() {
        let mut rng = SplitMix(3);
        let content: Vec<u8> = (0..64).collect();
        let base = gzip(&content);
        let mut inner_changed = 0;
        for _ in 0..200 {
            let mut d = base.clone();
            assert!(mutate(&mut d, &[4, 8], &mut rng));
            let mut out = Vec::new();
            if flate2::read::MultiGzDecoder::new(&d[..]).read_to_end(&mut out).is_ok()
                && out.len() >= 12
                && out[4..12] != content[4..12]
            {
                inner_changed += 1;
            }
        }
        assert!(inner_changed > 30, "{inner_changed}");
    }

    #[test]
    fn safetensors_mutations_write_valid_json_headers() {
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut base = (header.len() as u64).to_le_bytes().to_vec();
        base.extend_from_slice(header);
        base.extend_from_slice(&[0; 8]);
        assert_eq!(Format::detect(&base), Format::Safetensors);
        let mut rng = SplitMix(11);
        let mut valid = 0;
        for _ in 0..300 {
            let mut d = base.clone();
            assert!(mutate(&mut d, &[], &mut rng));
            valid += usize::from(container_ok(&d));
        }
        // All but the length-field lies keep a parseable header.
        assert!(valid > 200, "{valid}");
    }

    #[test]
    fn a_jpeg_splits_into_segments_and_joins_back_unchanged() {
        let mut j = vec![0xff, 0xd8];
        j.extend(segment(DQT, &[0; 65]).bytes);
        j.extend(segment(0xc0, &[8, 0, 8, 0, 8, 1, 1, 0x11, 0]).bytes);
        j.extend(segment(SOS, &[1, 1, 0, 0, 63, 0]).bytes);
        j.extend([0x12, 0xff, 0x00, 0x34, 0xff, 0xd0, 0x56]);
        j.extend([0xff, EOI]);
        let segs = jpeg_segments(&j).unwrap();
        assert_eq!(join_jpeg(&segs), j);
        assert_eq!(
            segs.iter().map(|s| s.marker).collect::<Vec<_>>(),
            [DQT, 0xc0, SOS, SCAN_DATA, EOI]
        );
        assert!(container_ok(&j));
    }
}
