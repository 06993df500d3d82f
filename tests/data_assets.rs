//! The bundled Fashion-MNIST subset in assets/fashion-mnist/: its shape and balance, and
//! (ignored, run by hand) the helper that made it from the full set.
//!
//! Regenerate with:
//!   scripts/fetch-fashion-mnist /tmp/fashion-mnist
//!   SOP_FASHION_MNIST_FULL=/tmp/fashion-mnist cargo test --release -p sop --test data_assets -- --ignored

use std::path::{Path, PathBuf};

use sop::data::idx::{read_idx, write_idx};
use sop::data::{Dataset, Split};

const CLASSES: usize = 10;
/// Images per class in the bundled train and test subsets.
const PER_CLASS: [(&str, usize); 2] = [("train", 200), ("t10k", 50)];

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist")
}

#[test]
fn bundled_subset_is_class_balanced_and_small() {
    let dir = assets();
    let total: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(total < 2_000_000, "assets/fashion-mnist is {total} bytes, over the 2 MB budget");
    for (split, (_, per_class)) in [Split::Train, Split::Test].into_iter().zip(PER_CLASS) {
        let ds = Dataset::open(&dir, split).unwrap();
        assert_eq!(ds.len(), CLASSES * per_class, "{split:?}");
        assert_eq!(ds.class_names().len(), CLASSES);
        assert_eq!(ds.class_names()[0], "T-shirt/top");
        assert_eq!(ds.class_names()[9], "Ankle boot");
        let mut counts = [0usize; CLASSES];
        for &l in ds.labels().unwrap() {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [per_class; CLASSES], "{split:?}");
        let img = ds.get(0).unwrap();
        assert_eq!(img.dimensions(), (28, 28));
        // Real pictures, not blank: some dark background and some bright garment.
        let (lo, hi) = (img.pixels().map(|p| p[0]).min().unwrap(), img.pixels().map(|p| p[0]).max().unwrap());
        assert!(lo < 10 && hi > 150, "pixel range {lo}..{hi}");
    }
}

/// Writes the subset: the first PER_CLASS images of each class, in file order.
#[test]
#[ignore = "needs the full set: set SOP_FASHION_MNIST_FULL (see scripts/fetch-fashion-mnist)"]
fn make_fashion_mnist_subset() {
    let full = PathBuf::from(std::env::var("SOP_FASHION_MNIST_FULL").expect("SOP_FASHION_MNIST_FULL"));
    let out = assets();
    std::fs::create_dir_all(&out).unwrap();
    for (prefix, per_class) in PER_CLASS {
        let images = read_idx(&full.join(format!("{prefix}-images-idx3-ubyte.gz"))).unwrap();
        let labels = read_idx(&full.join(format!("{prefix}-labels-idx1-ubyte.gz"))).unwrap();
        let px = images.dims[1] * images.dims[2];
        let mut taken = [0usize; CLASSES];
        let (mut sub_images, mut sub_labels) = (Vec::new(), Vec::new());
        for (i, &l) in labels.data.iter().enumerate() {
            if taken[l as usize] < per_class {
                taken[l as usize] += 1;
                sub_images.extend_from_slice(&images.data[i * px..(i + 1) * px]);
                sub_labels.push(l);
            }
        }
        assert_eq!(taken, [per_class; CLASSES]);
        let n = sub_labels.len();
        let dims = [n, images.dims[1], images.dims[2]];
        write_idx(&out.join(format!("{prefix}-images-idx3-ubyte.gz")), &dims, &sub_images).unwrap();
        write_idx(&out.join(format!("{prefix}-labels-idx1-ubyte.gz")), &[n], &sub_labels).unwrap();
    }
    std::fs::copy(full.join("classes.txt"), out.join("classes.txt")).unwrap();
}
