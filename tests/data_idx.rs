//! IDX files (MNIST family) against hand-made bytes: header parsing, gzip, pairing of
//! images with labels, split choice, class names, and the errors for broken files.

use std::io::Write;
use std::path::{Path, PathBuf};

use sop::data::idx::{parse_idx, read_idx, write_idx, IdxArray};
use sop::data::{Dataset, Split};

/// A fresh empty directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sop-test-idx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Three 2 x 2 images by hand: magic 0x00000803, dims 3, 2, 2 (big-endian), pixels.
fn images_bytes() -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2];
    b.extend_from_slice(&[0, 1, 2, 3, 10, 20, 30, 40, 255, 254, 253, 252]);
    b
}

/// Their labels: magic 0x00000801, dim 3, labels 2, 0, 1.
fn labels_bytes() -> Vec<u8> {
    vec![0, 0, 8, 1, 0, 0, 0, 3, 2, 0, 1]
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn parses_hand_made_headers_and_data() {
    let a = parse_idx(&images_bytes()).unwrap();
    assert_eq!(a.dims, vec![3, 2, 2]);
    assert_eq!(a.data, vec![0, 1, 2, 3, 10, 20, 30, 40, 255, 254, 253, 252]);
    let l = parse_idx(&labels_bytes()).unwrap();
    assert_eq!(l, IdxArray { dims: vec![3], data: vec![2, 0, 1] });
    // A large dimension is big-endian: 0x00000102 = 258.
    let big = [&[0u8, 0, 8, 1, 0, 0, 1, 2][..], &[7u8; 258][..]].concat();
    assert_eq!(parse_idx(&big).unwrap().dims, vec![258]);
}

#[test]
fn broken_files_are_errors_that_say_why() {
    let good = images_bytes();
    let cases: [(&[u8], &str); 5] = [
        (&good[..good.len() - 1], "truncated"),
        (&[good.as_slice(), &[9]].concat(), "after"),
        (&[1, 0, 8, 3], "magic"),
        (&[0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0], "not supported"),
        (&[0, 0], "shorter than the header"),
    ];
    for (bytes, want) in cases {
        let err = parse_idx(bytes).unwrap_err();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    let d = temp_dir("broken");
    let p = d.join("train-images-idx3-ubyte");
    write(&p, &good[..good.len() - 3]);
    let err = read_idx(&p).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("truncated"), "{err}");
    // Labels that do not match the number of images.
    write(&p, &good);
    write(&d.join("train-labels-idx1-ubyte"), &[0, 0, 8, 1, 0, 0, 0, 2, 0, 1]);
    assert!(Dataset::open(&d, Split::Train).is_err());
}

#[test]
fn reads_plain_and_gzipped_pairs_as_rgb_with_labels() {
    for gz in [false, true] {
        let d = temp_dir(if gz { "gz" } else { "plain" });
        let (img, lab) = if gz {
            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
        } else {
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        };
        let enc = |b: Vec<u8>| if gz { gzip(&b) } else { b };
        write(&d.join(img), &enc(images_bytes()));
        write(&d.join(lab), &enc(labels_bytes()));
        let ds = Dataset::open(&d, Split::Train).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.labels().unwrap(), &[2, 0, 1]);
        assert_eq!(ds.class_names(), &["0", "1", "2"]);
        let im = ds.get(1).unwrap();
        assert_eq!(im.dimensions(), (2, 2));
        // Row-major: pixel (x 1, y 0) is the second byte of image 1.
        assert_eq!(im.get_pixel(1, 0).0, [20, 20, 20]);
        assert_eq!(im.get_pixel(0, 1).0, [30, 30, 30]);
        assert_eq!(ds.get(2).unwrap().get_pixel(1, 1).0, [252, 252, 252]);
        // Opening the images file itself finds the same labels.
        let direct = Dataset::open(d.join(img), Split::Test).unwrap();
        assert_eq!(direct.labels().unwrap(), &[2, 0, 1]);
    }
}

#[test]
fn picks_the_split_and_names_classes() {
    let d = temp_dir("split");
    write(&d.join("train-images-idx3-ubyte"), &images_bytes());
    write(&d.join("train-labels-idx1-ubyte"), &labels_bytes());
    // One test image (1 x 2 x 2) with label 1.
    write(&d.join("t10k-images-idx3-ubyte.gz"), &gzip(&[0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 5, 6, 7, 8]));
    write(&d.join("t10k-labels-idx1-ubyte.gz"), &gzip(&[0, 0, 8, 1, 0, 0, 0, 1, 1]));
    write(&d.join("classes.txt"), b"shirt\ntrouser\n\ncoat\n");
    let train = Dataset::open(&d, Split::Train).unwrap();
    let test = Dataset::open(&d, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (3, 1));
    assert_eq!(test.get(0).unwrap().get_pixel(1, 1).0, [8, 8, 8]);
    assert_eq!(train.class_names(), &["shirt", "trouser", "coat"]);
    assert_eq!(test.label(0), Some(1));

    // Only a test pair: used whichever split is asked for.
    let d = temp_dir("single");
    write(&d.join("t10k-images-idx3-ubyte"), &images_bytes());
    write(&d.join("t10k-labels-idx1-ubyte"), &labels_bytes());
    assert_eq!(Dataset::open(&d, Split::Train).unwrap().len(), 3);
    // Too few class names for the labels is an error naming classes.txt.
    write(&d.join("classes.txt"), b"a\nb\n");
    let err = Dataset::open(&d, Split::Train).err().unwrap().to_string();
    assert!(err.contains("classes.txt"), "{err}");
}

#[test]
fn write_idx_round_trips() {
    let d = temp_dir("write");
    let data: Vec<u8> = (0..4 * 3 * 5).map(|i| (i * 7 % 256) as u8).collect();
    for name in ["x-images-idx3-ubyte", "x-images-idx3-ubyte.gz"] {
        let p = d.join(name);
        write_idx(&p, &[4, 3, 5], &data).unwrap();
        assert_eq!(read_idx(&p).unwrap(), IdxArray { dims: vec![4, 3, 5], data: data.clone() });
    }
    // The plain file is byte for byte the format: header then data.
    let raw = std::fs::read(d.join("x-images-idx3-ubyte")).unwrap();
    assert_eq!(&raw[..16], &[0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 5]);
    assert!(write_idx(&d.join("bad"), &[2, 2], &[1, 2, 3]).is_err());
    // Two images files and neither is train's: the directory is ambiguous.
    assert!(Dataset::open(&d, Split::Train).is_err());
    // Unlabeled: images without a labels file.
    let ds = Dataset::open(d.join("x-images-idx3-ubyte.gz"), Split::Train).unwrap();
    assert_eq!(ds.len(), 4);
    assert!(ds.labels().is_none() && ds.class_names().is_empty());
    assert_eq!(ds.get(0).unwrap().dimensions(), (5, 3));
}

#[test]
fn sparse_labels_are_explained() {
    // Labels 200, 0, 0: with no classes.txt every number up to 200 is a class; the dataset
    // says how many of them hold images.
    let d = temp_dir("sparse");
    write(&d.join("train-images-idx3-ubyte"), &images_bytes());
    write(&d.join("train-labels-idx1-ubyte"), &[0, 0, 8, 1, 0, 0, 0, 3, 200, 0, 0]);
    let ds = Dataset::open(&d, Split::Train).unwrap();
    assert_eq!(ds.class_names().len(), 201);
    assert!(ds.describe().contains("201 classes (2 with images)"), "{}", ds.describe());
}
