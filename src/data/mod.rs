//! Everything between files on disk and the f32 batches uploaded to the GPU.
//!
//! - `folder`: image folders (one subfolder per class, or a flat folder), decoded lazily.
//! - `idx`: the IDX files of the MNIST family (Fashion-MNIST ships that way), read whole.
//! - `augment`: the multi-crop pipeline of docs/METHOD.md "Data views" (random resized
//!   crop, flip, colour jitter, grayscale, blur, solarize, normalise) and the eval transform.
//! - `masks`: the BEiT/iBOT block-mask generator for the global crops.
//! - `loader`: a background thread plus a rayon pool that prefetches augmented batches.
//! - `preview`: a PNG grid of what the model is fed (`sop preview`).
//! - `synthetic`: generated ImageNet-sized JPEGs for the loader benchmark and tests.
//!
//! `Dataset` (this file) hides which of the two sources is behind it, and keeps the set of
//! samples that failed to decode: each is warned about once, then skipped and counted.
//!
//! Randomness: every random draw for a sample comes from an RNG derived from
//! (seed, epoch, sample index, stream), so a batch is reproducible whatever the number of
//! threads or the order in which samples are processed.

pub mod augment;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod masks;
pub mod preview;
pub mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use image::RgbImage;

use crate::error::{Result, SopError};

pub use augment::{AugmentConfig, EvalConfig, Image, JitterConfig, SampleViews};
pub use folder::ImageFolder;
pub use idx::IdxDataset;
pub use loader::{Batch, EpochSummary, Loader, LoaderConfig, Views};
pub use masks::{BlockMask, MaskConfig, MaskGenerator};

/// Which part of a dataset to use when a directory holds both (IDX `train-*`/`t10k-*`
/// files, or an image tree with `train/` and `val/` or `test/` folders).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Split {
    #[default]
    Train,
    /// The held-out part: IDX `t10k-*`/`test-*` files, or a `val/` (else `test/`) folder.
    Test,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" | "val" | "t10k" => Ok(Split::Test),
            _ => Err(format!("unknown split {s:?} (expected train or test)")),
        }
    }
}

enum Source {
    Folder(ImageFolder),
    Idx(IdxDataset),
}

/// A labeled or unlabeled set of images, decoded on demand.
pub struct Dataset {
    source: Source,
    root: PathBuf,
    /// Samples that failed to decode; each is warned about once.
    bad: Vec<AtomicBool>,
    bad_count: AtomicUsize,
}

impl Dataset {
    /// Opens `path`: an IDX images file, a directory of IDX files, or an image folder
    /// (class subfolders, or a flat folder of unlabeled images). Fails when the folder is
    /// empty or none of its files decodes; undecodable files found on the way are warned
    /// about and remembered as skipped.
    pub fn open(path: impl AsRef<Path>, split: Split) -> Result<Dataset> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| SopError::file(path, e))?;
        let source = if meta.is_file() || idx::find_pair(path, split)?.is_some() {
            Source::Idx(IdxDataset::open(path, split)?)
        } else {
            Source::Folder(ImageFolder::open(path, split)?)
        };
        let ds = Dataset::from_source(source, path);
        if ds.is_empty() {
            return Err(SopError::file(path, "the dataset is empty: no image files found"));
        }
        // Lazy decoding, but fail now rather than mid-epoch when nothing decodes at all.
        if (0..ds.len()).all(|i| ds.load(i).is_none()) {
            return Err(SopError::file(path, format!("none of the {} files is a decodable image", ds.len())));
        }
        Ok(ds)
    }

    pub fn from_folder(folder: ImageFolder) -> Dataset {
        let root = folder.root().to_path_buf();
        Dataset::from_source(Source::Folder(folder), &root)
    }

    pub fn from_idx(idx: IdxDataset) -> Dataset {
        let root = idx.images_path().to_path_buf();
        Dataset::from_source(Source::Idx(idx), &root)
    }

    fn from_source(source: Source, root: &Path) -> Dataset {
        let n = match &source {
            Source::Folder(f) => f.len(),
            Source::Idx(d) => d.len(),
        };
        Dataset {
            source,
            root: root.to_path_buf(),
            bad: (0..n).map(|_| AtomicBool::new(false)).collect(),
            bad_count: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.bad.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bad.is_empty()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the samples come from: the chosen split's folder, or the IDX images file.
    pub fn source_path(&self) -> &Path {
        match &self.source {
            Source::Folder(f) => f.root(),
            Source::Idx(d) => d.images_path(),
        }
    }

    /// One label per sample (indices into `class_names`), or None for unlabeled images.
    pub fn labels(&self) -> Option<&[u32]> {
        match &self.source {
            Source::Folder(f) => f.labels(),
            Source::Idx(d) => d.labels(),
        }
    }

    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels().and_then(|l| l.get(i).copied())
    }

    /// Class names, in label order; empty for unlabeled images.
    pub fn class_names(&self) -> &[String] {
        match &self.source {
            Source::Folder(f) => f.class_names(),
            Source::Idx(d) => d.class_names(),
        }
    }

    /// What sample `i` is called in messages: its file, or `images-file[i]` for IDX.
    pub fn name(&self, i: usize) -> String {
        match &self.source {
            Source::Folder(f) => f.path(i).display().to_string(),
            Source::Idx(d) => format!("{}[{i}]", d.images_path().display()),
        }
    }

    /// Decodes sample `i` as 8-bit RGB (grayscale and RGBA are converted; alpha dropped).
    pub fn get(&self, i: usize) -> Result<RgbImage> {
        if i >= self.len() {
            return Err(SopError::Invalid(format!(
                "sample {i} out of range: {} has {} samples",
                self.root.display(),
                self.len()
            )));
        }
        match &self.source {
            Source::Folder(f) => f.get(i),
            Source::Idx(d) => Ok(d.get(i)),
        }
    }

    /// Like `get`, but a sample that does not decode is remembered as bad, warned about
    /// once (naming the file), and returned as None from then on.
    pub fn load(&self, i: usize) -> Option<RgbImage> {
        if self.bad.get(i)?.load(Ordering::Relaxed) {
            return None;
        }
        match self.get(i) {
            Ok(img) => Some(img),
            Err(e) => {
                if !self.bad[i].swap(true, Ordering::Relaxed) {
                    self.bad_count.fetch_add(1, Ordering::Relaxed);
                    log::warn!("skipping an undecodable image: {e}");
                }
                None
            }
        }
    }

    pub fn is_bad(&self, i: usize) -> bool {
        self.bad.get(i).is_some_and(|b| b.load(Ordering::Relaxed))
    }

    /// How many distinct samples have failed to decode so far.
    pub fn bad_count(&self) -> usize {
        self.bad_count.load(Ordering::Relaxed)
    }

    /// One line for logs: kind, path, size and classes.
    pub fn describe(&self) -> String {
        let kind = match &self.source {
            Source::Folder(_) => "image folder",
            Source::Idx(_) => "IDX",
        };
        let used = self.labels().map_or(0, |l| l.iter().collect::<std::collections::BTreeSet<_>>().len());
        let classes = match self.class_names().len() {
            0 => "unlabeled".to_string(),
            k if used < k => format!("{k} classes ({used} with images)"),
            k => format!("{k} classes"),
        };
        format!("{kind} {}: {} images, {classes}", self.root.display(), self.len())
    }
}

/// Whether two datasets read the same images: the same (chosen split) folder or IDX file.
/// With no held-out split, a dataset's test split is its training split.
pub fn same_images(a: &Dataset, b: &Dataset) -> bool {
    let (pa, pb) = (a.source_path(), b.source_path());
    match (pa.canonicalize(), pb.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => pa == pb,
    }
}

/// The label of every sample of `val` as an index into `train`'s classes, matched by class
/// name (folder name, or IDX `classes.txt`), not by position: a val set may hold a subset of
/// the classes, in any order. A val class that the training set lacks is refused, naming it.
pub fn val_labels_by_name(train: &Dataset, val: &Dataset) -> Result<Vec<u32>> {
    let (tn, vn) = (train.class_names(), val.class_names());
    let labels = val.labels().ok_or_else(|| SopError::file(val.root(), "no labels (use one subfolder per class)"))?;
    let index = |name: &String| tn.iter().position(|t| t == name);
    // Only classes that have samples matter (IDX names every label up to the largest).
    let used: std::collections::BTreeSet<u32> = labels.iter().copied().collect();
    let missing: Vec<&str> =
        used.iter().map(|&u| &vn[u as usize]).filter(|n| index(n).is_none()).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(SopError::file(
            val.root(),
            format!(
                "val class{} {} not among the training classes of {} ({}); classes are matched by name",
                if missing.len() == 1 { "" } else { "es" },
                missing.join(", "),
                train.root().display(),
                tn.join(", ")
            ),
        ));
    }
    let map: Vec<u32> = vn.iter().map(|n| index(n).unwrap_or(0) as u32).collect();
    Ok(labels.iter().map(|&l| map[l as usize]).collect())
}

// The per-sample random streams live in `crate::rng`; the data modules name them from here.
pub use crate::rng::{sample_rng, STREAM_MASK, STREAM_PREVIEW, STREAM_SHUFFLE, STREAM_VIEW};
