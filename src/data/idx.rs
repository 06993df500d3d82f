//! The IDX format of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST ship this way).
//!
//! A file is a 4-byte magic `0x00 0x00 <type> <ndim>`, then `ndim` big-endian u32
//! dimensions, then the data in row-major order. Only type 0x08 (unsigned byte) is used by
//! these sets and supported here. Images are `(N, H, W)` (`idx3`; `(N, H, W, C)` with C 1
//! or 3 is accepted too), labels `(N)` (`idx1`). Files may be gzip-compressed (detected
//! from the bytes, not the name). A file is read whole: 60,000 28x28 images are 47 MB.
//!
//! A directory is searched for `<prefix>-images-idx3-ubyte[.gz]` (also `.idx3-ubyte`)
//! with its `<prefix>-labels-idx1-ubyte[.gz]`; prefix `train` is `Split::Train`, `t10k`
//! or `test` is `Split::Test`; a directory with a single images file uses it whatever the
//! split. An optional `classes.txt` beside the images (one name per line, in label
//! order) names the classes; otherwise they are called "0", "1", ...

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::Split;
use crate::error::{Result, SopError};

const TYPE_U8: u8 = 0x08;

/// The dimensions and bytes of one IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, gunzipping it when it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| SopError::file(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| SopError::file(path, format!("bad gzip data: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|msg| SopError::file(path, msg))
}

/// Parses IDX bytes; the error says what is wrong (the caller adds the file name).
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!("not an IDX file: {} bytes, shorter than the header", bytes.len()));
    }
    let (zeros, ty, ndim) = (&bytes[..2], bytes[2], bytes[3] as usize);
    if zeros != [0, 0] {
        return Err("not an IDX file: the magic number does not start with two zero bytes".into());
    }
    if ty != TYPE_U8 {
        return Err(format!("IDX data type 0x{ty:02x} is not supported (only 0x08, unsigned byte)"));
    }
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(format!("truncated IDX header ({ndim} dimensions, {} bytes)", bytes.len()));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let data = &bytes[header..];
    match count {
        Some(n) if n == data.len() => Ok(IdxArray { dims, data: data.to_vec() }),
        Some(n) if n > data.len() => {
            Err(format!("truncated: dimensions {dims:?} need {n} bytes of data, found {}", data.len()))
        }
        Some(n) => Err(format!("{} bytes of data after the {n} that dimensions {dims:?} describe", data.len() - n)),
        None => Err(format!("dimensions {dims:?} overflow")),
    }
}

/// Writes an unsigned-byte IDX file, gzip-compressed when the name ends in `.gz`.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let count: usize = dims.iter().product();
    if count != data.len() || dims.is_empty() || dims.len() > 255 {
        return Err(SopError::file(path, format!("{} bytes do not fit dimensions {dims:?}", data.len())));
    }
    let mut bytes = vec![0, 0, TYPE_U8, dims.len() as u8];
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| SopError::file(path, format!("dimension {d} too large")))?;
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if path.extension().is_some_and(|e| e == "gz") {
        // mtime 0 and no name: the same data always gives the same file.
        let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
        enc.write_all(&bytes).map_err(|e| SopError::file(path, e))?;
        bytes = enc.finish().map_err(|e| SopError::file(path, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| SopError::file(path, e))
}

/// Images (and labels, when their file exists) of one IDX pair, held in memory.
pub struct IdxDataset {
    images_path: PathBuf,
    n: usize,
    height: usize,
    width: usize,
    channels: usize,
    pixels: Vec<u8>,
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
}

impl IdxDataset {
    /// Opens an images file, or the split's images file in a directory, with its labels.
    pub fn open(path: &Path, split: Split) -> Result<IdxDataset> {
        let (images, labels) = if path.is_dir() {
            find_pair(path, split)?
                .ok_or_else(|| SopError::file(path, "no *-images-idx3-ubyte[.gz] file in this directory"))?
        } else {
            let labels = labels_path_for(path);
            (path.to_path_buf(), labels)
        };
        let labels = match labels {
            Some(l) => Some(read_idx(&l)?),
            None => {
                log::warn!("{}: no labels file found beside it; the images are unlabeled", images.display());
                None
            }
        };
        IdxDataset::from_arrays(&images, read_idx(&images)?, labels)
    }

    /// Builds the dataset from parsed arrays; `images_path` names it in messages and is
    /// where `classes.txt` is looked for.
    pub fn from_arrays(images_path: &Path, images: IdxArray, labels: Option<IdxArray>) -> Result<IdxDataset> {
        let bad = |msg: String| SopError::file(images_path, msg);
        let (n, height, width, channels) = match images.dims[..] {
            [n, h, w] => (n, h, w, 1),
            [n, h, w, c] if c == 1 || c == 3 => (n, h, w, c),
            _ => return Err(bad(format!("images must be (N, H, W) or (N, H, W, 1|3), not {:?}", images.dims))),
        };
        if height == 0 || width == 0 {
            return Err(bad(format!("images of size {height}x{width}")));
        }
        let labels = match labels {
            None => None,
            Some(l) if l.dims == [n] => Some(l.data.iter().map(|&b| b as u32).collect::<Vec<_>>()),
            Some(l) => return Err(bad(format!("{n} images but labels of shape {:?}", l.dims))),
        };
        let classes = match &labels {
            None => Vec::new(),
            Some(l) => class_names(images_path, l)?,
        };
        Ok(IdxDataset {
            images_path: images_path.to_path_buf(),
            n,
            height,
            width,
            channels,
            pixels: images.data,
            labels,
            classes,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn images_path(&self) -> &Path {
        &self.images_path
    }

    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// Image `i` as RGB (a grayscale image is repeated over the three channels).
    pub fn get(&self, i: usize) -> RgbImage {
        let (h, w, c) = (self.height, self.width, self.channels);
        let src = &self.pixels[i * h * w * c..(i + 1) * h * w * c];
        let rgb: Vec<u8> = if c == 3 { src.to_vec() } else { src.iter().flat_map(|&v| [v, v, v]).collect() };
        RgbImage::from_raw(w as u32, h as u32, rgb).expect("buffer size matches the dimensions")
    }
}

/// The images file of `split` in `dir` and its labels file (when present), or None when
/// `dir` holds no IDX images file.
pub fn find_pair(dir: &Path, split: Split) -> Result<Option<(PathBuf, Option<PathBuf>)>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let rd = std::fs::read_dir(dir).map_err(|e| SopError::file(dir, e))?;
    let mut images = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| SopError::file(dir, e))?.path();
        if p.is_file() && is_images_name(&p) {
            images.push(p);
        }
    }
    images.sort();
    let chosen = if images.len() == 1 {
        images.pop()
    } else {
        let prefixes: &[&str] = match split {
            Split::Train => &["train"],
            Split::Test => &["t10k", "test"],
        };
        let found = images.iter().find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().to_ascii_lowercase();
            prefixes.iter().any(|pre| name.starts_with(pre))
        });
        match (found, images.is_empty()) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => None,
            (None, false) => {
                return Err(SopError::file(
                    dir,
                    format!("several IDX images files but none for the {split:?} split: {images:?}"),
                ))
            }
        }
    };
    Ok(chosen.map(|img| {
        let labels = labels_path_for(&img);
        (img, labels)
    }))
}

fn is_images_name(p: &Path) -> bool {
    let name = p.file_name().unwrap_or_default().to_string_lossy().to_ascii_lowercase();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    stem.contains("images") && (stem.ends_with("idx3-ubyte") || stem.ends_with("idx4-ubyte"))
}

/// `train-images-idx3-ubyte.gz` -> the existing one of `train-labels-idx1-ubyte[.gz]`.
fn labels_path_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().into_owned();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let labels = stem.replace("images", "labels").replace("idx3", "idx1").replace("idx4", "idx1");
    [labels.clone(), format!("{labels}.gz")].into_iter().map(|n| images.with_file_name(n)).find(|p| p.is_file())
}

/// Names from `classes.txt` beside the images file, else "0", "1", ... up to the largest
/// label.
fn class_names(images_path: &Path, labels: &[u32]) -> Result<Vec<String>> {
    let k = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let file = images_path.with_file_name("classes.txt");
    if !file.is_file() {
        let used = labels.iter().copied().collect::<std::collections::BTreeSet<u32>>().len();
        if used < k {
            log::warn!(
                "{}: labels go up to {} but take only {used} distinct values; with no classes.txt beside the \
                 images, each number from 0 to {} counts as a class ({} of them empty)",
                images_path.display(),
                k - 1,
                k - 1,
                k - used
            );
        }
        return Ok((0..k).map(|c| c.to_string()).collect());
    }
    let text = std::fs::read_to_string(&file).map_err(|e| SopError::file(&file, e))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() < k {
        return Err(SopError::file(&file, format!("{} class names but labels go up to {}", names.len(), k - 1)));
    }
    Ok(names)
}
