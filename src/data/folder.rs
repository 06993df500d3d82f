//! Image folders: the ImageFolder convention (one subfolder per class, labels from the
//! sorted folder names) or a flat folder of unlabeled images. Files are listed once and
//! decoded on demand, so an ImageNet-sized tree costs only its list of paths in memory.
//!
//! Layout rules for `ImageFolder::open(root, split)`:
//! - if `root` holds a `train/` folder and a `val/` or `test/` folder and no other folder,
//!   the split picks one of them (`Split::Test` prefers `val/`) and the rules go on there;
//! - if the (chosen) folder has subfolders, each is a class and its files, found
//!   recursively, are that class's images; files beside the class folders are ignored
//!   with a warning;
//! - otherwise every file in it is an unlabeled image.
//!
//! Symbolic links are followed, but every folder is entered at most once and every image
//! listed at most once (compared by canonical path): a link to the dataset folder or one
//! above it (a cycle), to another class's folder, or to an image already listed is skipped,
//! with a warning that names it. Class folders are claimed before any is walked, so a link inside `cat/` to
//! `dog/` never puts dog images under the cat label.
//!
//! Hidden entries (names starting with '.') are ignored. Every other file is a candidate:
//! the format is guessed from the contents, not the extension, and a file that does not
//! decode is skipped by `Dataset::load`, not here.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::Split;
use crate::error::{Result, SopError};

pub struct ImageFolder {
    root: PathBuf,
    files: Vec<PathBuf>,
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
}

impl ImageFolder {
    pub fn open(root: &Path, split: Split) -> Result<ImageFolder> {
        let root = choose_split(root, split)?;
        let entries = list_dir(&root)?;
        let mut walker = Walker::default();
        let root_canon = walker.claim(&root, &root, false)?.unwrap_or_else(|| root.clone());
        // Every class folder is claimed first; a second name for one of them (or a link to
        // the dataset or above) is no class.
        let mut class_dirs = Vec::new();
        for (dir, is_link) in entries.iter().filter(|e| e.1).map(|e| (&e.0, e.2)) {
            if let Some(canon) = walker.claim(dir, &root_canon.join(file_name(dir)), is_link)? {
                class_dirs.push((dir, canon));
            }
        }
        if class_dirs.is_empty() {
            let mut files = Vec::new();
            walker.walk(&root, &root_canon, &mut files)?;
            walker.report(&root);
            return Ok(ImageFolder { root, files, labels: None, classes: Vec::new() });
        }

        let loose = entries.iter().filter(|e| !e.1).count();
        if loose > 0 {
            log::warn!(
                "{}: ignoring {loose} files beside the class folders (each subfolder is a class)",
                root.display()
            );
        }
        let (mut files, mut labels, mut classes) = (Vec::new(), Vec::new(), Vec::new());
        for (dir, canon) in class_dirs {
            let before = files.len();
            walker.walk(dir, &canon, &mut files)?;
            if files.len() == before {
                log::warn!("{}: class folder with no files", dir.display());
            }
            labels.resize(files.len(), classes.len() as u32);
            classes.push(file_name(dir));
        }
        walker.report(&root);
        Ok(ImageFolder { root, files, labels: Some(labels), classes })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn path(&self, i: usize) -> &Path {
        &self.files[i]
    }

    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    pub fn get(&self, i: usize) -> Result<RgbImage> {
        decode_file(&self.files[i])
    }
}

/// Decodes one image file (format guessed from its bytes) to 8-bit RGB. Any failure,
/// including a decoder panic on hostile input, becomes an error naming the file.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| SopError::file(path, e))?;
    if bytes.is_empty() {
        return Err(SopError::file(path, "empty file (0 bytes)"));
    }
    let decoded = std::panic::catch_unwind(|| -> std::result::Result<RgbImage, String> {
        let reader =
            image::ImageReader::new(Cursor::new(&bytes[..])).with_guessed_format().map_err(|e| e.to_string())?;
        match reader.format() {
            None => return Err("not an image in a known format".to_string()),
            // The JPEG decoder fills a truncated scan with gray instead of failing.
            Some(image::ImageFormat::Jpeg) if jpeg_is_truncated(&bytes) => {
                return Err("truncated JPEG (the data ends before the end-of-image marker)".to_string())
            }
            _ => {}
        }
        let img = reader.decode().map_err(|e| e.to_string())?;
        Ok(img.to_rgb8())
    });
    match decoded {
        Ok(Ok(img)) if img.width() > 0 && img.height() > 0 => Ok(img),
        Ok(Ok(_)) => Err(SopError::file(path, "image has zero width or height")),
        Ok(Err(msg)) => Err(SopError::file(path, msg)),
        Err(_) => Err(SopError::file(path, "the image decoder panicked")),
    }
}

/// Walks the JPEG segment structure from SOI: true when the bytes end before the EOI
/// marker. Segments (an EXIF thumbnail with its own EOI among them) are skipped by their
/// length, scans by looking for the next marker; data after EOI is allowed. Anything
/// unexpected returns false and is left to the decoder.
fn jpeg_is_truncated(b: &[u8]) -> bool {
    let mut i = 2; // after SOI (FF D8)
    loop {
        if i >= b.len() {
            return true;
        }
        if b[i] != 0xFF {
            return false;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1; // fill bytes
        }
        let Some(&marker) = b.get(i) else { return true };
        i += 1;
        match marker {
            0xD9 => return false,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else { return true };
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: FF is followed by 00 (a stuffed byte) or a restart marker.
            while i + 1 < b.len() && !(b[i] == 0xFF && b[i + 1] != 0 && !(0xD0..=0xD7).contains(&b[i + 1])) {
                i += 1;
            }
            if i + 1 >= b.len() {
                return true;
            }
        }
    }
}

/// With `train/` plus `val/` or `test/` (and no other folder) under `root`, the split's
/// folder; otherwise `root` itself.
fn choose_split(root: &Path, split: Split) -> Result<PathBuf> {
    let dirs: Vec<String> = list_dir(root)?.iter().filter(|e| e.1).map(|e| file_name(&e.0)).collect();
    let has = |n: &str| dirs.iter().any(|d| d == n);
    let held_out = if has("val") { "val" } else { "test" };
    let is_split_layout = has("train") && has(held_out) && dirs.len() == 2;
    Ok(match (is_split_layout, split) {
        (false, _) => root.to_path_buf(),
        (true, Split::Train) => root.join("train"),
        (true, Split::Test) => root.join(held_out),
    })
}

/// Non-hidden files and folders of `dir` as (path, is a folder, is a link), sorted by name
/// (byte order, like Python's sorted()). The type comes from the directory entry, so listing
/// a large tree costs no stat per file; only symbolic links are followed with a stat.
fn list_dir(dir: &Path) -> Result<Vec<(PathBuf, bool, bool)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| SopError::file(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| SopError::file(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ty = entry.file_type().map_err(|e| SopError::file(&path, e))?;
        let (is_dir, is_file) =
            if ty.is_symlink() { (path.is_dir(), path.is_file()) } else { (ty.is_dir(), ty.is_file()) };
        if is_dir || is_file {
            out.push((path, is_dir, ty.is_symlink()));
        }
    }
    out.sort();
    Ok(out)
}

/// One listing of a tree: the canonical paths of the folders entered and the files listed,
/// and what was skipped as a second name for either.
#[derive(Default)]
struct Walker {
    /// The canonical dataset folder (the first one claimed).
    root: Option<PathBuf>,
    dirs: std::collections::HashSet<PathBuf>,
    files: std::collections::HashSet<PathBuf>,
    skipped: Vec<String>,
}

impl Walker {
    /// The canonical path of `path` (`canon` unless it is a link: inside a canonical folder,
    /// a plain entry's canonical path is the folder's joined with its name, so only links cost
    /// a system call), or None when it was seen before, then remembered as skipped.
    fn canonical(&mut self, path: &Path, canon: &Path, is_link: bool, dir: bool) -> Result<Option<PathBuf>> {
        let c = if is_link || canon == path {
            path.canonicalize().map_err(|e| SopError::file(path, e))?
        } else {
            canon.to_path_buf()
        };
        // A folder above the dataset would list the whole dataset again (and more).
        if dir && self.root.as_ref().is_some_and(|r| r.starts_with(&c) && *r != c) {
            self.skip(format!("{} (the folder {}, which holds the dataset)", path.display(), c.display()));
            return Ok(None);
        }
        self.root.get_or_insert_with(|| c.clone());
        let seen = if dir { &mut self.dirs } else { &mut self.files };
        if seen.insert(c.clone()) {
            return Ok(Some(c));
        }
        let what = if dir { "folder" } else { "image" };
        self.skip(format!("{} (the {what} {}, already listed)", path.display(), c.display()));
        Ok(None)
    }

    fn skip(&mut self, note: String) {
        if !self.skipped.contains(&note) {
            self.skipped.push(note);
        }
    }

    fn claim(&mut self, dir: &Path, canon: &Path, is_link: bool) -> Result<Option<PathBuf>> {
        self.canonical(dir, canon, is_link, true)
    }

    /// Appends every non-hidden file under `dir` (canonical path `canon`), recursively, in
    /// sorted order; `dir` itself must already be claimed.
    fn walk(&mut self, dir: &Path, canon: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for (p, is_dir, is_link) in list_dir(dir)? {
            let c = canon.join(file_name(&p));
            match self.canonical(&p, &c, is_link, is_dir)? {
                Some(c) if is_dir => self.walk(&p, &c, out)?,
                Some(_) => out.push(p),
                None => {}
            }
        }
        Ok(())
    }

    /// Warns once about everything skipped.
    fn report(&self, root: &Path) {
        if self.skipped.is_empty() {
            return;
        }
        const SHOWN: usize = 5;
        let more = self.skipped.len().saturating_sub(SHOWN);
        log::warn!(
            "{}: skipped {} link{} to folders or images listed already (each is read once): {}{}",
            root.display(),
            self.skipped.len(),
            if self.skipped.len() == 1 { "" } else { "s" },
            self.skipped[..self.skipped.len().min(SHOWN)].join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        );
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
