//! Every parser of cnn-data run through the mutation fuzzer of
//! `cnn-test-support`: IDX images and labels (plain and gzipped), CIFAR
//! binaries, the digits CSV and image folders (JPEG and PNG from several
//! encoders). Each input must load or be refused with an error naming its
//! file, without a panic and within the stated allocation bound; some inputs
//! must still load and, for the container formats, get past the container's
//! checks into the decoder. Byte-level and structure-aware mutations run
//! half and half. A fixed count runs in the regular suite; the long runs are
//! `--ignored` (`CNN_FUZZ_MINUTES`, `CNN_FUZZ_EXECUTIONS`), their counts in
//! docs/reliability.md.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::Path;

use cnn_data::{Cifar, Dataset, Digits, IdxDataset, ImageFolder};
use cnn_test_support::fuzz::{self, Budget, CountingAlloc, Mutators, Report, Target};
use cnn_test_support::images::{image_corpus, panicking_jpeg};

mod common;
use common::{gz, idx_images, idx_labels};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Executions of each target in the regular suite.
const CI_COUNT: u64 = 5000;

const MIB: usize = 1 << 20;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// Runs `target` and checks that the run could have found something: some
/// mutated inputs still load (a harness that refused everything would not),
/// some are refused, and for container formats (`containers`) some got past
/// the container's checks into the decoder.
fn go(
    target: &Target<'_>,
    budget: Budget,
    containers: bool,
    parse: impl FnMut(&[u8]) -> Result<(), String>,
) -> Report {
    // As the `cnn` binary does: a contained decoder panic is not printed
    // (printing it would capture and symbolize a backtrace, megabytes that
    // are no part of the parser's allocation).
    cnn_tensor::untrusted::quiet_contained_panics();
    let report = fuzz::run_one(target, 0xf0221, budget, parse);
    for class in report.error_classes.keys().filter(|c| c.contains("panicked")) {
        eprintln!("  contained: {class}");
    }
    assert!(report.loaded > 0, "{}: no mutated input loaded: {report}", target.name);
    assert!(report.rejected > 0, "{}: no mutated input refused: {report}", target.name);
    if containers {
        assert!(
            report.past_container > 0,
            "{}: nothing reached the decoder: {report}",
            target.name
        );
    }
    report
}

/// IDX image files, the labels beside them valid; header fields at 4, 8, 12.
fn idx_images_target(budget: Budget) {
    let dir = cnn_test_support::temp_dir("fuzz-idx");
    let (images, labels) = (dir.path().join("images-idx3-ubyte"), dir.path().join("labels"));
    write(&labels, &idx_labels(&[1, 2, 3]));
    let target = Target {
        name: "idx images",
        corpus: vec![idx_images(3, 4, 5), idx_images(3, 2, 2), idx_images(3, 1, 7)],
        fields: vec![4, 8, 12],
        max_alloc: MIB,
        must_name: "images-idx3-ubyte".into(),
        mutators: Mutators::Both,
    };
    go(&target, budget, false, |b| {
        write(&images, b);
        IdxDataset::from_files(&images, &labels).map(drop).map_err(|e| e.to_string())
    });
}

fn idx_labels_target(budget: Budget) {
    let dir = cnn_test_support::temp_dir("fuzz-idx-labels");
    let (images, labels) = (dir.path().join("images"), dir.path().join("labels-idx1-ubyte"));
    write(&images, &idx_images(4, 2, 2));
    let target = Target {
        name: "idx labels",
        corpus: vec![idx_labels(&[0, 9, 3, 4]), idx_labels(&[1, 1, 1, 1])],
        fields: vec![4],
        max_alloc: MIB,
        must_name: "labels-idx1-ubyte".into(),
        mutators: Mutators::Both,
    };
    go(&target, budget, false, |b| {
        write(&labels, b);
        IdxDataset::from_files(&images, &labels).map(drop).map_err(|e| e.to_string())
    });
}

/// Gzipped IDX images: byte mutations of the compressed stream test the
/// gzip layer (and its 1 GiB cap on what it inflates to); the structure-aware
/// ones inflate, rewrite the IDX dimensions (content offsets 4, 8, 12) and
/// compress again, or lie in the gzip header, members and trailer.
fn idx_gz_target(budget: Budget, mutators: Mutators) -> Report {
    let dir = cnn_test_support::temp_dir("fuzz-idx-gz");
    let (images, labels) = (dir.path().join("train-images"), dir.path().join("labels"));
    let images_gz = dir.path().join("train-images.gz");
    write(&labels, &idx_labels(&[1, 2]));
    let target = Target {
        name: "idx gz",
        corpus: vec![gz(&idx_images(2, 6, 6)), gz(&idx_images(2, 3, 1))],
        // IDX's count, rows and columns, in the decompressed content.
        fields: vec![4, 8, 12],
        // Inflating is bounded by deflate's ratio (≤ 1032:1) on these few-hundred-byte inputs.
        max_alloc: 4 * MIB,
        must_name: "train-images".into(),
        mutators,
    };
    go(&target, budget, true, |b| {
        write(&images_gz, b);
        IdxDataset::from_files(&images, &labels).map(drop).map_err(|e| e.to_string())
    })
}

fn cifar_records(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for (r, &l) in labels.iter().enumerate() {
        b.push(l);
        b.extend((0..3072).map(|i| ((i + r * 13) % 256) as u8));
    }
    b
}

/// CIFAR-10 binaries: `data_batch_1.bin` mutated, the other five valid.
fn cifar_target(budget: Budget) {
    let dir = cnn_test_support::temp_dir("fuzz-cifar");
    for i in 2..=5 {
        write(&dir.path().join(format!("data_batch_{i}.bin")), &cifar_records(&[1]));
    }
    write(&dir.path().join("test_batch.bin"), &cifar_records(&[9]));
    let first = dir.path().join("data_batch_1.bin");
    let target = Target {
        name: "cifar",
        corpus: vec![cifar_records(&[0, 5]), cifar_records(&[9])],
        fields: vec![0, 3073],
        max_alloc: 4 * MIB,
        must_name: "data_batch_1.bin".into(),
        mutators: Mutators::Both,
    };
    go(&target, budget, false, |b| {
        write(&first, b);
        Cifar::cifar10(dir.path()).map(drop).map_err(|e| e.to_string())
    });
}

/// The digits CSV: the text is mutated, then gzipped, so the mutations reach
/// the CSV parser rather than dying in gzip's checksum.
fn digits_target(budget: Budget) {
    let line = |label: usize| {
        let px: Vec<String> = (0..64).map(|i| ((i * 5 + label) % 17).to_string()).collect();
        format!("{},{label}\n", px.join(","))
    };
    let target = Target {
        name: "digits csv",
        corpus: vec![(0..3).map(line).collect::<String>().into_bytes(), line(7).into_bytes()],
        fields: Vec::new(),
        max_alloc: MIB,
        must_name: "fuzz-digits.csv.gz".into(),
        mutators: Mutators::Both,
    };
    go(&target, budget, false, |b| {
        Digits::parse_gz(&gz(b), "fuzz-digits.csv.gz").map(drop).map_err(|e| e.to_string())
    });
}

/// Image folders: one file per input, read through `ImageFolder::get` with a
/// 1 MiB decode cap, from a corpus of JPEGs and PNGs of several encoders
/// (`corpus`: all of them, or one format's). A decoder panic is contained
/// and counted; it must come back as an error naming the file.
fn image_folder_target(budget: Budget, mutators: Mutators, corpus: Vec<Vec<u8>>) -> Report {
    let dir = cnn_test_support::temp_dir("fuzz-folder");
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let file = dir.path().join("a").join("sample.png");
    write(&file, &corpus[0]);
    let folder = ImageFolder::new(dir.path(), [8, 8]).unwrap().with_max_decoded_bytes(MIB as u64);
    let target = Target {
        name: "image folder",
        corpus,
        // The structure-aware mutators rewrite IHDR and SOF fields with valid CRCs and lengths.
        fields: Vec::new(),
        // The decoder's cap, ×3 for gray → RGB, and the decoder's own state.
        max_alloc: 3 * MIB + 4 * MIB,
        must_name: "sample.png".into(),
        mutators,
    };
    go(&target, budget, true, |b| {
        write(&file, b);
        folder.get(0).map(drop).map_err(|e| e.to_string())
    })
}

fn jpegs() -> Vec<Vec<u8>> {
    image_corpus().into_iter().filter(|f| f.starts_with(&[0xff, 0xd8])).collect()
}

fn pngs() -> Vec<Vec<u8>> {
    image_corpus().into_iter().filter(|f| f.starts_with(b"\x89PNG")).collect()
}

#[test]
fn fuzz_idx_images() {
    idx_images_target(Budget::count(CI_COUNT));
}
#[test]
fn fuzz_idx_labels() {
    idx_labels_target(Budget::count(CI_COUNT));
}
#[test]
fn fuzz_idx_gz() {
    idx_gz_target(Budget::count(CI_COUNT), Mutators::Both);
}
#[test]
fn fuzz_cifar() {
    cifar_target(Budget::count(CI_COUNT / 2));
}
#[test]
fn fuzz_digits_csv() {
    digits_target(Budget::count(CI_COUNT));
}
#[test]
fn fuzz_image_folder() {
    image_folder_target(Budget::count(CI_COUNT), Mutators::Both, image_corpus());
}

/// The structure awareness measured: with the same seed and count, each
/// structure-aware family (JPEG, PNG, gzip) makes the parser answer with
/// error classes the byte mutators never reached.
#[test]
fn structure_mutators_reach_errors_the_byte_mutators_do_not() {
    const N: u64 = 2000;
    type Run = Box<dyn Fn(Mutators) -> Report>;
    let families: [(&str, Run); 3] = [
        ("jpeg", Box::new(|m| image_folder_target(Budget::count(N), m, jpegs()))),
        ("png", Box::new(|m| image_folder_target(Budget::count(N), m, pngs()))),
        ("gzip", Box::new(|m| idx_gz_target(Budget::count(N), m))),
    ];
    for (family, run) in families {
        fuzz::assert_structure_reaches_further(
            family,
            &run(Mutators::Bytes),
            &run(Mutators::Structure),
        );
    }
}

/// The JPEG of issue 22 (a decoder panic inside zune-jpeg) is an error naming
/// the file, and the folder's other images still read.
#[test]
fn a_jpeg_that_panics_the_decoder_is_an_error_naming_it() {
    let _alone = fuzz::exclusive();
    let dir = cnn_test_support::temp_dir("panicking-jpeg");
    std::fs::create_dir(dir.path().join("a")).unwrap();
    write(&dir.path().join("a").join("bad.jpg"), &panicking_jpeg());
    write(&dir.path().join("a").join("good.jpg"), &image_corpus()[0]);
    let folder = ImageFolder::new(dir.path(), [8, 8]).unwrap();
    let e = folder.get(0).unwrap_err().to_string();
    assert!(e.contains("bad.jpg") && e.contains("the JPEG decoder failed on this file"), "{e}");
    assert!(e.contains("it panicked"), "{e}");
    assert!(folder.get(1).is_ok());
}

// The long runs, one test a target: `cargo test --release -p cnn-data --test
// fuzz -- --ignored --test-threads 1` runs them all (one at a time: the
// allocation counter is global), `… -- --ignored long_image_folder` one.

#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-data --test fuzz -- --ignored"]
fn long_idx_images() {
    idx_images_target(Budget::long());
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-data --test fuzz -- --ignored"]
fn long_idx_labels() {
    idx_labels_target(Budget::long());
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-data --test fuzz -- --ignored"]
fn long_idx_gz() {
    idx_gz_target(Budget::long(), Mutators::Both);
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-data --test fuzz -- --ignored"]
fn long_cifar() {
    cifar_target(Budget::long());
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-data --test fuzz -- --ignored"]
fn long_digits_csv() {
    digits_target(Budget::long());
}
#[test]
#[ignore = "long fuzzing run: cargo test --release -p cnn-data --test fuzz -- --ignored"]
fn long_image_folder() {
    image_folder_target(Budget::long(), Mutators::Both, image_corpus());
}

/// The case the issue found: a small PNG whose header declares 16384×16384
/// pixels is refused quickly, naming the file, without decoding it.
#[test]
fn a_png_declaring_huge_dimensions_is_refused() {
    let _alone = fuzz::exclusive();
    let dir = cnn_test_support::temp_dir("huge-png");
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let file = dir.path().join("a").join("huge.png");
    // A real 16384×16384 gray PNG of zeros compresses to ~260 KB; built row by row.
    let mut out = Vec::new();
    {
        let mut e = png_encoder(&mut out, 16384, 16384);
        // A 16384-byte row of zeros at a time: the file stays small.
        let row = vec![0u8; 16384];
        let mut w = e.stream_writer().unwrap();
        for _ in 0..16384 {
            w.write_all(&row).unwrap();
        }
        w.finish().unwrap();
    }
    write(&file, &out);
    let folder = ImageFolder::new(dir.path(), [8, 8]).unwrap();
    let start = std::time::Instant::now();
    let e = folder.get(0).unwrap_err().to_string();
    assert!(e.contains("huge.png") && e.contains("larger than this reader decodes"), "{e}");
    assert!(start.elapsed().as_secs_f64() < 1.0, "took {:?}", start.elapsed());
}

fn png_encoder(out: &mut Vec<u8>, w: u32, h: u32) -> png::Writer<&mut Vec<u8>> {
    let mut e = png::Encoder::new(out, w, h);
    e.set_color(png::ColorType::Grayscale);
    e.set_depth(png::BitDepth::Eight);
    e.write_header().unwrap()
}
