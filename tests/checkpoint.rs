//! Checkpoint files: a bit-exact round trip, and each way a file can be wrong giving its own
//! error that names the file and the tensor, with nothing overwritten: the file on disk
//! stays as it was, the caller's parameters stay as they were, and a failed save leaves the
//! previous checkpoint and no temporary file behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sop::checkpoint::{self, CheckpointError, HostTensor, TensorMap};
use sop::model::{backbone_specs, init_params, param_specs, VitConfig};

fn cfg() -> VitConfig {
    VitConfig::micro()
}

/// A fresh empty directory per test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sop-ckpt-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parameters with awkward finite bit patterns mixed in: -0, a subnormal, ±f32::MAX (a
/// loadable checkpoint holds no NaN or Inf: `non_finite_values_are_saved_exactly_but_not_loaded`).
fn params(seed: u64) -> TensorMap {
    let mut m = checkpoint::tensor_map(init_params(&cfg(), seed));
    let t = m.get_mut("backbone.blocks.0.attn.qkv.weight").unwrap();
    t.data[..5].copy_from_slice(&[-0.0, f32::from_bits(1), f32::MAX, -f32::MAX, f32::MIN_POSITIVE]);
    m
}

#[test]
fn non_finite_values_are_saved_exactly_but_not_loaded() {
    let dir = TempDir::new("nonfinite");
    let path = dir.join("model.safetensors");
    let mut p = params(3);
    let qkv = "backbone.blocks.0.attn.qkv.weight";
    let width = p[qkv].shape[1];
    p.get_mut(qkv).unwrap().data[width + 2..width + 5].copy_from_slice(&[
        f32::from_bits(0x7fc0_1234),
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    checkpoint::save_model(&path, &p, &cfg(), &BTreeMap::new()).unwrap();
    // The file holds every bit (read() does not judge the values)...
    assert!(same_bits(&checkpoint::read(&path).unwrap().tensors, &p), "tensors changed in the round trip");
    // ...but loading it as weights is refused, naming the tensor and the first bad index.
    match load_fails(&path) {
        CheckpointError::NonFinite { tensor, index, count, value, .. } => {
            assert_eq!((tensor.as_str(), index, count), (qkv, vec![1, 2], 3));
            assert!(value.is_nan());
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert!(matches!(checkpoint::load_backbone(&path, &param_specs(&cfg())), Err(CheckpointError::NonFinite { .. })));
}

/// Writes a file through the safetensors crate directly (names, dtypes and shapes the
/// engine itself would never write).
fn write_raw(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, shape, bytes)| {
            (n.to_string(), safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors of `m` as raw (name, shape, little-endian f32 bytes) entries.
fn raw_from(m: &TensorMap) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    m.iter().map(|(n, t)| (n.clone(), t.shape.clone(), f32_bytes(&t.data))).collect()
}

fn write_entries(path: &Path, entries: &[(String, Vec<usize>, Vec<u8>)]) {
    let list: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        entries.iter().map(|(n, s, b)| (n.as_str(), safetensors::Dtype::F32, s.clone(), b.clone())).collect();
    write_raw(path, &list);
}

/// Tries to load `path` into `current` the way the trainer does (replace only on success)
/// and checks that the failure left both the caller's parameters and the file untouched.
fn load_fails(path: &Path) -> CheckpointError {
    let mut current = params(1);
    let before = current.clone();
    let bytes = std::fs::read(path).unwrap();
    let err = match checkpoint::load(path, &param_specs(&cfg())) {
        Ok(ck) => {
            current = ck.tensors;
            panic!("loading {} should fail but gave {} tensors", path.display(), current.len())
        }
        Err(e) => e,
    };
    assert!(same_bits(&current, &before), "the caller's parameters changed");
    assert_eq!(std::fs::read(path).unwrap(), bytes, "the file changed");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
    err
}

fn same_bits(a: &TensorMap, b: &TensorMap) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ta), (nb, tb))| {
            na == nb
                && ta.shape == tb.shape
                && ta.data.iter().map(|v| v.to_bits()).eq(tb.data.iter().map(|v| v.to_bits()))
        })
}

#[test]
fn round_trip_is_bit_exact_and_keeps_the_architecture() {
    let dir = TempDir::new("roundtrip");
    let path = dir.join("model.safetensors");
    let p = params(3);
    let extra: BTreeMap<String, String> = [("epoch".to_string(), "7".to_string())].into();
    checkpoint::save_model(&path, &p, &cfg(), &extra).unwrap();
    let ck = checkpoint::load(&path, &param_specs(&cfg())).unwrap();
    assert!(same_bits(&ck.tensors, &p), "tensors changed in the round trip");
    assert_eq!(ck.metadata["epoch"], "7");
    assert_eq!(ck.metadata["format"], "pt");
    let back = checkpoint::read_config(&path).unwrap().unwrap();
    assert_eq!(back, VitConfig { drop_path: back.drop_path, ..cfg() });
    assert_eq!(ck.config(&path).unwrap(), Some(back));
    // Saving again over the file replaces it and leaves no temporary file.
    let p2 = params(4);
    checkpoint::save_model(&path, &p2, &cfg(), &BTreeMap::new()).unwrap();
    assert!(same_bits(&checkpoint::load(&path, &param_specs(&cfg())).unwrap().tensors, &p2));
    assert_eq!(dir.entries(), vec!["model.safetensors"]);
}

#[test]
fn truncated_file_is_refused_as_truncated() {
    let dir = TempDir::new("truncated");
    let good = dir.join("good.safetensors");
    checkpoint::save_model(&good, &params(3), &cfg(), &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Cut inside the data, just before the end, and inside the header.
    for cut in [bytes.len() - 1, (header_end + bytes.len()) / 2, header_end, header_end / 2, 9] {
        let path = dir.join("cut.safetensors");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        match load_fails(&path) {
            CheckpointError::Truncated { expected, found, .. } => {
                assert_eq!(found, cut as u64);
                assert!(expected > found);
            }
            e => panic!("cut at {cut}: expected Truncated, got {e}"),
        }
    }
    // Fewer than 8 bytes cannot even hold the header length.
    let path = dir.join("tiny.safetensors");
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert!(matches!(load_fails(&path), CheckpointError::NotSafetensors { .. }));
    // Bytes after the last tensor are refused too.
    let path = dir.join("long.safetensors");
    std::fs::write(&path, [&bytes[..], &[0u8; 3]].concat()).unwrap();
    let e = load_fails(&path);
    assert!(matches!(e, CheckpointError::Corrupt { .. }) && e.to_string().contains("3 bytes after"), "{e}");
    // The metadata reader refuses a truncated file as well.
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    assert!(matches!(checkpoint::read_metadata(&path), Err(CheckpointError::Truncated { .. })));
}

#[test]
fn renamed_tensor_is_named_as_missing_with_the_extra_listed() {
    let dir = TempDir::new("renamed");
    let path = dir.join("renamed.safetensors");
    let mut entries = raw_from(&params(3));
    for e in entries.iter_mut() {
        if e.0 == "backbone.blocks.1.mlp.fc1.weight" {
            e.0 = "backbone.blocks.1.mlp.fc_1.weight".into();
        }
    }
    write_entries(&path, &entries);
    match load_fails(&path) {
        CheckpointError::Missing { missing, unexpected, .. } => {
            assert_eq!(missing, vec!["backbone.blocks.1.mlp.fc1.weight"]);
            assert_eq!(unexpected, vec!["backbone.blocks.1.mlp.fc_1.weight"]);
        }
        e => panic!("expected Missing, got {e}"),
    }
    let msg = checkpoint::load(&path, &param_specs(&cfg())).unwrap_err().to_string();
    assert!(msg.contains("missing tensor backbone.blocks.1.mlp.fc1.weight") && msg.contains("fc_1.weight"), "{msg}");

    // An extra tensor alone is refused, naming it.
    let mut entries = raw_from(&params(3));
    entries.push(("backbone.blocks.2.norm1.weight".into(), vec![8], f32_bytes(&[1.0; 8])));
    write_entries(&path, &entries);
    match load_fails(&path) {
        CheckpointError::Unexpected { unexpected, .. } => {
            assert_eq!(unexpected, vec!["backbone.blocks.2.norm1.weight"])
        }
        e => panic!("expected Unexpected, got {e}"),
    }
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = TempDir::new("shape");
    let path = dir.join("shape.safetensors");
    let mut entries = raw_from(&params(3));
    for e in entries.iter_mut() {
        if e.0 == "backbone.pos_embed" {
            e.1 = vec![1, e.1[1] * e.1[2]]; // same bytes, flattened
        }
    }
    write_entries(&path, &entries);
    match load_fails(&path) {
        CheckpointError::Shape { tensor, expected, found, .. } => {
            assert_eq!(tensor, "backbone.pos_embed");
            assert_eq!(expected, vec![1, 5, 8]);
            assert_eq!(found, vec![1, 40]);
        }
        e => panic!("expected Shape, got {e}"),
    }
    let msg = checkpoint::load(&path, &param_specs(&cfg())).unwrap_err().to_string();
    assert!(msg.contains("backbone.pos_embed has shape [1, 40], expected [1, 5, 8]"), "{msg}");
}

#[test]
fn not_safetensors_is_refused_as_such() {
    let dir = TempDir::new("notst");
    for (name, bytes) in [
        ("text.safetensors", b"this is a text file, not tensors\n".to_vec()),
        ("json.safetensors", br#"{"backbone.cls_token": [1, 2, 3]}"#.to_vec()),
        ("png.safetensors", [&[0x89u8, b'P', b'N', b'G', 13, 10, 26, 10][..], &[0u8; 64]].concat()),
        ("empty.safetensors", vec![]),
        // A plausible header length followed by something other than a JSON object.
        ("zip.safetensors", [&16u64.to_le_bytes()[..], b"PK\x03\x04 not json!"].concat()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = load_fails(&path);
        assert!(matches!(e, CheckpointError::NotSafetensors { .. }), "{name}: expected NotSafetensors, got {e}");
        assert!(e.to_string().contains("not a safetensors file"), "{e}");
    }
    // A safetensors-looking header that is not valid JSON is corrupt, not "not safetensors".
    let path = dir.join("badjson.safetensors");
    std::fs::write(&path, [&8u64.to_le_bytes()[..], b"{oops!!}"].concat()).unwrap();
    assert!(matches!(load_fails(&path), CheckpointError::Corrupt { .. }));
    // A missing file is an I/O error naming it.
    let e = checkpoint::load(&dir.join("absent.safetensors"), &param_specs(&cfg())).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }) && e.to_string().contains("absent.safetensors"), "{e}");
}

#[test]
fn dtypes_f16_bf16_widened_others_refused() {
    let dir = TempDir::new("dtypes");
    let path = dir.join("half.safetensors");
    let p = params(3);
    // Every tensor as BF16 (the top half of each f32), except one as F16.
    let entries: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> = p
        .iter()
        .map(|(n, t)| {
            if n == "backbone.cls_token" {
                (
                    n.as_str(),
                    safetensors::Dtype::F16,
                    t.shape.clone(),
                    [0x3c00u16, 0xc000, 0x0001, 0x8000, 0x7bff, 0x3555, 0, 0]
                        .iter()
                        .flat_map(|h| h.to_le_bytes())
                        .collect(),
                )
            } else {
                (
                    n.as_str(),
                    safetensors::Dtype::BF16,
                    t.shape.clone(),
                    t.data.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
                )
            }
        })
        .collect();
    write_raw(&path, &entries);
    let ck = checkpoint::load(&path, &param_specs(&cfg())).unwrap();
    assert_eq!(
        ck.tensors["backbone.cls_token"].data,
        vec![1.0, -2.0, 2f32.powi(-24), -0.0, 65504.0, 0.333_251_95, 0.0, 0.0]
    );
    for (n, t) in &p {
        if n != "backbone.cls_token" {
            for (a, b) in ck.tensors[n].data.iter().zip(&t.data) {
                assert_eq!(a.to_bits(), b.to_bits() & 0xffff_0000, "{n}");
            }
        }
    }
    // F64 is refused by name rather than rounded.
    let entries = raw_from(&p);
    let f64_entries: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|(n, s, b)| {
            if n == "head.mlp.2.bias" {
                let vals: Vec<u8> = b
                    .chunks(4)
                    .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes())
                    .collect();
                (n.as_str(), safetensors::Dtype::F64, s.clone(), vals)
            } else {
                (n.as_str(), safetensors::Dtype::F32, s.clone(), b.clone())
            }
        })
        .collect();
    let path = dir.join("f64.safetensors");
    write_raw(&path, &f64_entries);
    match load_fails(&path) {
        CheckpointError::Dtype { tensor, dtype, .. } => {
            assert_eq!(tensor, "head.mlp.2.bias");
            assert_eq!(dtype, "F64");
        }
        e => panic!("expected Dtype, got {e}"),
    }
}

#[test]
fn failed_save_leaves_the_old_checkpoint_and_no_temporary_file() {
    let dir = TempDir::new("failsave");
    let path = dir.join("model.safetensors");
    checkpoint::save_model(&path, &params(3), &cfg(), &BTreeMap::new()).unwrap();
    let before = std::fs::read(&path).unwrap();

    // A tensor whose data does not fill its shape: refused before anything is written.
    let mut bad = params(4);
    bad.insert("head.mlp.0.bias".into(), HostTensor { shape: vec![16], data: vec![0.0; 15] });
    let e = checkpoint::save_model(&path, &bad, &cfg(), &BTreeMap::new()).unwrap_err();
    assert!(matches!(e, CheckpointError::BadTensor { ref tensor, .. } if tensor == "head.mlp.0.bias"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // The rename itself fails (the target is a non-empty directory): the temporary file is
    // removed and the directory untouched.
    let blocked = dir.join("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let e = checkpoint::save_model(&blocked, &params(4), &cfg(), &BTreeMap::new()).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }), "{e}");
    assert_eq!(std::fs::read(blocked.join("keep")).unwrap(), b"x");
    assert_eq!(dir.entries(), vec!["blocked.safetensors", "model.safetensors"]);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn backbone_only_load_accepts_prefixless_timm_names() {
    let dir = TempDir::new("backbone");
    let p = params(3);
    // A timm-style state dict: no `backbone.` prefix, no mask token, a classifier head.
    let mut entries: Vec<(String, Vec<usize>, Vec<u8>)> = raw_from(&p)
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("backbone.") && n != "backbone.masked_embed")
        .map(|(n, s, b)| (n["backbone.".len()..].to_string(), s, b))
        .collect();
    entries.push(("head.weight".into(), vec![10, 8], f32_bytes(&[0.5; 80])));
    entries.push(("head.bias".into(), vec![10], f32_bytes(&[0.5; 10])));
    let path = dir.join("timm.safetensors");
    write_entries(&path, &entries);
    let ck = checkpoint::load_backbone(&path, &param_specs(&cfg())).unwrap();
    assert_eq!(ck.defaulted, vec!["backbone.masked_embed"]);
    assert_eq!(ck.tensors.len(), backbone_specs(&cfg()).len());
    for (n, t) in &ck.tensors {
        if n != "backbone.masked_embed" {
            assert!(t.data.iter().map(|v| v.to_bits()).eq(p[n].data.iter().map(|v| v.to_bits())), "{n}");
        }
    }
    // A backbone of another depth is refused, listing the extra block.
    let shallow = VitConfig { depth: 1, ..cfg() };
    match checkpoint::load_backbone(&path, &backbone_specs(&shallow)) {
        Err(CheckpointError::Unexpected { unexpected, .. }) => {
            assert!(unexpected.iter().all(|n| n.starts_with("backbone.blocks.1.")) && unexpected.len() == 12)
        }
        other => panic!("expected Unexpected, got {other:?}"),
    }
}

/// A damaged run file reaches the caller as the structured checkpoint error (which file,
/// what was expected), not as a flattened string.
#[test]
fn run_state_errors_keep_their_structure() {
    use sop::train::state;
    let dir = TempDir::new("structured");
    let good = dir.join("good.safetensors");
    checkpoint::save_model(&good, &params(3), &cfg(), &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    for f in [state::STATE, state::STUDENT, state::TEACHER] {
        std::fs::write(dir.join(f), &bytes[..bytes.len() - 1]).unwrap();
    }
    match state::load_all(&dir.0, &param_specs(&cfg())) {
        Err(sop::SopError::Checkpoint(CheckpointError::Truncated { path, .. })) => {
            assert!(path.ends_with(state::STATE), "{path:?}")
        }
        Err(e) => panic!("expected a truncated-checkpoint error, got {e:?}"),
        Ok(_) => panic!("a truncated run state was accepted"),
    }
}
