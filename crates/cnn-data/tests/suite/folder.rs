//! Image folders written here and read back; bad folders; the preview grid.

#![allow(clippy::unwrap_used)]

use cnn_augment::{Compose, RandomHorizontalFlip};
use cnn_data::{first_of_each_class, preview_grid, Dataset, Digits, ImageFolder, TensorDataset};
use cnn_tensor::Error;

fn dir(name: &str) -> tempfile::TempDir {
    cnn_test_support::temp_dir(&format!("folder-{name}"))
}

fn write_png(path: &std::path::Path, w: u32, h: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

#[test]
fn folders_read_back_with_sorted_classes() {
    let root_guard = dir("ok");
    let root = root_guard.path().to_path_buf();
    for (class, color) in [("zebra", [10, 20, 30]), ("ant", [200, 100, 0])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        write_png(&root.join(class).join("b.png"), 4, 4, color);
        write_png(&root.join(class).join("a.png"), 6, 2, color);
    }
    let ds = ImageFolder::new(&root, [4, 4]).unwrap();
    assert_eq!(ds.classes(), ["ant", "zebra"]);
    assert_eq!(ds.len(), 4);
    let (img, class) = ds.get(1).unwrap(); // ant/b.png, already 4x4
    assert_eq!((img.dim(), class), ((3, 4, 4), 0));
    assert_eq!(img[[0, 0, 0]], 200.0 / 255.0);
    let (img, class) = ds.get(2).unwrap(); // zebra/a.png, resized from 2x6
    assert_eq!((img.dim(), class), ((3, 4, 4), 1));
    assert!((img[[2, 3, 3]] - 30.0 / 255.0).abs() < 1e-6);
}

#[test]
fn bad_folders_are_errors_naming_the_path() {
    let root_guard = dir("bad");
    let root = root_guard.path().to_path_buf();
    std::fs::create_dir_all(root.join("cat")).unwrap();
    write_png(&root.join("cat").join("x.png"), 2, 2, [0, 0, 0]);
    std::fs::write(root.join("cat").join("notes.txt"), "hello").unwrap();
    let e = ImageFolder::new(&root, [2, 2]).unwrap_err().to_string();
    assert!(e.contains("notes.txt") && e.contains("not an image file"), "{e}");
    std::fs::remove_file(root.join("cat").join("notes.txt")).unwrap();
    std::fs::create_dir_all(root.join("dog")).unwrap();
    let e = ImageFolder::new(&root, [2, 2]).unwrap_err().to_string();
    assert!(e.contains("dog") && e.contains("empty class"), "{e}");
    std::fs::write(root.join("dog").join("broken.png"), b"not a png").unwrap();
    let ds = ImageFolder::new(&root, [2, 2]).unwrap();
    assert!(matches!(ds.get(1), Err(Error::Format { .. })));
    assert!(matches!(ImageFolder::new(&root.join("missing"), [2, 2]), Err(Error::Io { .. })));
}

#[test]
fn preview_grid_writes_a_png() {
    let d = Digits::load().unwrap();
    let samples: Vec<_> = (0..3).map(|i| d.get(i).unwrap().0).collect();
    let path_guard = dir("preview");
    let path = path_guard.path().join("grid.png");
    let pipeline = Compose::new().then(RandomHorizontalFlip::new(0.5).unwrap());
    preview_grid(&samples, &pipeline, 4, 1, 4, &path).unwrap();
    let img = image::open(&path).unwrap();
    assert_eq!((img.width(), img.height()), (5 * (8 * 4 + 2), 3 * (8 * 4 + 2)));
}

#[test]
fn previews_take_the_first_sample_of_each_class_in_turn() {
    // One-pixel samples whose value is their index; labels out of order.
    let labels = vec![1, 1, 0, 2, 0, 1, 2, 0];
    let classes = vec!["a".into(), "b".into(), "c".into()];
    let values: Vec<f32> = (0..labels.len()).map(|i| i as f32).collect();
    let data = TensorDataset::new([1, 1, 1], values, labels, classes).unwrap();
    let index = |picked: Vec<ndarray::Array3<f32>>| -> Vec<usize> {
        picked.iter().map(|a| a[[0, 0, 0]] as usize).collect()
    };
    let all = first_of_each_class(&data, 5, |i| Ok(Some(data.get(i)?.0))).unwrap();
    // Classes 0, 1, 2, then 0 and 1 again, each at its next sample.
    assert_eq!(index(all), [2, 5, 6, 7]);
    // An unreadable pick moves on to the next sample of its class.
    let skip = first_of_each_class(&data, 3, |i| Ok((i != 2).then(|| data.get(i).unwrap().0)));
    assert_eq!(index(skip.unwrap()), [4, 5, 6]);
}
