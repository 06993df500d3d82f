//! Checkpoints: named f32 tensors in a safetensors file, under the authors' (iBOT/timm) names
//! and PyTorch layouts (`model::params`), with the architecture in the file's metadata.
//!
//! Format. A safetensors file (8-byte little-endian header length, JSON header, raw
//! little-endian data). Metadata (`__metadata__`, all values strings):
//! - `format` = `pt` (the safetensors convention for PyTorch layouts, so Hugging Face
//!   loaders accept the file) and `sop_format` = [`FORMAT_VERSION`];
//! - `arch` (`vit_tiny`/`vit_small`/`vit_base`/`vit_custom`), `dim`, `depth`, `heads`,
//!   `patch_size`, `img_size`, `mlp_ratio`, `in_chans`, `ln_eps`, `head_hidden`,
//!   `head_bottleneck`, `head_layers`.
//!
//! Saving writes a temporary file beside the target, syncs it and renames it over the target,
//! so a crash leaves either the old file or the new one, never half of one.
//!
//! Loading reads the whole file, checks it is safetensors and complete, then checks it
//! against the expected parameter list: every name present, nothing unexpected, every shape
//! and dtype right, every value finite (NaN or Inf is refused, naming the tensor and index).
//! Any failure returns an error naming the file and the tensor and hands
//! back nothing, so the caller's parameters are never half-overwritten. Dtypes: F32 is read
//! as is; F16 and BF16 are widened to f32 (exact); anything else (F64, integers, FP8) is
//! refused rather than silently rounded.
//!
//! Why one file of about 600 lines: reading (the one safetensors reader, `parse`), writing
//! (atomic), the name and shape checks and their error type are one format's concern, and
//! each function is short; splitting them would scatter `CheckpointError`'s cases.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};

use crate::model::{ParamSpec, VitConfig};

/// Version of sop's layout of names and metadata (metadata key `sop_format`).
pub const FORMAT_VERSION: &str = "1";

/// A tensor on the host: PyTorch shape and row-major f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by name, in name order.
pub type TensorMap = BTreeMap<String, HostTensor>;

/// What a load returns: the tensors, the file's metadata, and the names that the file lacked
/// and were filled with their initial value (only `load_backbone`'s mask token).
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub tensors: TensorMap,
    pub metadata: BTreeMap<String, String>,
    pub defaulted: Vec<String>,
}

impl Checkpoint {
    /// The architecture in the metadata, if the file carries one.
    pub fn config(&self, path: &Path) -> Result<Option<VitConfig>, CheckpointError> {
        config_from_metadata(&self.metadata).map_err(|(key, reason)| CheckpointError::Metadata {
            path: path.to_path_buf(),
            key,
            reason,
        })
    }
}

/// Why a checkpoint could not be saved or loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// `error` is in the message and deliberately not the error's `source`, so that a chain
    /// printed with `{:#}` does not repeat it.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{}: not a safetensors file: {reason}", path.display())]
    NotSafetensors { path: PathBuf, reason: String },

    #[error("{}: truncated: the file has {found} bytes but its header needs at least {expected} \
             (an interrupted copy or download?)", path.display())]
    Truncated { path: PathBuf, expected: u64, found: u64 },

    #[error("{}: corrupt safetensors file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    #[error("{}: missing tensor{} {}{}", path.display(), plural(missing), missing.join(", "), extras_note(unexpected))]
    Missing { path: PathBuf, missing: Vec<String>, unexpected: Vec<String> },

    #[error("{}: unexpected tensor{} {} (a different architecture?)", path.display(), plural(unexpected), unexpected.join(", "))]
    Unexpected { path: PathBuf, unexpected: Vec<String> },

    #[error("{}: tensor {tensor} has shape {found:?}, expected {expected:?}", path.display())]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{}: tensor {tensor} has dtype {dtype}; sop reads F32, and F16/BF16 widened to \
             F32 (convert the file to float32)", path.display())]
    Dtype { path: PathBuf, tensor: String, dtype: String },

    #[error("{}: metadata {key}: {reason}", path.display())]
    Metadata { path: PathBuf, key: String, reason: String },

    #[error("{}: tensor {tensor} holds {value} at index {index:?} (the first of {count} non-finite values; \
             a damaged file or a diverged run)", path.display())]
    NonFinite { path: PathBuf, tensor: String, index: Vec<usize>, value: f32, count: usize },

    #[error("{}: cannot save tensor {tensor}: {reason}", path.display())]
    BadTensor { path: PathBuf, tensor: String, reason: String },
}

fn plural(v: &[String]) -> &'static str {
    if v.len() == 1 {
        ""
    } else {
        "s"
    }
}

fn extras_note(unexpected: &[String]) -> String {
    if unexpected.is_empty() {
        String::new()
    } else {
        format!("; the file has unexpected tensor{} {}", plural(unexpected), unexpected.join(", "))
    }
}

type CResult<T> = Result<T, CheckpointError>;

/// Builds a `TensorMap` from `init_params`-style triples.
pub fn tensor_map(v: impl IntoIterator<Item = (String, Vec<usize>, Vec<f32>)>) -> TensorMap {
    v.into_iter().map(|(n, shape, data)| (n, HostTensor { shape, data })).collect()
}

/// The metadata written for `cfg` (see the module comment).
pub fn metadata_for(cfg: &VitConfig) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("format", "pt".into());
    put("sop_format", FORMAT_VERSION.into());
    put("arch", cfg.arch().into());
    put("dim", cfg.dim.to_string());
    put("depth", cfg.depth.to_string());
    put("heads", cfg.heads.to_string());
    put("patch_size", cfg.patch_size.to_string());
    put("img_size", cfg.img_size.to_string());
    put("mlp_ratio", cfg.mlp_ratio.to_string());
    put("in_chans", cfg.in_chans.to_string());
    put("ln_eps", format!("{:e}", cfg.ln_eps));
    put("head_hidden", cfg.head_hidden.to_string());
    put("head_bottleneck", cfg.head_bottleneck.to_string());
    put("head_layers", cfg.head_layers.to_string());
    m
}

/// The architecture described by checkpoint metadata: `Ok(None)` when it names none (no
/// `arch`, `dim`, `depth` or `heads`), else the `arch` preset (or `vit_small`'s defaults
/// for `vit_custom`) with every stored size applied on top, validated. A custom
/// architecture must store `dim`, `depth` and `heads`. Errors are (key, reason).
pub fn config_from_metadata(meta: &BTreeMap<String, String>) -> Result<Option<VitConfig>, (String, String)> {
    if !["arch", "dim", "depth", "heads"].iter().any(|k| meta.contains_key(*k)) {
        return Ok(None);
    }
    let mut cfg = match meta.get("arch").map(String::as_str) {
        None | Some("vit_custom") => {
            for k in ["dim", "depth", "heads"] {
                if !meta.contains_key(k) {
                    return Err((k.into(), "absent, and no preset `arch` to take it from".into()));
                }
            }
            VitConfig::vit_small()
        }
        Some(a) => VitConfig::from_arch(a).map_err(|e| ("arch".to_string(), e.to_string()))?,
    };
    let get = |k: &str| -> Result<Option<usize>, (String, String)> {
        meta.get(k)
            .map(|v| v.trim().parse::<usize>().map_err(|_| (k.to_string(), format!("{v:?} is not a whole number"))))
            .transpose()
    };
    let fields: [(&str, &mut usize); 10] = [
        ("dim", &mut cfg.dim),
        ("depth", &mut cfg.depth),
        ("heads", &mut cfg.heads),
        ("patch_size", &mut cfg.patch_size),
        ("img_size", &mut cfg.img_size),
        ("mlp_ratio", &mut cfg.mlp_ratio),
        ("in_chans", &mut cfg.in_chans),
        ("head_hidden", &mut cfg.head_hidden),
        ("head_bottleneck", &mut cfg.head_bottleneck),
        ("head_layers", &mut cfg.head_layers),
    ];
    for (k, slot) in fields {
        if let Some(v) = get(k)? {
            *slot = v;
        }
    }
    if let Some(v) = meta.get("ln_eps") {
        cfg.ln_eps = v.trim().parse().map_err(|_| ("ln_eps".to_string(), format!("{v:?} is not a number")))?;
    }
    cfg.validate().map_err(|e| ("architecture".to_string(), e.to_string()))?;
    Ok(Some(cfg))
}

// ---------------------------------------------------------------------------------------
// Saving

struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            std::borrow::Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes `tensors` with the architecture of `cfg` in the metadata (plus `extra` keys).
pub fn save_model(path: &Path, tensors: &TensorMap, cfg: &VitConfig, extra: &BTreeMap<String, String>) -> CResult<()> {
    let mut meta = metadata_for(cfg);
    meta.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    save(path, tensors, &meta)
}

/// Writes `tensors` and `metadata` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over `path`. On any error `path` is untouched and the
/// temporary file removed.
pub fn save(path: &Path, tensors: &TensorMap, metadata: &BTreeMap<String, String>) -> CResult<()> {
    for (name, t) in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            return Err(CheckpointError::BadTensor {
                path: path.into(),
                tensor: name.clone(),
                reason: format!("shape {:?} holds {n} values but {} were given", t.shape, t.data.len()),
            });
        }
    }
    let views = tensors.iter().map(|(n, t)| (n.as_str(), F32View { shape: &t.shape, data: &t.data }));
    let meta: std::collections::HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: format!("serialising: {e}") })?;
    let bytes = sorted_header(bytes)
        .map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: format!("serialising: {e}") })?;
    write_atomic(path, &bytes)
}

/// `bytes` (a serialised safetensors file) with its JSON header's keys in sorted order:
/// safetensors writes the metadata in a hash map's order, which differs between processes,
/// so equal checkpoints would not be equal files (data-parallel ranks compare theirs byte
/// for byte). The header is padded with spaces to its old length's 8-byte alignment; the
/// data offsets are relative to the data, so they stay.
fn sorted_header(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let n = u64::from_le_bytes(bytes.get(..8).ok_or("no header length")?.try_into().expect("8 bytes")) as usize;
    let header = bytes.get(8..8 + n).ok_or("header beyond the end")?;
    let mut top: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    if let Some(meta) = top.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> = serde_json::from_value(meta.take()).map_err(|e| e.to_string())?;
        *meta = serde_json::to_value(sorted).map_err(|e| e.to_string())?;
    }
    let mut json = serde_json::to_vec(&top).map_err(|e| e.to_string())?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (same directory, so the
/// rename cannot cross file systems), synced to disk, then renamed over `path`. On any error
/// `path` is untouched and the temporary file removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> CResult<()> {
    let io = |e: std::io::Error| CheckpointError::Io { path: path.into(), error: e };
    let file_name =
        path.file_name().ok_or_else(|| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp.{}.{n}", file_name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable where the platform allows syncing a directory.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

// ---------------------------------------------------------------------------------------
// Loading

/// Largest header safetensors accepts (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Checks the 8-byte length and the start of the header. Returns the header length n when
/// the file looks like safetensors; `Truncated` when it ends inside the header.
fn check_prefix(path: &Path, head: &[u8], file_len: u64) -> CResult<u64> {
    let not = |reason: String| CheckpointError::NotSafetensors { path: path.into(), reason };
    if file_len < 8 {
        return Err(not(format!(
            "the file has {file_len} bytes; a safetensors file starts with an 8-byte header length"
        )));
    }
    let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    if !(2..=MAX_HEADER).contains(&n) {
        return Err(not(format!("its first 8 bytes give a header length of {n} bytes")));
    }
    match head.get(8) {
        Some(b'{') => {}
        Some(_) => return Err(not("the header is not a JSON object".into())),
        None => return Err(CheckpointError::Truncated { path: path.into(), expected: 8 + n, found: file_len }),
    }
    if 8 + n > file_len {
        return Err(CheckpointError::Truncated { path: path.into(), expected: 8 + n, found: file_len });
    }
    Ok(n)
}

/// Parses the header JSON; returns it with the number of data bytes its offsets describe.
fn parse_header(path: &Path, header: &[u8]) -> CResult<(serde_json::Map<String, serde_json::Value>, u64)> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    let text = std::str::from_utf8(header).map_err(|e| corrupt(format!("header is not UTF-8: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(corrupt("header is not a JSON object".into()));
    };
    let mut end = 0u64;
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let e = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| corrupt(format!("tensor {name} has no data_offsets")))?;
        end = end.max(e);
    }
    Ok((map, end))
}

fn metadata_of(map: &serde_json::Map<String, serde_json::Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(serde_json::Value::Object(m)) = map.get("__metadata__") {
        for (k, v) in m {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(k.clone(), s);
        }
    }
    out
}

/// Only the metadata, reading just the header (cheap on large files).
pub fn read_metadata(path: &Path) -> CResult<BTreeMap<String, String>> {
    use std::io::Read;
    let io = |e: std::io::Error| CheckpointError::Io { path: path.into(), error: e };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut head = vec![0u8; len.min(9) as usize];
    f.read_exact(&mut head).map_err(io)?;
    let n = check_prefix(path, &head, len)?;
    let mut header = vec![0u8; n as usize];
    header[0] = b'{';
    f.read_exact(&mut header[1..]).map_err(io)?;
    let (map, end) = parse_header(path, &header)?;
    if 8 + n + end > len {
        return Err(CheckpointError::Truncated { path: path.into(), expected: 8 + n + end, found: len });
    }
    Ok(metadata_of(&map))
}

/// The architecture stored in a checkpoint's metadata (`Ok(None)` when it has none).
pub fn read_config(path: &Path) -> CResult<Option<VitConfig>> {
    let meta = read_metadata(path)?;
    config_from_metadata(&meta).map_err(|(key, reason)| CheckpointError::Metadata { path: path.into(), key, reason })
}

/// A whole file's bytes, or the error naming it.
fn read_file(path: &Path) -> CResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| CheckpointError::Io { path: path.into(), error: e })
}

/// The one safetensors reader of sop: `bytes` (the whole file at `path`) checked once —
/// header length, JSON header, truncation, bytes after the last tensor, and the crate's own
/// validation (offsets contiguous, sizes matching dtype × shape) — and returned as the
/// crate's view with the string metadata. Checkpoints and objective files both read here.
pub fn parse<'a>(path: &Path, bytes: &'a [u8]) -> CResult<(SafeTensors<'a>, BTreeMap<String, String>)> {
    let len = bytes.len() as u64;
    let n = check_prefix(path, bytes, len)?;
    let (map, end) = parse_header(path, &bytes[8..(8 + n) as usize])?;
    let expected = 8 + n + end;
    if len < expected {
        return Err(CheckpointError::Truncated { path: path.into(), expected, found: len });
    }
    if len > expected {
        return Err(CheckpointError::Corrupt {
            path: path.into(),
            reason: format!("{} bytes after the last tensor's data", len - expected),
        });
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: e.to_string() })?;
    Ok((st, metadata_of(&map)))
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m · 2^-24, exact in f32.
            let v = m as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Values of one tensor as f32, or the dtype error.
fn to_f32(path: &Path, name: &str, dtype: Dtype, data: &[u8]) -> CResult<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        Dtype::BF16 => {
            data.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect()
        }
        other => {
            return Err(CheckpointError::Dtype { path: path.into(), tensor: name.into(), dtype: format!("{other:?}") })
        }
    })
}

/// Every tensor in the file as f32, with no check against a parameter list (fixtures,
/// embeddings, inspection).
pub fn read(path: &Path) -> CResult<Checkpoint> {
    let bytes = read_file(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    let mut tensors = TensorMap::new();
    for (name, view) in st.iter() {
        let data = to_f32(path, name, view.dtype(), view.data())?;
        tensors.insert(name.to_string(), HostTensor { shape: view.shape().to_vec(), data });
    }
    Ok(Checkpoint { tensors, metadata, defaulted: vec![] })
}

/// Loads exactly the parameters in `specs`: every one must be present with its shape and a
/// readable dtype, and the file must hold nothing else.
pub fn load(path: &Path, specs: &[ParamSpec]) -> CResult<Checkpoint> {
    let bytes = read_file(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    let names: BTreeMap<String, String> = st.names().into_iter().map(|n| (n.to_string(), n.to_string())).collect();
    let tensors = take(path, &st, &names, specs, &BTreeSet::new())?;
    Ok(Checkpoint { tensors, metadata, defaulted: vec![] })
}

/// Loads only the `backbone.*` parameters of `specs`, for callers that need no head (`sop
/// embed`, k-NN). Accepted files:
/// - sop checkpoints and others with `backbone.*` names: every other tensor (the head, a
///   teacher's extras outside `backbone.`) is ignored;
/// - files with no `backbone.` name at all, such as a timm ViT state dict: `backbone.` is
///   prefixed to every name, and timm's classifier (`head.*`) is ignored.
///
/// `backbone.masked_embed` may be absent (timm has none; only the masked student uses it):
/// it is then zero, its initial value, and listed in `defaulted`. Any other unexpected
/// `backbone.*` tensor is refused, since it means a different architecture.
pub fn load_backbone(path: &Path, specs: &[ParamSpec]) -> CResult<Checkpoint> {
    let bytes = read_file(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    let file_names = st.names();
    let prefixed = !file_names.iter().any(|n| n.starts_with("backbone."));
    // Canonical name -> name in the file.
    let names: BTreeMap<String, String> = file_names
        .iter()
        .filter_map(|&n| {
            if prefixed {
                (!n.starts_with("head.")).then(|| (format!("backbone.{n}"), n.to_string()))
            } else {
                n.starts_with("backbone.").then(|| (n.to_string(), n.to_string()))
            }
        })
        .collect();
    let wanted: Vec<ParamSpec> = specs.iter().filter(|s| s.name.starts_with("backbone.")).cloned().collect();
    let optional: BTreeSet<String> = ["backbone.masked_embed".to_string()].into();
    let mut tensors = take(path, &st, &names, &wanted, &optional)?;
    let mut defaulted = vec![];
    for s in &wanted {
        if !tensors.contains_key(&s.name) {
            tensors.insert(s.name.clone(), HostTensor { shape: s.shape.clone(), data: vec![0.0; s.numel()] });
            defaulted.push(s.name.clone());
        }
    }
    Ok(Checkpoint { tensors, metadata, defaulted })
}

/// The ViT a weights file holds, read from its tensor names and shapes (with or without the
/// `backbone.` prefix): (depth, dim, patch size, input size), or None when it is no ViT.
pub fn vit_shape(path: &Path) -> Option<(usize, usize, usize, usize)> {
    let ck = read(path).ok()?;
    let get = |n: &str| ck.tensors.get(n).or_else(|| ck.tensors.get(&format!("backbone.{n}")));
    let proj = get("patch_embed.proj.weight")?; // (D, 3, P, P)
    let pos = get("pos_embed")?; // (1, 1 + N, D)
    let (dim, patch) = (*proj.shape.first()?, *proj.shape.get(2)?);
    let grid = ((*pos.shape.get(1)? as f64 - 1.0).max(0.0).sqrt().round()) as usize;
    let block = |n: &str| n.trim_start_matches("backbone.").strip_prefix("blocks.")?.split('.').next()?.parse().ok();
    let depth = ck.tensors.keys().filter_map(|n| block(n)).max().map_or(0, |b: usize| b + 1);
    Some((depth, dim, patch, grid * patch))
}

/// Refuses a tensor holding NaN or ±Inf, naming it and the (row-major) index of the first one.
pub fn check_finite(path: &Path, name: &str, t: &HostTensor) -> CResult<()> {
    let Some(first) = t.data.iter().position(|v| !v.is_finite()) else { return Ok(()) };
    let mut index = vec![0; t.shape.len()];
    let mut rest = first;
    for (i, &d) in t.shape.iter().enumerate().rev() {
        index[i] = rest % d.max(1);
        rest /= d.max(1);
    }
    if t.shape.is_empty() {
        index.push(first);
    }
    let count = t.data.iter().filter(|v| !v.is_finite()).count();
    Err(CheckpointError::NonFinite { path: path.into(), tensor: name.into(), index, value: t.data[first], count })
}

/// Checks the set of names, then every shape and dtype, and only then converts: either all
/// of `specs` comes back or an error does. `names` maps canonical names to names in the file.
fn take(
    path: &Path,
    st: &SafeTensors<'_>,
    names: &BTreeMap<String, String>,
    specs: &[ParamSpec],
    optional: &BTreeSet<String>,
) -> CResult<TensorMap> {
    let expected: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let missing: Vec<String> = specs
        .iter()
        .filter(|s| !names.contains_key(&s.name) && !optional.contains(&s.name))
        .map(|s| s.name.clone())
        .collect();
    let unexpected: Vec<String> = names.keys().filter(|n| !expected.contains(n.as_str())).cloned().collect();
    if !missing.is_empty() {
        return Err(CheckpointError::Missing { path: path.into(), missing, unexpected });
    }
    if !unexpected.is_empty() {
        return Err(CheckpointError::Unexpected { path: path.into(), unexpected });
    }
    let mut views = Vec::new();
    for s in specs {
        let Some(file_name) = names.get(&s.name) else { continue };
        let view =
            st.tensor(file_name).map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: e.to_string() })?;
        if view.shape() != s.shape.as_slice() {
            return Err(CheckpointError::Shape {
                path: path.into(),
                tensor: s.name.clone(),
                expected: s.shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(CheckpointError::Dtype {
                path: path.into(),
                tensor: s.name.clone(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        views.push((s, view));
    }
    let mut out = TensorMap::new();
    for (s, view) in views {
        let t = HostTensor { shape: s.shape.clone(), data: to_f32(path, &s.name, view.dtype(), view.data())? };
        check_finite(path, &s.name, &t)?;
        out.insert(s.name.clone(), t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn metadata_round_trips_the_config() {
        let c = VitConfig {
            dim: 32,
            depth: 2,
            heads: 2,
            patch_size: 4,
            img_size: 16,
            head_hidden: 64,
            head_bottleneck: 16,
            ..VitConfig::vit_tiny()
        };
        let m = metadata_for(&c);
        assert_eq!(m["arch"], "vit_custom");
        let back = config_from_metadata(&m).unwrap().unwrap();
        assert_eq!(back, VitConfig { drop_path: back.drop_path, ..c });
        let only_arch: BTreeMap<String, String> = [("arch".to_string(), "vit_base".to_string())].into();
        assert_eq!(config_from_metadata(&only_arch).unwrap().unwrap(), VitConfig::vit_base());
        assert!(config_from_metadata(&BTreeMap::new()).unwrap().is_none());
        let bad: BTreeMap<String, String> =
            [("arch".into(), "vit_small".into()), ("heads".into(), "seven".into())].into();
        assert_eq!(config_from_metadata(&bad).unwrap_err().0, "heads");
        let custom: BTreeMap<String, String> =
            [("arch".into(), "vit_custom".into()), ("dim".into(), "8".into())].into();
        assert_eq!(config_from_metadata(&custom).unwrap_err().0, "depth");
    }
}
