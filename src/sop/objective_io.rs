//! The file format of `sop objective --inputs FILE --out FILE`: one safetensors file holds
//! everything the SOP objective reads (embeddings, banks and the step's random draws), so
//! that the objective can be replayed and checked against another implementation
//! (`scripts/sop_objective_torch.py`); a second file holds its losses and gradients.
//!
//! Inputs (letters as in src/lib.rs: B images, L local views, N patches per global view,
//! W = 256 the width of every row):
//! - `student_cls` f32 ((2+L)·B, W): global views first, view-major (row = view·B + image);
//! - `teacher_cls` f32 (2B, W); `student_patch`, `teacher_patch` f32 (2B, N, W);
//! - `masks` u8 (or bool) (2B, N): 1 where the student's patch is masked, else 0;
//! - `cls_bank` f32 (N_C, W), `patch_bank` f32 (N_P, W);
//! - `cls_perm` i32 (cls_tasks, N_C), `patch_perm` i32 (patch_tasks, N_P): one permutation
//!   of the bank rows per task, its first P entries the anchors, the rest the pool in order;
//! - `cls_keep` i32 (cls_tasks, P_C/2), `patch_keep` i32 (patch_tasks, P_P/2), P_C and P_P
//!   the anchors of each bank: per task the indices in 0..P of the kept anchors, distinct,
//!   in the order the prototypes are stacked.
//!   Always present and checked; only read when that bank's experts E > 1.
//! - metadata (strings): `global_views` (must be 2), `local_views`, `cls_anchors`,
//!   `cls_experts`, `cls_tasks`, `patch_anchors`, `patch_experts`, `patch_tasks`, `smoothing`,
//!   `student_temp`, `teacher_temp` (one teacher temperature for both banks, as in the
//!   authors' training loop). Other metadata keys and other tensors are ignored.
//!
//! Outputs: `loss_cls`, `loss_mim`, `loss` as shape-[] (0-dimensional) f32 scalars, and
//! `dstudent_cls`, `dstudent_patch` f32 with the shapes of `student_cls`, `student_patch`.
//! `ObjectiveOutputs::load` also accepts shape-[1] scalars and f64 tensors (the PyTorch
//! script writes f64 so that the reference can be compared at 1e-6).
//!
//! Why one file of about 500 lines: the objective's file format in both directions (inputs
//! read and checked tensor by tensor, outputs written) and its consistency checks, each a
//! short function over the same tensor names.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Result, SopError};

/// W, the width of every embedding and bank row in the file format.
pub const WIDTH: usize = 256;

/// One memory bank and its random draws.
#[derive(Clone, Debug, PartialEq)]
pub struct BankInputs {
    /// (N_b, W).
    pub bank: Vec<f32>,
    /// (tasks, N_b), each row a permutation of 0..N_b.
    pub perm: Vec<i32>,
    /// (tasks, P/2), each row distinct indices in 0..P.
    pub keep: Vec<i32>,
    /// P.
    pub anchors: usize,
    /// E, the anchor included.
    pub experts: usize,
    pub tasks: usize,
}

impl BankInputs {
    /// N_b.
    pub fn rows(&self) -> usize {
        self.bank.len() / WIDTH
    }
    /// P′, the number of prototypes per task: P/2 when E > 1, else P.
    pub fn kept(&self) -> usize {
        if self.experts > 1 {
            self.anchors / 2
        } else {
            self.anchors
        }
    }
}

/// The contents of a `sop objective --inputs` file, checked for consistency.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectiveInputs {
    /// B.
    pub batch: usize,
    /// N, the patches per global view (patch tokens, [CLS] excluded).
    pub tokens: usize,
    /// Always 2.
    pub global_views: usize,
    /// L.
    pub local_views: usize,
    /// ((2+L)·B, W).
    pub student_cls: Vec<f32>,
    /// (2B, W).
    pub teacher_cls: Vec<f32>,
    /// (2B, N, W).
    pub student_patch: Vec<f32>,
    /// (2B, N, W).
    pub teacher_patch: Vec<f32>,
    /// (2B, N), 0 or 1.
    pub masks: Vec<u8>,
    pub cls: BankInputs,
    pub patch: BankInputs,
    pub smoothing: f64,
    pub student_temp: f64,
    pub teacher_temp: f64,
}

/// What one tensor of the file must look like.
struct Want<'a> {
    name: &'a str,
    dtypes: &'a [Dtype],
}

/// Reads a file's tensors and metadata, every error naming the file.
struct Reader<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
    meta: BTreeMap<String, String>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, buf: &'a [u8]) -> Result<Self> {
        let (st, meta) = crate::checkpoint::parse(path, buf)?;
        Ok(Reader { path, st, meta })
    }

    fn fail(&self, msg: impl std::fmt::Display) -> SopError {
        SopError::file(self.path, msg)
    }

    fn tensor(&self, want: Want) -> Result<TensorView<'a>> {
        let t = self.st.tensor(want.name).map_err(|_| self.fail(format!("tensor `{}` is missing", want.name)))?;
        if !want.dtypes.contains(&t.dtype()) {
            return Err(self.fail(format!(
                "tensor `{}` has dtype {:?}, expected {:?}",
                want.name,
                t.dtype(),
                want.dtypes
            )));
        }
        Ok(t)
    }

    fn f32s(&self, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(Want { name, dtypes: &[Dtype::F32] })?;
        self.rank(name, t.shape(), rank)?;
        let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.fail(format!("tensor `{name}`: element {i} is {}", v[i])));
        }
        Ok((t.shape().to_vec(), v))
    }

    fn i32s(&self, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<i32>)> {
        let t = self.tensor(Want { name, dtypes: &[Dtype::I32] })?;
        self.rank(name, t.shape(), rank)?;
        let v = t.data().chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok((t.shape().to_vec(), v))
    }

    fn rank(&self, name: &str, shape: &[usize], rank: usize) -> Result<()> {
        if shape.len() != rank {
            return Err(self.fail(format!("tensor `{name}` has shape {shape:?}, expected {rank} dimensions")));
        }
        Ok(())
    }

    fn expect_shape(&self, name: &str, shape: &[usize], want: &[usize], why: &str) -> Result<()> {
        if shape != want {
            return Err(self.fail(format!("tensor `{name}` has shape {shape:?}, expected {want:?} ({why})")));
        }
        Ok(())
    }

    fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta.get(key).map(|s| s.trim()).ok_or_else(|| self.fail(format!("metadata `{key}` is missing")))
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let s = self.meta_str(key)?;
        s.parse().map_err(|_| self.fail(format!("metadata `{key}` = {s:?} is not a non-negative integer")))
    }

    fn meta_f64(&self, key: &str) -> Result<f64> {
        let s = self.meta_str(key)?;
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.fail(format!("metadata `{key}` = {s:?} is not a finite number"))),
        }
    }
}

impl ObjectiveInputs {
    /// Reads and checks a `sop objective --inputs` file.
    pub fn load(path: impl AsRef<Path>) -> Result<ObjectiveInputs> {
        let path = path.as_ref();
        let buf = std::fs::read(path).map_err(|e| SopError::file(path, format!("cannot read: {e}")))?;
        let r = Reader::new(path, &buf)?;

        let global_views = r.meta_usize("global_views")?;
        if global_views != 2 {
            return Err(r.fail(format!("metadata `global_views` = {global_views}, SOP uses exactly 2 global views")));
        }
        let local_views = r.meta_usize("local_views")?;
        let smoothing = r.meta_f64("smoothing")?;
        if !(0.0..1.0).contains(&smoothing) {
            return Err(r.fail(format!("metadata `smoothing` = {smoothing} is outside [0, 1)")));
        }
        let student_temp = r.meta_f64("student_temp")?;
        let teacher_temp = r.meta_f64("teacher_temp")?;
        for (key, v) in [("student_temp", student_temp), ("teacher_temp", teacher_temp)] {
            if v <= 0.0 {
                return Err(r.fail(format!("metadata `{key}` = {v} must be positive")));
            }
        }

        // teacher_cls fixes B, student_patch fixes N; everything else must agree with them.
        let (tc_shape, teacher_cls) = r.f32s("teacher_cls", 2)?;
        if tc_shape[0] == 0 || tc_shape[0] % global_views != 0 {
            return Err(r.fail(format!("tensor `teacher_cls` has {} rows, expected 2B with B ≥ 1", tc_shape[0])));
        }
        let batch = tc_shape[0] / global_views;
        let g_rows = global_views * batch;
        r.expect_shape("teacher_cls", &tc_shape, &[g_rows, WIDTH], "width 256")?;
        let (sc_shape, student_cls) = r.f32s("student_cls", 2)?;
        let s_rows = (global_views + local_views) * batch;
        r.expect_shape("student_cls", &sc_shape, &[s_rows, WIDTH], "(2 + local_views)·B rows, B from teacher_cls")?;
        let (sp_shape, student_patch) = r.f32s("student_patch", 3)?;
        let tokens = sp_shape[1];
        if tokens == 0 {
            return Err(r.fail("tensor `student_patch` has no tokens"));
        }
        r.expect_shape("student_patch", &sp_shape, &[g_rows, tokens, WIDTH], "(2B, T, 256), B from teacher_cls")?;
        let (tp_shape, teacher_patch) = r.f32s("teacher_patch", 3)?;
        r.expect_shape("teacher_patch", &tp_shape, &[g_rows, tokens, WIDTH], "the shape of student_patch")?;

        let mt = r.tensor(Want { name: "masks", dtypes: &[Dtype::U8, Dtype::BOOL] })?;
        r.expect_shape("masks", mt.shape(), &[g_rows, tokens], "(2B, T) as student_patch")?;
        let masks = mt.data().to_vec();
        if let Some(i) = masks.iter().position(|&m| m > 1) {
            return Err(r.fail(format!("tensor `masks`: element {i} is {}, expected 0 or 1", masks[i])));
        }

        let cls = Self::load_bank(&r, "cls")?;
        let patch = Self::load_bank(&r, "patch")?;
        Ok(ObjectiveInputs {
            batch,
            tokens,
            global_views,
            local_views,
            student_cls,
            teacher_cls,
            student_patch,
            teacher_patch,
            masks,
            cls,
            patch,
            smoothing,
            student_temp,
            teacher_temp,
        })
    }

    fn load_bank(r: &Reader, which: &str) -> Result<BankInputs> {
        let anchors = r.meta_usize(&format!("{which}_anchors"))?;
        let experts = r.meta_usize(&format!("{which}_experts"))?;
        let tasks = r.meta_usize(&format!("{which}_tasks"))?;
        let bank_name = format!("{which}_bank");
        let (b_shape, bank) = r.f32s(&bank_name, 2)?;
        let n = b_shape[0];
        r.expect_shape(&bank_name, &b_shape, &[n, WIDTH], "width 256")?;
        if tasks == 0 {
            return Err(r.fail(format!("metadata `{which}_tasks` must be at least 1")));
        }
        if experts == 0 {
            return Err(r.fail(format!("metadata `{which}_experts` must be at least 1 (the anchor)")));
        }
        let kept = if experts > 1 { anchors / 2 } else { anchors };
        if kept < 2 {
            return Err(r.fail(format!(
                "metadata `{which}_anchors` = {anchors} with `{which}_experts` = {experts} leaves {kept} prototype(s); at least 2 are needed"
            )));
        }
        if anchors + experts - 1 > n {
            return Err(r.fail(format!(
                "`{which}_anchors` = {anchors} and `{which}_experts` = {experts} need at least {} bank rows, `{bank_name}` has {n}",
                anchors + experts - 1
            )));
        }

        let perm_name = format!("{which}_perm");
        let (p_shape, perm) = r.i32s(&perm_name, 2)?;
        r.expect_shape(&perm_name, &p_shape, &[tasks, n], &format!("({which}_tasks, rows of {bank_name})"))?;
        for (t, row) in perm.chunks(n).enumerate() {
            check_distinct(r, &perm_name, t, row, n)?;
        }
        let keep_name = format!("{which}_keep");
        let (k_shape, keep) = r.i32s(&keep_name, 2)?;
        r.expect_shape(&keep_name, &k_shape, &[tasks, anchors / 2], &format!("({which}_tasks, {which}_anchors / 2)"))?;
        if anchors / 2 > 0 {
            for (t, row) in keep.chunks(anchors / 2).enumerate() {
                check_distinct(r, &keep_name, t, row, anchors)?;
            }
        }
        Ok(BankInputs { bank, perm, keep, anchors, experts, tasks })
    }

    /// The metadata strings this file format defines, as `save` writes them.
    fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("global_views", self.global_views.to_string());
        put("local_views", self.local_views.to_string());
        for (which, b) in [("cls", &self.cls), ("patch", &self.patch)] {
            put(&format!("{which}_anchors"), b.anchors.to_string());
            put(&format!("{which}_experts"), b.experts.to_string());
            put(&format!("{which}_tasks"), b.tasks.to_string());
        }
        // Rust prints the shortest string that parses back to the same f64.
        put("smoothing", self.smoothing.to_string());
        put("student_temp", self.student_temp.to_string());
        put("teacher_temp", self.teacher_temp.to_string());
        m
    }

    /// Writes the inputs as a `sop objective --inputs` file (temp file, then rename). The
    /// shapes are derived from the fields, so a malformed struct is written as it is and
    /// refused by `load`: tests use this to build bad files.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (b, t, g, l) = (self.batch, self.tokens, self.global_views, self.local_views);
        let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("student_cls".into(), Dtype::F32, vec![(g + l) * b, WIDTH], f32_bytes(&self.student_cls)),
            ("teacher_cls".into(), Dtype::F32, vec![g * b, WIDTH], f32_bytes(&self.teacher_cls)),
            ("student_patch".into(), Dtype::F32, vec![g * b, t, WIDTH], f32_bytes(&self.student_patch)),
            ("teacher_patch".into(), Dtype::F32, vec![g * b, t, WIDTH], f32_bytes(&self.teacher_patch)),
            ("masks".into(), Dtype::U8, vec![g * b, t], self.masks.clone()),
        ]
        .into_iter()
        .chain([("cls", &self.cls), ("patch", &self.patch)].into_iter().flat_map(|(which, bk)| {
            let n = bk.rows();
            [
                (format!("{which}_bank"), Dtype::F32, vec![n, WIDTH], f32_bytes(&bk.bank)),
                (format!("{which}_perm"), Dtype::I32, vec![bk.tasks, n], i32_bytes(&bk.perm)),
                (format!("{which}_keep"), Dtype::I32, vec![bk.tasks, bk.anchors / 2], i32_bytes(&bk.keep)),
            ]
        }))
        .collect();
        write_tensors(path, &tensors, Some(self.metadata()))
    }

    /// The same inputs in f64 for the CPU reference (`sop_reference::sop_objective`).
    pub fn to_reference(&self) -> sop_reference::sop_objective::SopInputs {
        use sop_reference::sop_objective::{BankDraws, SopInputs};
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let draws = |b: &BankInputs| {
            let n = b.rows();
            let h = b.anchors / 2;
            BankDraws {
                bank: f64s(&b.bank),
                perms: b.perm.chunks(n).map(|r| r.iter().map(|&i| i as usize).collect()).collect(),
                keeps: (0..b.tasks).map(|t| b.keep[t * h..(t + 1) * h].iter().map(|&i| i as usize).collect()).collect(),
                anchors: b.anchors,
                experts: b.experts,
            }
        };
        SopInputs {
            width: WIDTH,
            batch: self.batch,
            tokens: self.tokens,
            global_views: self.global_views,
            local_views: self.local_views,
            student_cls: f64s(&self.student_cls),
            teacher_cls: f64s(&self.teacher_cls),
            student_patch: f64s(&self.student_patch),
            teacher_patch: f64s(&self.teacher_patch),
            masks: self.masks.iter().map(|&m| m != 0).collect(),
            cls: draws(&self.cls),
            patch: draws(&self.patch),
            smoothing: self.smoothing,
            student_temp: self.student_temp,
            teacher_temp: self.teacher_temp,
        }
    }
}

/// Every entry of `row` in 0..bound and no entry twice (a permutation when row.len() == bound).
fn check_distinct(r: &Reader, name: &str, task: usize, row: &[i32], bound: usize) -> Result<()> {
    let mut first_at = vec![usize::MAX; bound];
    for (pos, &v) in row.iter().enumerate() {
        if v < 0 || v as usize >= bound {
            return Err(r.fail(format!("tensor `{name}`: task {task}, position {pos} holds {v}, outside 0..{bound}")));
        }
        let seen = &mut first_at[v as usize];
        if *seen != usize::MAX {
            return Err(r.fail(format!(
                "tensor `{name}`: task {task} repeats entry {v} (positions {} and {pos}); each row must hold distinct indices",
                *seen
            )));
        }
        *seen = pos;
    }
    Ok(())
}

/// The result of `sop objective`: losses and gradients, read back as f64.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectiveOutputs {
    pub loss_cls: f64,
    pub loss_mim: f64,
    pub loss: f64,
    /// ((2+L)·B, W).
    pub dstudent_cls: Vec<f64>,
    /// (2B, N, W).
    pub dstudent_patch: Vec<f64>,
}

impl ObjectiveOutputs {
    /// Reads an outputs file (f32 or f64; scalars of shape [] or [1]) and checks the
    /// gradients' shapes against the inputs they were computed from.
    pub fn load(path: impl AsRef<Path>, inputs: &ObjectiveInputs) -> Result<ObjectiveOutputs> {
        let path = path.as_ref();
        let buf = std::fs::read(path).map_err(|e| SopError::file(path, format!("cannot read: {e}")))?;
        let r = Reader::new(path, &buf)?;
        let floats = |name: &str, want: &[usize]| -> Result<Vec<f64>> {
            let t = r.tensor(Want { name, dtypes: &[Dtype::F32, Dtype::F64] })?;
            let scalar_ok = want.is_empty() && t.shape() == [1];
            if t.shape() != want && !scalar_ok {
                return Err(r.fail(format!("tensor `{name}` has shape {:?}, expected {want:?}", t.shape())));
            }
            Ok(match t.dtype() {
                Dtype::F64 => {
                    t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()
                }
                _ => t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
            })
        };
        let (b, t, g, l) = (inputs.batch, inputs.tokens, inputs.global_views, inputs.local_views);
        Ok(ObjectiveOutputs {
            loss_cls: floats("loss_cls", &[])?[0],
            loss_mim: floats("loss_mim", &[])?[0],
            loss: floats("loss", &[])?[0],
            dstudent_cls: floats("dstudent_cls", &[(g + l) * b, WIDTH])?,
            dstudent_patch: floats("dstudent_patch", &[g * b, t, WIDTH])?,
        })
    }
}

/// Writes the result of the objective on `inputs`: `loss_cls`, `loss_mim`, `loss` as f32
/// scalars of shape [] and `dstudent_cls`, `dstudent_patch` as f32 with the shapes of
/// `student_cls` and `student_patch` (temp file, then rename).
pub fn write_objective_outputs(
    path: impl AsRef<Path>,
    inputs: &ObjectiveInputs,
    loss_cls: f32,
    loss_mim: f32,
    loss: f32,
    dstudent_cls: &[f32],
    dstudent_patch: &[f32],
) -> Result<()> {
    let path = path.as_ref();
    let (b, t, g, l) = (inputs.batch, inputs.tokens, inputs.global_views, inputs.local_views);
    let cls_shape = vec![(g + l) * b, WIDTH];
    let patch_shape = vec![g * b, t, WIDTH];
    for (name, x, shape) in
        [("dstudent_cls", dstudent_cls, &cls_shape), ("dstudent_patch", dstudent_patch, &patch_shape)]
    {
        if x.len() != shape.iter().product::<usize>() {
            return Err(SopError::file(path, format!("{name} has {} values, expected shape {shape:?}", x.len())));
        }
    }
    let tensors = vec![
        ("loss_cls".to_string(), Dtype::F32, vec![], f32_bytes(&[loss_cls])),
        ("loss_mim".to_string(), Dtype::F32, vec![], f32_bytes(&[loss_mim])),
        ("loss".to_string(), Dtype::F32, vec![], f32_bytes(&[loss])),
        ("dstudent_cls".to_string(), Dtype::F32, cls_shape, f32_bytes(dstudent_cls)),
        ("dstudent_patch".to_string(), Dtype::F32, patch_shape, f32_bytes(dstudent_patch)),
    ];
    write_tensors(path, &tensors, None)
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i32_bytes(x: &[i32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialises named tensors to `path` through a temporary sibling file and a rename, so a
/// reader never sees a half-written file.
fn write_tensors(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| SopError::file(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| SopError::file(path, e))?;
    let file_name = path.file_name().ok_or_else(|| SopError::file(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| SopError::file(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SopError::file(path, format!("cannot rename {} into place: {e}", tmp.display()))
    })
}
