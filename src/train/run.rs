//! The run around the steps: which configuration a run uses (fresh or resumed), its folder
//! (checked, announced, given the config), the model, optimiser and banks restored or made
//! from the seed, and the metrics log with one line per step.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::TensorMap;
use crate::error::{Result, SopError};
use crate::gpu::{CounterSnapshot, Gpu};
use crate::model::params::init_specs;
use crate::model::vit::{Vit, Weights};
use crate::ops::variant;
use crate::rng::{stream_seed, STEP_INIT};
use crate::sop::bank::Bank;
use crate::sop::ibot::Centers;

use super::config::{Objective, TrainConfig};
use super::optimizer::AdamW;
use super::state;
use super::step::{Model, StepMetrics};

fn weights_from_map(gpu: &Gpu, names: &[String], map: &TensorMap) -> Result<Weights> {
    let host: Vec<_> = names
        .iter()
        .map(|n| {
            let t = &map[n];
            (n.clone(), t.shape.clone(), t.data.clone())
        })
        .collect();
    Weights::upload(gpu, &host)
}

/// The configuration a run uses: `cfg` for a fresh run; for a resumed one its own saved
/// configuration (its architecture too), extended by `cfg`'s epochs, steps, folder and
/// `no_eval`, with the kernel variants it started with pinned (`ops::variant::pin_or_warn`).
pub(super) fn resolve_run(
    gpu: &Gpu,
    mut cfg: TrainConfig,
    resume: Option<&Path>,
) -> Result<(TrainConfig, Option<(PathBuf, state::Resumed)>)> {
    let resumed = match resume {
        Some(dir) => {
            let saved = state::saved_config(dir)?;
            let r = state::load_all(dir, &saved.param_specs())?;
            let (epochs, steps, no_eval) = (cfg.optim.epochs, cfg.optim.steps, cfg.run.no_eval);
            let out = cfg.run.out.clone();
            cfg = saved;
            cfg.optim.epochs = epochs.max(cfg.optim.epochs);
            cfg.optim.steps = steps.or(cfg.optim.steps);
            cfg.run.out = out;
            cfg.run.no_eval |= no_eval;
            variant::pin_or_warn(gpu, r.matmul);
            variant::pin_or_warn(gpu, r.soft_assign);
            variant::pin_or_warn(gpu, r.attention);
            Some((dir.to_path_buf(), r))
        }
        None => None,
    };
    cfg.validate()?;
    Ok((cfg, resumed))
}

/// The run folder: checked (a run continues in its own folder; any other must be free of
/// run files, so nothing of another run or of the user's is overwritten or appended to),
/// announced, and given the config; a resumed run's metrics are cut back to its checkpoint.
/// Returns the config as saved.
pub(super) fn prepare_folder(
    cfg: &TrainConfig,
    resumed: Option<&(PathBuf, state::Resumed)>,
    in_place: bool,
) -> Result<String> {
    let out = &cfg.run.out;
    if !in_place {
        state::check_new_run_folder(out)?;
    }
    match resumed {
        Some((dir, r)) => eprintln!(
            "data: {}; run folder: {} (resuming {} at step {})",
            cfg.data.path.display(),
            out.display(),
            dir.display(),
            r.progress.step
        ),
        None => eprintln!("data: {}; run folder: {}", cfg.data.path.display(), out.display()),
    }
    std::fs::create_dir_all(out).map_err(|e| SopError::file(out, e))?;
    let config_toml = cfg.to_toml();
    crate::checkpoint::write_atomic(&out.join(state::CONFIG), config_toml.as_bytes())?;
    if let Some((dir, r)) = resumed {
        state::metrics_up_to(dir, out, r.progress.step)?;
    }
    Ok(config_toml)
}

/// Model, optimiser, banks and the first step: restored from a run, or fresh from the seed.
pub(super) fn restore_or_init(
    gpu: &Gpu,
    cfg: &TrainConfig,
    resumed: Option<&(PathBuf, state::Resumed)>,
) -> Result<(Model, AdamW, Bank, Bank, Option<Centers>, usize)> {
    let specs = cfg.param_specs();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let decay: Vec<bool> = specs.iter().map(|s| s.decay).collect();
    let (width, seed) = (cfg.model.head_bottleneck, cfg.run.seed);
    let vit = Vit::new(cfg.model.clone());
    match resumed {
        Some((dir, r)) => {
            let student = weights_from_map(gpu, &names, &r.student)?;
            let teacher = weights_from_map(gpu, &names, &r.teacher)?;
            let mut opt = AdamW::new(gpu, &student, decay)?;
            for (i, (n, t)) in names.iter().zip(&student.tensors).enumerate() {
                for (moment, which) in [(&opt.m[i], "m"), (&opt.v[i], "v")] {
                    let saved = state::state_tensor(dir, &r.state, &format!("adamw.{which}.{n}"), &t.shape)?;
                    gpu.write_f32(moment, &saved.data)?;
                }
            }
            opt.step = r.adamw_step;
            let cb = state::restore_bank(gpu, dir, &r.state, "cls_bank", cfg.sop.cls_bank_size, width, r.bank_ptrs.0)?;
            let pb =
                state::restore_bank(gpu, dir, &r.state, "patch_bank", cfg.sop.patch_bank_size, width, r.bank_ptrs.1)?;
            let centers = match cfg.objective {
                Objective::Sop => None,
                Objective::Ibot => {
                    let k = [cfg.ibot.prototypes];
                    let [c, c2] = Centers::NAMES.map(|n| state::state_tensor(dir, &r.state, n, &k));
                    Some(Centers { cls: gpu.upload_f32(&k, &c?.data)?, patch: gpu.upload_f32(&k, &c2?.data)? })
                }
            };
            Ok((Model { vit, student, teacher }, opt, cb, pb, centers, r.progress.step))
        }
        None => {
            // SOP's tensors are `init_params(&cfg.model, ..)`; `ibot` draws its layer after them.
            let host = init_specs(specs, stream_seed(seed, 0, 0, STEP_INIT));
            let student = Weights::upload(gpu, &host)?;
            let teacher = Weights::upload(gpu, &host)?;
            let opt = AdamW::new(gpu, &student, decay)?;
            let cb = Bank::random(gpu, cfg.sop.cls_bank_size, width, stream_seed(seed, 0, 1, STEP_INIT))?;
            let pb = Bank::random(gpu, cfg.sop.patch_bank_size, width, stream_seed(seed, 0, 2, STEP_INIT))?;
            let centers = match cfg.objective {
                Objective::Sop => None,
                Objective::Ibot => Some(Centers::zeros(gpu, cfg.ibot.prototypes)?),
            };
            Ok((Model { vit, student, teacher }, opt, cb, pb, centers, 0))
        }
    }
}

/// The run's `metrics.jsonl`, appended to one JSON object per line.
/// None on ranks other than 0 of data-parallel training: rank 0 alone writes the metrics.
pub(super) struct MetricsLog {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl MetricsLog {
    pub(super) fn open(out: &Path) -> Result<MetricsLog> {
        let path = out.join(state::METRICS);
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| SopError::file(&path, e))?;
        Ok(MetricsLog { file: Some(file), path })
    }

    /// A log that writes nothing (the ranks other than 0).
    pub(super) fn none(out: &Path) -> MetricsLog {
        MetricsLog { file: None, path: out.join(state::METRICS) }
    }

    pub(super) fn write(&mut self, line: serde_json::Value) -> Result<()> {
        match &mut self.file {
            Some(f) => writeln!(f, "{line}").map_err(|e| SopError::file(&self.path, e)),
            None => Ok(()),
        }
    }
}

/// One step's line of `metrics.jsonl`: what it computed, how fast, and what it asked of the
/// device (`gpu::counters`); `train` adds the device memory held so far (`memory_fields`).
pub(super) fn step_line(
    step: usize,
    epoch: usize,
    m: &StepMetrics,
    images_per_sec: f64,
    skipped: usize,
    secs: f64,
    c: &CounterSnapshot,
) -> serde_json::Value {
    let mut line = serde_json::json!({
        "step": step, "epoch": epoch, "loss": m.loss, "loss_cls": m.loss_cls, "loss_mim": m.loss_mim,
        "lr": m.lr, "weight_decay": m.weight_decay, "teacher_temp": m.teacher_temp, "momentum": m.momentum,
        "grad_norm": m.grad_norm, "agreement_cls": m.agreement_cls,
        "images_per_sec": images_per_sec, "skipped_images": skipped,
        "step_ms": secs * 1e3, "dispatches": c.dispatches, "host_waits": c.host_waits, "pace_waits": c.pace_waits,
        "bind_groups_created": c.bind_groups_created, "buffers_created": c.buffers_created,
        "uniform_bytes": c.uniform_bytes, "host_ms": c.host_ms, "encode_ms": c.encode_ms,
    });
    for (name, value) in &m.extras {
        line[*name] = serde_json::json!(value);
    }
    line
}

/// `line` with the device memory held so far: `peak_memory_bytes`, the buffer pool's
/// high-water mark (what the device allocated), and `peak_live_bytes`, the most held by live
/// tensors at once.
pub(super) fn memory_fields(mut line: serde_json::Value, mem: &crate::gpu::MemoryStats) -> serde_json::Value {
    line["peak_memory_bytes"] = mem.peak_pool_bytes.into();
    line["peak_live_bytes"] = mem.peak_live_bytes.into();
    line
}

pub(super) fn new_progress_bar(total_steps: usize, start_step: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total_steps as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    pb.set_position(start_step as u64);
    pb
}
