//! IDX and CIFAR readers on fixtures written here, and bad files that must be
//! errors, never panics (including random and truncated bytes).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use cnn_data::{Cifar, Dataset, IdxDataset};

use crate::common;
use cnn_tensor::Error;
use common::{gz, idx_images, idx_labels};
use proptest::prelude::*;

fn dir(name: &str) -> tempfile::TempDir {
    cnn_test_support::temp_dir(&format!("data-{name}"))
}

#[test]
fn idx_reads_back_exactly_plain_and_gzipped() {
    let d_guard = dir("idx");
    let d = d_guard.path().to_path_buf();
    std::fs::write(d.join("train-images-idx3-ubyte"), idx_images(3, 4, 5)).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), idx_labels(&[1, 9, 0])).unwrap();
    std::fs::write(d.join("t10k-images-idx3-ubyte.gz"), gz(&idx_images(2, 4, 5))).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte.gz"), gz(&idx_labels(&[4, 2]))).unwrap();
    let (train, test) = IdxDataset::load_dir(&d).unwrap();
    assert_eq!((train.len(), test.len()), (3, 2));
    let (img, label) = train.get(1).unwrap();
    assert_eq!((img.dim(), label), ((1, 4, 5), 9));
    assert_eq!(img[[0, 0, 0]], 140.0 / 255.0); // image 1 starts at pixel 20: 20·7
    assert_eq!(test.get(1).unwrap().1, 2);
}

#[test]
fn bad_idx_files_are_errors_naming_the_file() {
    let d_guard = dir("idx-bad");
    let d = d_guard.path().to_path_buf();
    let (img, lab) = (d.join("i"), d.join("l"));
    let check = |ibytes: &[u8], lbytes: &[u8], needle: &str| {
        std::fs::write(&img, ibytes).unwrap();
        std::fs::write(&lab, lbytes).unwrap();
        let e = IdxDataset::from_files(&img, &lab).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
        assert!(e.contains(d.to_str().unwrap()), "the message names the file: {e}");
    };
    let good = idx_images(2, 3, 3);
    check(&good[..good.len() - 1], &idx_labels(&[1, 2]), "need 18 bytes");
    check(
        &[0, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &idx_labels(&[1, 2]),
        "not an IDX image file",
    );
    check(&good, &idx_labels(&[1, 2, 3]), "3 labels for 2 images");
    check(&good, &idx_labels(&[1, 12]), "label 12 at 1 is outside 0-9");
    check(&good, &[0, 0, 8], "too short");
    assert!(matches!(IdxDataset::load_dir(Path::new("/nonexistent/cnn")), Err(Error::Io { .. })));
}

fn cifar_records(labels: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for (r, ls) in labels.iter().enumerate() {
        b.extend_from_slice(ls);
        b.extend((0..3072).map(|i| ((i + r * 13) % 256) as u8));
    }
    b
}

#[test]
fn cifar_reads_back_exactly() {
    let d_guard = dir("cifar10");
    let d = d_guard.path().to_path_buf();
    for i in 1..=5 {
        std::fs::write(d.join(format!("data_batch_{i}.bin")), cifar_records(&[&[i as u8], &[0]]))
            .unwrap();
    }
    std::fs::write(d.join("test_batch.bin"), cifar_records(&[&[9]])).unwrap();
    std::fs::write(
        d.join("batches.meta.txt"),
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    )
    .unwrap();
    let (train, test) = Cifar::cifar10(&d).unwrap();
    assert_eq!((train.len(), test.len()), (10, 1));
    assert_eq!(train.classes()[9], "truck");
    let (img, label) = train.get(2).unwrap();
    assert_eq!((img.dim(), label), ((3, 32, 32), 2));
    assert_eq!(img[[1, 0, 0]], 0.0); // record 0 of data_batch_2: (1024 + 0) % 256
    let (img, label) = train.get(3).unwrap(); // record 1 of data_batch_2
    assert_eq!((img[[1, 0, 0]], label), (((1024 + 13) % 256) as f32 / 255.0, 0));

    let d_guard = dir("cifar100");
    let d = d_guard.path().to_path_buf();
    std::fs::write(d.join("train.bin"), cifar_records(&[&[3, 42], &[19, 99]])).unwrap();
    std::fs::write(d.join("test.bin"), cifar_records(&[&[0, 0]])).unwrap();
    let (train, _) = Cifar::cifar100(&d).unwrap();
    assert_eq!(train.get(1).unwrap().1, 99);
    assert_eq!(train.coarse_label(0), Some(3));
    std::fs::write(d.join("train.bin"), cifar_records(&[&[20, 1]])).unwrap();
    let e = Cifar::cifar100(&d).unwrap_err().to_string();
    assert!(e.contains("label 20 outside 0-19") && e.contains("train.bin"), "{e}");
    std::fs::write(d.join("train.bin"), &cifar_records(&[&[1, 1]])[..3000]).unwrap();
    assert!(Cifar::cifar100(&d).unwrap_err().to_string().contains("not a whole number"));
}

proptest! {
    #![proptest_config(cnn_test_support::proptest_config(64))]

    #[test]
    fn random_bytes_never_panic(images in proptest::collection::vec(any::<u8>(), 0..300), labels in proptest::collection::vec(any::<u8>(), 0..40), cut in 0usize..64) {
        let d_guard = dir(&format!("fuzz-{cut}"));
        let d = d_guard.path();
        let (img, lab) = (d.join("i"), d.join("l"));
        // Random bytes, and a valid file truncated at a random point.
        std::fs::write(&img, &images).unwrap();
        std::fs::write(&lab, &labels).unwrap();
        let _ = IdxDataset::from_files(&img, &lab);
        let good = idx_images(2, 3, 3);
        std::fs::write(&img, &good[..cut.min(good.len())]).unwrap();
        std::fs::write(&lab, idx_labels(&[1, 2])).unwrap();
        prop_assert!(cut >= good.len() || IdxDataset::from_files(&img, &lab).is_err());
        std::fs::write(d.join("train.bin"), &images).unwrap();
        std::fs::write(d.join("test.bin"), &images).unwrap();
        let _ = Cifar::cifar100(d);
        let _ = cnn_data::Digits::parse_gz(&images, "random");
        // An image folder whose one file holds random bytes: listing works, decoding is an Err.
        let class = d.join("folder").join("c");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join("x.png"), &images).unwrap();
        let folder = cnn_data::ImageFolder::new(&d.join("folder"), [4, 4]).unwrap();
        let _ = folder.get(0);
    }
}
