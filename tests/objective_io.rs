//! The `sop objective` file format: a save/load round trip, and every inconsistency the
//! loader must refuse with an error that names the file and the tensor or metadata key.

use std::collections::HashMap;
use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sop::sop::objective_io::{write_objective_outputs, BankInputs, ObjectiveInputs, ObjectiveOutputs, WIDTH};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sop-objective-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn bank(rng: &mut impl Rng, n: usize, tasks: usize, anchors: usize, experts: usize) -> BankInputs {
    let mut perm = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..tasks {
        let mut p: Vec<i32> = (0..n as i32).collect();
        p.shuffle(rng);
        perm.extend(p);
        let mut k: Vec<i32> = (0..anchors as i32).collect();
        k.shuffle(rng);
        keep.extend(&k[..anchors / 2]);
    }
    let bank = (0..n * WIDTH).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    BankInputs { bank, perm, keep, anchors, experts, tasks }
}

/// A valid file: B = 2, L = 1, T = 3; [CLS] bank 12 rows, P 4, E 3, 2 tasks; patch bank
/// 10 rows, P 4, E 1, 1 task.
fn valid() -> ObjectiveInputs {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (b, t, l) = (2, 3, 1);
    let mut f = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
    let student_cls = f((2 + l) * b * WIDTH);
    let teacher_cls = f(2 * b * WIDTH);
    let student_patch = f(2 * b * t * WIDTH);
    let teacher_patch = f(2 * b * t * WIDTH);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    ObjectiveInputs {
        batch: b,
        tokens: t,
        global_views: 2,
        local_views: l,
        student_cls,
        teacher_cls,
        student_patch,
        teacher_patch,
        masks: vec![0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1, 0],
        cls: bank(&mut rng, 12, 2, 4, 3),
        patch: bank(&mut rng, 10, 1, 4, 1),
        smoothing: 0.1,
        student_temp: 0.1,
        teacher_temp: 0.04,
    }
}

/// A file's tensors and metadata as plain data, to be broken on purpose and written back.
struct Raw {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
}

impl Raw {
    fn of(inputs: &ObjectiveInputs, name: &str) -> Raw {
        let path = tmp(&format!("{name}.valid.safetensors"));
        inputs.save(&path).unwrap();
        let buf = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&buf).unwrap();
        let st = SafeTensors::deserialize(&buf).unwrap();
        let tensors =
            st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
        Raw { tensors, meta: meta.metadata().clone().unwrap() }
    }

    fn get(&mut self, name: &str) -> &mut (String, Dtype, Vec<usize>, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    fn write(&self, name: &str) -> PathBuf {
        let path = tmp(&format!("{name}.safetensors"));
        let views: Vec<(String, TensorView)> =
            self.tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        std::fs::write(&path, safetensors::serialize(views, Some(self.meta.clone())).unwrap()).unwrap();
        path
    }
}

fn i32s_of(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn bytes_of(x: &[i32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Breaks a valid file with `f`, loads it, and checks that the error names the file and
/// contains every one of `words`.
fn refused(name: &str, words: &[&str], f: impl FnOnce(&mut Raw)) {
    let mut raw = Raw::of(&valid(), name);
    f(&mut raw);
    let path = raw.write(name);
    let err = match ObjectiveInputs::load(&path) {
        Ok(_) => panic!("{name}: a broken file was accepted"),
        Err(e) => e.to_string(),
    };
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains(&path.display().to_string()), "{name}: error does not name the file: {err}");
    for w in words {
        assert!(err.contains(w), "{name}: error lacks {w:?}: {err}");
    }
}

#[test]
fn save_then_load_is_the_identity() {
    let inputs = valid();
    // A directory of its own: other tests write temp files beside theirs concurrently.
    let dir = tmp("roundtrip");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("roundtrip.safetensors");
    inputs.save(&path).unwrap();
    assert_eq!(ObjectiveInputs::load(&path).unwrap(), inputs);
    // No temp file is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn odd_temperatures_and_smoothing_round_trip_exactly() {
    let mut inputs = valid();
    inputs.smoothing = 0.1 + 1e-17 * 3.0;
    inputs.student_temp = 1.0 / 3.0;
    inputs.teacher_temp = 0.04000000000000001;
    let path = tmp("roundtrip-scalars.safetensors");
    inputs.save(&path).unwrap();
    let back = ObjectiveInputs::load(&path).unwrap();
    assert_eq!(
        (back.smoothing, back.student_temp, back.teacher_temp),
        (inputs.smoothing, inputs.student_temp, inputs.teacher_temp)
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn refuses_missing_tensor() {
    refused("missing", &["patch_keep", "missing"], |r| r.tensors.retain(|t| t.0 != "patch_keep"));
}

#[test]
fn refuses_wrong_dtype() {
    refused("dtype", &["cls_perm", "dtype", "F32"], |r| r.get("cls_perm").1 = Dtype::F32);
    refused("dtype-emb", &["student_patch", "dtype"], |r| {
        let t = r.get("student_patch");
        t.1 = Dtype::I32;
    });
}

#[test]
fn refuses_student_rows_that_disagree_with_local_views() {
    refused("locals", &["student_cls", "[6, 256]", "[8, 256]"], |r| {
        r.meta.insert("local_views".into(), "2".into());
    });
}

#[test]
fn refuses_teacher_patch_with_other_tokens() {
    refused("tokens", &["teacher_patch", "[4, 2, 256]"], |r| {
        let t = r.get("teacher_patch");
        t.2 = vec![4, 2, WIDTH];
        t.3.truncate(4 * 2 * WIDTH * 4);
    });
}

#[test]
fn refuses_bad_masks() {
    refused("masks-shape", &["masks", "[4, 3]"], |r| {
        let t = r.get("masks");
        t.2 = vec![3, 4];
    });
    refused("masks-value", &["masks", "element 2 is 2"], |r| r.get("masks").3[2] = 2);
}

#[test]
fn refuses_wrong_width() {
    refused("width", &["cls_bank", "[24, 128]"], |r| {
        r.get("cls_bank").2 = vec![24, 128];
    });
}

#[test]
fn refuses_non_finite_embedding() {
    refused("nan", &["teacher_cls", "element 5 is NaN"], |r| {
        r.get("teacher_cls").3[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
    });
}

#[test]
fn refuses_permutation_with_a_repeated_entry() {
    let inputs = valid();
    let row1 = &inputs.cls.perm[12..24];
    let (v0, v5) = (row1[0], row1[5]);
    let want = format!("repeats entry {v0} (positions 0 and 5)");
    refused("perm-repeat", &["cls_perm", "task 1", &want], |r| {
        let t = r.get("cls_perm");
        let mut p = i32s_of(&t.3);
        assert_ne!(v0, v5);
        p[12 + 5] = v0;
        t.3 = bytes_of(&p);
    });
}

#[test]
fn refuses_permutation_entry_out_of_range() {
    refused("perm-range", &["patch_perm", "position 3 holds 10", "outside 0..10"], |r| {
        let t = r.get("patch_perm");
        let mut p = i32s_of(&t.3);
        p[3] = 10;
        t.3 = bytes_of(&p);
    });
    refused("perm-negative", &["patch_perm", "holds -1"], |r| {
        let t = r.get("patch_perm");
        let mut p = i32s_of(&t.3);
        p[0] = -1;
        t.3 = bytes_of(&p);
    });
}

#[test]
fn refuses_perm_with_wrong_shape() {
    refused("perm-shape", &["cls_perm", "[3, 8]", "[2, 12]"], |r| {
        let t = r.get("cls_perm");
        t.2 = vec![3, 8];
    });
}

#[test]
fn refuses_bad_keep() {
    refused("keep-range", &["cls_keep", "holds 4", "outside 0..4"], |r| {
        let t = r.get("cls_keep");
        let mut k = i32s_of(&t.3);
        k[1] = 4;
        t.3 = bytes_of(&k);
    });
    refused("keep-repeat", &["cls_keep", "task 1", "repeats entry"], |r| {
        let t = r.get("cls_keep");
        let mut k = i32s_of(&t.3);
        k[3] = k[2];
        t.3 = bytes_of(&k);
    });
    refused("keep-shape", &["patch_keep", "[1, 2]"], |r| {
        let t = r.get("patch_keep");
        t.2 = vec![2, 1];
    });
}

#[test]
fn refuses_anchors_and_experts_that_do_not_fit_the_bank() {
    refused("too-many-anchors", &["cls_anchors", "cls_experts", "13 bank rows", "cls_bank"], |r| {
        r.meta.insert("cls_anchors".into(), "8".into());
        r.meta.insert("cls_experts".into(), "6".into());
    });
    refused("too-few-prototypes", &["patch_anchors", "1 prototype"], |r| {
        r.meta.insert("patch_anchors".into(), "1".into());
    });
    refused("anchors-vs-keep", &["cls_keep", "[2, 3]"], |r| {
        r.meta.insert("cls_anchors".into(), "6".into());
    });
    refused("tasks-vs-perm", &["cls_perm", "[3, 12]"], |r| {
        r.meta.insert("cls_tasks".into(), "3".into());
    });
}

#[test]
fn refuses_bad_metadata() {
    refused("meta-missing", &["teacher_temp", "missing"], |r| {
        r.meta.remove("teacher_temp");
    });
    refused("meta-text", &["smoothing", "not a finite number"], |r| {
        r.meta.insert("smoothing".into(), "a tenth".into());
    });
    refused("meta-views", &["global_views", "exactly 2"], |r| {
        r.meta.insert("global_views".into(), "3".into());
    });
    refused("meta-temp", &["student_temp", "positive"], |r| {
        r.meta.insert("student_temp".into(), "0".into());
    });
    refused("meta-int", &["patch_experts", "integer"], |r| {
        r.meta.insert("patch_experts".into(), "1.5".into());
    });
}

#[test]
fn refuses_a_file_that_is_not_safetensors() {
    let path = tmp("garbage.safetensors");
    std::fs::write(&path, b"definitely not a safetensors header").unwrap();
    let err = ObjectiveInputs::load(&path).unwrap_err().to_string();
    assert!(err.contains("not a safetensors file") && err.contains("garbage.safetensors"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = ObjectiveInputs::load(tmp("absent.safetensors")).unwrap_err().to_string();
    assert!(err.contains("cannot read") && err.contains("absent.safetensors"), "{err}");
}

#[test]
fn outputs_round_trip_with_scalar_losses() {
    let inputs = valid();
    let dcls: Vec<f32> = (0..inputs.student_cls.len()).map(|i| i as f32 * 0.5).collect();
    let dpatch: Vec<f32> = (0..inputs.student_patch.len()).map(|i| -(i as f32)).collect();
    let path = tmp("outputs.safetensors");
    write_objective_outputs(&path, &inputs, 1.5, 0.25, 1.75, &dcls, &dpatch).unwrap();
    let buf = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&buf).unwrap();
    for name in ["loss_cls", "loss_mim", "loss"] {
        let t = st.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape()), (Dtype::F32, &[][..]), "{name}");
    }
    assert_eq!(st.tensor("dstudent_patch").unwrap().shape(), &[4, 3, WIDTH]);
    let out = ObjectiveOutputs::load(&path, &inputs).unwrap();
    assert_eq!((out.loss_cls, out.loss_mim, out.loss), (1.5, 0.25, 1.75));
    assert_eq!(out.dstudent_cls, dcls.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert_eq!(out.dstudent_patch, dpatch.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let err = write_objective_outputs(&path, &inputs, 1.0, 1.0, 2.0, &dcls[1..], &dpatch).unwrap_err().to_string();
    assert!(err.contains("dstudent_cls") && err.contains("[6, 256]"), "{err}");
    std::fs::remove_file(&path).unwrap();
}
