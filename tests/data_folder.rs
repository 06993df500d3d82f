//! Image folders: class folders and flat folders, colour conversion, and bad input (a
//! corrupt JPEG, a truncated PNG, a zero-byte PNG, a text file) skipped and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use sop::data::{Dataset, EvalConfig, Loader, LoaderConfig, Split, Views};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sop-test-folder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn save(img: DynamicImage, path: &Path, format: ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, format).unwrap();
}

fn rgb(w: u32, h: u32, seed: u8) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| Rgb([seed.wrapping_add(x as u8 * 9), (y * 11) as u8, 200])))
}

/// Runs one eval epoch over the whole dataset, batch 1: (indices seen, skipped).
fn one_epoch(ds: Arc<Dataset>) -> (Vec<usize>, usize) {
    let cfg = LoaderConfig { batch_size: 1, drop_last: false, shuffle: false, threads: 2, ..LoaderConfig::default() };
    let views = Views::Eval(EvalConfig { size: 8, crop_fraction: 1.0, ..EvalConfig::default() });
    let mut loader = Loader::new(ds, views, cfg).unwrap();
    let mut seen = Vec::new();
    for b in loader.epoch(0) {
        seen.extend(b.unwrap().indices);
    }
    (seen, loader.summary().unwrap().skipped)
}

#[test]
fn bad_files_are_skipped_counted_and_named() {
    let d = temp_dir("bad");
    save(rgb(20, 16, 0), &d.join("a_good.png"), ImageFormat::Png);
    save(rgb(30, 24, 50), &d.join("b_good.jpg"), ImageFormat::Jpeg);
    save(rgb(17, 17, 90), &d.join("c_good.webp"), ImageFormat::WebP);
    save(rgb(9, 12, 130), &d.join("d_good.bmp"), ImageFormat::Bmp);
    // A JPEG whose header is right and whose body is garbage.
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0];
    jpeg.extend((0..400u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(d.join("e_corrupt.jpg"), jpeg).unwrap();
    std::fs::write(d.join("f_empty.png"), b"").unwrap();
    std::fs::write(d.join("g_notes.txt"), b"these are not the images you are looking for\n").unwrap();
    std::fs::write(d.join(".hidden.png"), b"ignored: hidden").unwrap();

    // A JPEG with an EXIF-like APP1 segment holding its own complete thumbnail, and bytes
    // after the end-of-image marker: complete, so it must load.
    let body = std::fs::read(d.join("b_good.jpg")).unwrap();
    let thumb = [0xFF, 0xD8, 0xFF, 0xD9];
    let mut with_app1 = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, (2 + thumb.len()) as u8];
    with_app1.extend_from_slice(&thumb);
    with_app1.extend_from_slice(&body[2..]);
    with_app1.extend_from_slice(b"trailing data after EOI");
    std::fs::write(d.join("b_good_exif.jpg"), with_app1).unwrap();

    let ds = Arc::new(Dataset::open(&d, Split::Train).unwrap());
    assert_eq!(ds.len(), 8, "hidden files must not be listed");
    assert!(ds.labels().is_none(), "a flat folder is unlabeled");
    // Each bad file fails with an error naming it.
    for (i, name) in [(5, "e_corrupt.jpg"), (6, "f_empty.png"), (7, "g_notes.txt")] {
        let err = ds.get(i).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
    let (seen, skipped) = one_epoch(ds.clone());
    assert_eq!(seen, vec![0, 1, 2, 3, 4], "the good images, in order");
    assert_eq!(skipped, 3);
    assert_eq!(ds.bad_count(), 3);
    // A second epoch skips them again (counted per epoch) without decoding them anew.
    let (seen, skipped) = one_epoch(ds.clone());
    assert_eq!((seen.len(), skipped), (5, 3));
}

#[test]
fn truncated_png_and_jpeg_are_skipped() {
    let d = temp_dir("truncated");
    save(rgb(40, 40, 3), &d.join("whole.png"), ImageFormat::Png);
    let bytes = std::fs::read(d.join("whole.png")).unwrap();
    std::fs::write(d.join("zz_truncated.png"), &bytes[..bytes.len() / 2]).unwrap();
    save(rgb(64, 64, 3), &d.join("j.jpg"), ImageFormat::Jpeg);
    let bytes = std::fs::read(d.join("j.jpg")).unwrap();
    std::fs::remove_file(d.join("j.jpg")).unwrap();
    std::fs::write(d.join("zz_truncated.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    let ds = Arc::new(Dataset::open(&d, Split::Train).unwrap());
    let err = ds.get(1).unwrap_err().to_string();
    assert!(err.contains("zz_truncated.jpg") && err.contains("truncated"), "{err}");
    let (seen, skipped) = one_epoch(ds);
    assert_eq!((seen, skipped), (vec![0], 2));
}

#[test]
fn empty_and_undecodable_folders_are_errors() {
    let d = temp_dir("empty");
    let err = Dataset::open(&d, Split::Train).err().expect("an empty folder opened").to_string();
    assert!(err.contains("empty"), "{err}");
    std::fs::write(d.join("readme.txt"), b"no images here").unwrap();
    std::fs::write(d.join("zero.png"), b"").unwrap();
    let err = Dataset::open(&d, Split::Train).err().expect("a folder of bad files opened").to_string();
    assert!(err.contains("none of the 2 files is a decodable image"), "{err}");
    assert!(Dataset::open(d.join("missing"), Split::Train).is_err());
}

#[test]
fn grayscale_and_rgba_become_rgb() {
    let d = temp_dir("colour");
    save(DynamicImage::ImageLuma8(GrayImage::from_pixel(5, 4, Luma([77]))), &d.join("a_gray.png"), ImageFormat::Png);
    save(
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(3, 6, Rgba([10, 20, 30, 0]))),
        &d.join("b_rgba.png"),
        ImageFormat::Png,
    );
    let gray16 = image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_pixel(2, 2, Luma([0xFFFF]));
    save(DynamicImage::ImageLuma16(gray16), &d.join("c_gray16.png"), ImageFormat::Png);
    let ds = Dataset::open(&d, Split::Train).unwrap();
    let g = ds.get(0).unwrap();
    assert_eq!(g.dimensions(), (5, 4));
    assert!(g.pixels().all(|p| p.0 == [77, 77, 77]));
    let a = ds.get(1).unwrap();
    assert_eq!(a.dimensions(), (3, 6));
    assert!(a.pixels().all(|p| p.0 == [10, 20, 30]), "alpha is dropped, colour kept");
    assert!(ds.get(2).unwrap().pixels().all(|p| p.0 == [255, 255, 255]));
}

#[test]
fn class_folders_give_sorted_labels() {
    let d = temp_dir("classes");
    save(rgb(8, 8, 1), &d.join("zebra/1.png"), ImageFormat::Png);
    save(rgb(8, 8, 2), &d.join("cat/b.png"), ImageFormat::Png);
    save(rgb(8, 8, 3), &d.join("cat/a.png"), ImageFormat::Png);
    save(rgb(8, 8, 4), &d.join("dog/deeper/x.png"), ImageFormat::Png);
    std::fs::write(d.join("README.txt"), b"beside the class folders: ignored").unwrap();
    let ds = Dataset::open(&d, Split::Train).unwrap();
    assert_eq!(ds.class_names(), &["cat", "dog", "zebra"]);
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.labels().unwrap(), &[0, 0, 1, 2]);
    assert!(ds.name(0).ends_with("cat/a.png") && ds.name(2).ends_with("dog/deeper/x.png"));
    assert_eq!(ds.get(0).unwrap().get_pixel(0, 0).0[0], 3);
}

#[test]
fn train_and_val_folders_are_splits() {
    let d = temp_dir("splits");
    for (split, n) in [("train", 3), ("val", 2)] {
        for c in ["ant", "bee"] {
            for i in 0..n {
                save(rgb(6, 6, i), &d.join(format!("{split}/{c}/{i}.png")), ImageFormat::Png);
            }
        }
    }
    let train = Dataset::open(&d, Split::Train).unwrap();
    let val = Dataset::open(&d, Split::Test).unwrap();
    assert_eq!((train.len(), val.len()), (6, 4));
    assert_eq!(train.class_names(), &["ant", "bee"]);
    assert_eq!(val.labels().unwrap(), &[0, 0, 1, 1]);
}

#[test]
fn symlinks_are_followed_once_and_never_relabel() {
    let d = temp_dir("links");
    for (c, n) in [("cat", 2), ("dog", 3)] {
        for i in 0..n {
            save(rgb(6, 6, i), &d.join(format!("{c}/{i}.png")), ImageFormat::Png);
        }
    }
    // A link to a sibling class, two links to the root (cycles), a second name for an image,
    // and a link to an image elsewhere (listed once, under its link's class).
    std::os::unix::fs::symlink("../dog", d.join("cat/to-dog")).unwrap();
    std::os::unix::fs::symlink("..", d.join("cat/up")).unwrap();
    std::os::unix::fs::symlink("../..", d.join("dog/up2")).unwrap();
    std::os::unix::fs::symlink("0.png", d.join("dog/same.png")).unwrap();
    let outside = temp_dir("links-outside");
    save(rgb(6, 6, 9), &outside.join("x.png"), ImageFormat::Png);
    std::os::unix::fs::symlink(outside.join("x.png"), d.join("cat/x.png")).unwrap();
    let ds = Dataset::open(&d, Split::Train).unwrap();
    assert_eq!(ds.class_names(), &["cat", "dog"]);
    assert_eq!(ds.labels().unwrap(), &[0, 0, 0, 1, 1, 1]);
    assert!(ds.name(2).ends_with("cat/x.png"), "{}", ds.name(2));
    // A flat folder that links to itself.
    let flat = temp_dir("links-flat");
    save(rgb(6, 6, 1), &flat.join("a.png"), ImageFormat::Png);
    std::os::unix::fs::symlink(".", flat.join("self")).unwrap();
    assert_eq!(Dataset::open(&flat, Split::Train).unwrap().len(), 1);
}
