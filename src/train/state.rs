//! The run folder's checkpoints: `student.safetensors` and `teacher.safetensors` (the model
//! format of `checkpoint`, what `sop embed` and `sop eval` read) and `train_state.safetensors`
//! (AdamW moments, both banks with the image index of every row, the `ibot` objective's
//! centres when it is trained, and in its metadata the
//! step, the bank pointers and the resolved configuration). Every file is written to a
//! temporary name and renamed; each carries the step, and a resume refuses files whose steps
//! disagree (a crash between two renames), so nothing half-written is ever trained on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, tensor_map, HostTensor, TensorMap};
use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::model::config::VitConfig;
use crate::model::vit::Weights;
use crate::ops::attention_variant::AttentionVariant;
use crate::ops::soft_assign_variant::SoftAssignVariant;
use crate::ops::variant;
use crate::sop::bank::Bank;
use crate::train::config::Objective;
use crate::train::optimizer::AdamW;

pub const STUDENT: &str = "student.safetensors";
pub const TEACHER: &str = "teacher.safetensors";
pub const STATE: &str = "train_state.safetensors";

/// Bank sources are stored as f32, exact for dataset indices below 2^24.
const MAX_EXACT_SOURCE: i64 = 1 << 24;

/// Where training stands (the metadata of train_state).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Optimiser steps done.
    pub step: usize,
    pub seed: u64,
    /// Data-parallel ranks the run had (`dist`; 1 in states written before it was recorded).
    pub ranks: usize,
}

fn step_meta(step: usize) -> BTreeMap<String, String> {
    BTreeMap::from([("step".to_string(), step.to_string())])
}

pub fn save_weights(gpu: &Gpu, path: &Path, weights: &Weights, cfg: &VitConfig, step: usize) -> Result<()> {
    let map = tensor_map(weights.download(gpu)?);
    checkpoint::save_model(path, &map, cfg, &step_meta(step))?;
    Ok(())
}

fn host(gpu: &Gpu, t: &Tensor) -> Result<HostTensor> {
    Ok(HostTensor { shape: t.shape.clone(), data: gpu.read_f32(t)? })
}

fn bank_tensors(gpu: &Gpu, map: &mut TensorMap, name: &str, bank: &Bank) -> Result<()> {
    map.insert(name.to_string(), host(gpu, &bank.vectors)?);
    if bank.sources.iter().any(|&s| s >= MAX_EXACT_SOURCE) {
        return Err(SopError::Invalid(format!("{name}: image indices beyond 2^24 cannot be saved exactly")));
    }
    let src = bank.sources.iter().map(|&s| s as f32).collect();
    map.insert(format!("{name}_sources"), HostTensor { shape: vec![bank.len()], data: src });
    Ok(())
}

/// Write all three files for `step`. The metadata records the kernel variants a resume must
/// keep: matmul, attention (GPU runs), and the soft assignment where the objective uses one
/// (`sop`; an `ibot` run never runs it, so nothing is chosen, timed or recorded for it).
#[allow(clippy::too_many_arguments)]
pub fn save_all(
    gpu: &Gpu,
    dir: &Path,
    cfg: &VitConfig,
    objective: Objective,
    config_toml: &str,
    student: &Weights,
    teacher: &Weights,
    opt: &AdamW,
    banks: (&Bank, &Bank),
    objective_state: &[(&str, &Tensor)],
    progress: &Progress,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SopError::file(dir, e))?;
    let mut map = TensorMap::new();
    for (i, name) in student.names.iter().enumerate() {
        map.insert(format!("adamw.m.{name}"), host(gpu, &opt.m[i])?);
        map.insert(format!("adamw.v.{name}"), host(gpu, &opt.v[i])?);
    }
    bank_tensors(gpu, &mut map, "cls_bank", banks.0)?;
    bank_tensors(gpu, &mut map, "patch_bank", banks.1)?;
    for (name, t) in objective_state {
        map.insert(name.to_string(), host(gpu, t)?);
    }
    let mut meta = step_meta(progress.step);
    meta.insert("seed".into(), progress.seed.to_string());
    meta.insert("ranks".into(), progress.ranks.to_string());
    meta.insert("adamw_step".into(), opt.step.to_string());
    meta.insert("cls_bank_ptr".into(), banks.0.ptr.to_string());
    meta.insert("patch_bank_ptr".into(), banks.1.ptr.to_string());
    meta.insert("config".into(), config_toml.to_string());
    meta.insert("matmul".into(), crate::ops::matmul::MatmulVariant::for_adapter(gpu)?.name().to_string());
    if objective == Objective::Sop {
        meta.insert("soft_assign".into(), SoftAssignVariant::for_adapter(gpu)?.name().to_string());
    }
    if let Some(v) = AttentionVariant::recorded(gpu)? {
        meta.insert("attention".into(), v.name().to_string());
    }
    // State first: if we crash before the weights are renamed, the step check refuses it.
    checkpoint::save(&dir.join(STATE), &map, &meta)?;
    save_weights(gpu, &dir.join(STUDENT), student, cfg, progress.step)?;
    save_weights(gpu, &dir.join(TEACHER), teacher, cfg, progress.step)?;
    Ok(())
}

/// Everything `--resume DIR` restores, checked for consistency.
pub struct Resumed {
    pub progress: Progress,
    pub config_toml: String,
    pub student: TensorMap,
    pub teacher: TensorMap,
    pub state: TensorMap,
    pub adamw_step: u32,
    pub bank_ptrs: (usize, usize),
    /// The matmul variant the run used (absent in states written before it was recorded).
    pub matmul: Option<crate::ops::matmul::MatmulVariant>,
    /// The soft-assign variant the run used (absent in `ibot` runs' states and in states
    /// written before it was recorded).
    pub soft_assign: Option<SoftAssignVariant>,
    /// The attention variant a GPU run used (absent on CPU adapters, under `SOP_ATTENTION`,
    /// and in states written before it was recorded).
    pub attention: Option<AttentionVariant>,
}

fn meta_num<T: std::str::FromStr>(path: &Path, meta: &BTreeMap<String, String>, key: &str) -> Result<T> {
    meta.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| SopError::file(path, format!("metadata {key} is missing or not a number")))
}

/// Files a run writes into its folder.
pub const CONFIG: &str = "config.toml";
pub const METRICS: &str = "metrics.jsonl";
/// The curves `sop train` draws at the end of a run (`plot::plot_run`).
pub const PLOT: &str = "plot.png";
pub const RUN_FILES: [&str; 5] = [CONFIG, METRICS, STUDENT, TEACHER, STATE];

/// Why `--resume dir` cannot start: what the folder holds and what to do.
fn not_a_run(dir: &Path) -> SopError {
    let present: Vec<&str> = RUN_FILES.iter().copied().filter(|f| dir.join(f).exists()).collect();
    if !present.is_empty() && !dir.join(STATE).exists() {
        return SopError::file(dir, incomplete_run(&present, true));
    }
    let missing = [STATE, STUDENT, TEACHER].into_iter().find(|f| !dir.join(f).exists()).unwrap_or(STATE);
    SopError::file(dir.join(missing), "missing: --resume needs a run folder written by `sop train`")
}

/// What a folder holding some of a run's files but no train state is, and what to do with it.
pub fn incomplete_run(present: &[&str], resuming: bool) -> String {
    let what = if resuming { "there is nothing to resume" } else { "a new run would overwrite them" };
    format!(
        "holds {} but no {STATE}, so {what} (a run stopped before its first checkpoint, written every \
         `run.checkpoint_every` steps and at the end, leaves only {CONFIG} and {METRICS}): delete {} or \
         pass `--out` another folder to start a new run",
        present.join(", "),
        if present.len() == 1 { "it" } else { "them" },
    )
}

/// The refusal for a new run (or a resumed one moving to `out`) whose folder holds any file
/// the run would write, naming it.
pub fn check_new_run_folder(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(SopError::file(out, "is a file, not a folder: `--out` names the run folder"));
    }
    if out.join(STATE).exists() {
        return Err(SopError::file(
            out,
            "already holds a training run: pass `--resume` with this folder to continue it, or `--out` a new folder",
        ));
    }
    // The run writes plot.png at its end too: a new run never replaces one it did not draw.
    let present: Vec<&str> = RUN_FILES.iter().chain([&PLOT]).copied().filter(|f| out.join(f).exists()).collect();
    if present.is_empty() {
        Ok(())
    } else {
        Err(SopError::file(out, incomplete_run(&present, false)))
    }
}

/// Writes `to`'s metrics.jsonl from `from`'s, keeping only lines up to `step` (the
/// checkpoint resumed from): a run that went on after its last checkpoint logged steps that
/// the resumed run repeats, and no step number may appear twice. A line that does not parse
/// (cut short by a crash) is dropped.
pub fn metrics_up_to(from: &Path, to: &Path, step: usize) -> Result<()> {
    let src = from.join(METRICS);
    let text = match std::fs::read_to_string(&src) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(SopError::file(src, e)),
    };
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let keep = serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| v.get("step").and_then(|s| s.as_u64()).is_none_or(|s| s as usize <= step));
        if keep {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        eprintln!("{}: {dropped} lines after the checkpoint of step {step} dropped", src.display());
    }
    checkpoint::write_atomic(&to.join(METRICS), kept.as_bytes())?;
    Ok(())
}

/// The configuration saved in a run folder's train state (read from the header only), so
/// a resumed run knows its architecture before its weights are loaded.
pub fn saved_config(dir: &Path) -> Result<crate::train::config::TrainConfig> {
    let path = dir.join(STATE);
    if !path.exists() {
        return Err(not_a_run(dir));
    }
    let meta = checkpoint::read_metadata(&path)?;
    let text = meta.get("config").ok_or_else(|| SopError::file(&path, "metadata config is missing"))?;
    toml::from_str(text).map_err(|e| SopError::file(&path, format!("saved config does not parse: {e}")))
}

pub fn load_all(dir: &Path, specs: &[crate::model::params::ParamSpec]) -> Result<Resumed> {
    let paths: Vec<PathBuf> = [STATE, STUDENT, TEACHER].iter().map(|f| dir.join(f)).collect();
    if paths.iter().any(|p| !p.exists()) {
        return Err(not_a_run(dir));
    }
    let state = checkpoint::read(&paths[0])?;
    for (name, t) in &state.tensors {
        checkpoint::check_finite(&paths[0], name, t)?;
    }
    let student = checkpoint::load(&paths[1], specs)?;
    let teacher = checkpoint::load(&paths[2], specs)?;
    let step: usize = meta_num(&paths[0], &state.metadata, "step")?;
    for (p, c) in [(&paths[1], &student), (&paths[2], &teacher)] {
        let s: usize = meta_num(p, &c.metadata, "step")?;
        if s != step {
            return Err(SopError::file(
                p,
                format!("is from step {s} but train_state.safetensors is from step {step} (an interrupted save?)"),
            ));
        }
    }
    let config_toml =
        state.metadata.get("config").cloned().ok_or_else(|| SopError::file(&paths[0], "metadata config is missing"))?;
    Ok(Resumed {
        progress: Progress {
            step,
            seed: meta_num(&paths[0], &state.metadata, "seed")?,
            ranks: match state.metadata.get("ranks") {
                None => 1,
                Some(_) => match meta_num(&paths[0], &state.metadata, "ranks")? {
                    0 => return Err(SopError::file(&paths[0], "metadata ranks is 0 (a run has at least one rank)")),
                    r => r,
                },
            },
        },
        config_toml,
        adamw_step: meta_num(&paths[0], &state.metadata, "adamw_step")?,
        bank_ptrs: (
            meta_num(&paths[0], &state.metadata, "cls_bank_ptr")?,
            meta_num(&paths[0], &state.metadata, "patch_bank_ptr")?,
        ),
        matmul: variant::recorded(&paths[0], &state.metadata)?,
        soft_assign: variant::recorded(&paths[0], &state.metadata)?,
        attention: variant::recorded(&paths[0], &state.metadata)?,
        student: student.tensors,
        teacher: teacher.tensors,
        state: state.tensors,
    })
}

/// A tensor of the train state, checked against the shape it must have.
pub fn state_tensor<'a>(dir: &Path, map: &'a TensorMap, name: &str, shape: &[usize]) -> Result<&'a HostTensor> {
    let t = map.get(name).ok_or_else(|| SopError::file(dir.join(STATE), format!("missing tensor {name}")))?;
    if t.shape != shape {
        return Err(SopError::file(
            dir.join(STATE),
            format!("tensor {name} has shape {:?}, expected {shape:?}", t.shape),
        ));
    }
    Ok(t)
}

/// Restore a bank from the train state.
pub fn restore_bank(
    gpu: &Gpu,
    dir: &Path,
    map: &TensorMap,
    name: &str,
    n: usize,
    width: usize,
    ptr: usize,
) -> Result<Bank> {
    let v = state_tensor(dir, map, name, &[n, width])?;
    let s = state_tensor(dir, map, &format!("{name}_sources"), &[n])?;
    Bank::from_parts(gpu, n, width, &v.data, ptr, s.data.iter().map(|&x| x as i64).collect())
}
