//! `sop train`: student and EMA teacher, the SOP objective, AdamW with the schedules of
//! docs/METHOD.md ("Schedules", "Optimisation"), memory-bank updates ("Bank updates"),
//! checkpoints, metrics and k-NN evaluation.
//!
//! One optimiser step (see README "One training step"):
//! 1. teacher (no grad): backbone + head on the 2 global crops → [CLS] (2B, W), patches (2B, N, W)
//! 2. student: backbone (masked, drop path) + head on the global crops, backbone + head on the
//!    [CLS] of the local crops
//! 3. objective (reads the banks) → losses and d(student embeddings); tape backward → grads
//! 4. AdamW (clipped), EMA teacher update, then the banks take the teacher's second-view
//!    [CLS] rows and one random patch row per image.
//!
//! Every random draw comes from (seed, step, micro-batch, purpose), so a resumed run repeats
//! the uninterrupted one exactly.

pub mod config;
pub mod optimizer;
pub mod schedule;
pub mod state;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use crate::checkpoint::TensorMap;
use crate::data::{Batch, Dataset, Loader, LoaderConfig, Split, Views};
use crate::error::{Result, SopError};
use crate::eval::features::extract;
use crate::eval::knn::{knn_classify, KnnResult};
use crate::gpu::{CounterSnapshot, Gpu, Tensor};
use crate::model::params::{init_params, param_specs};
use crate::model::vit::{ForwardOptions, ParamVars, Vit, Weights};
use crate::ops::ema::ema_update;
use crate::ops::gather::gather_rows;
use crate::ops::reduce::sum_squares;
use crate::sop::bank::Bank;
use crate::sop::objective::{
    sop_objective_tensors, Embeddings, ObjectiveConfig, ObjectiveTensors, TaskDraw, TaskKind, TaskSet,
};
use crate::sop::prototypes::sample_keep;
use crate::tape::{Tape, Var};
use config::TrainConfig;
use optimizer::AdamW;
use state::Progress;

use crate::rng::{step_rng, stream_seed, STEP_BANK_PATCH, STEP_DRAWS, STEP_DROP_PATH, STEP_INIT, STEP_KEEP};

/// What a finished run reports.
#[derive(Debug)]
pub struct TrainSummary {
    pub steps: usize,
    pub final_loss: Option<f64>,
    pub knn_before: Option<KnnResult>,
    pub knn_after: Option<KnnResult>,
    pub seconds: f64,
    pub out: PathBuf,
}

struct Model {
    vit: Vit,
    student: Weights,
    teacher: Weights,
}

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

/// Per-block drop-path scales for `rows` samples (None when the rate is 0 everywhere).
fn drop_path_scales(gpu: &Gpu, vit: &Vit, rows: usize, rng: &mut impl Rng) -> Result<Option<Vec<[Tensor; 2]>>> {
    let cfg = &vit.cfg;
    if cfg.drop_path <= 0.0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(cfg.depth);
    for blk in 0..cfg.depth {
        let rate = cfg.drop_path_rate(blk);
        let mut pair = Vec::with_capacity(2);
        for _ in 0..2 {
            let s: Vec<f32> = (0..rows)
                .map(|_| if rate > 0.0 && rng.random::<f64>() < rate { 0.0 } else { (1.0 / (1.0 - rate)) as f32 })
                .collect();
            pair.push(gpu.upload_f32(&[rows], &s)?);
        }
        let [a, b]: [Tensor; 2] = pair.try_into().map_err(|_| SopError::Invalid("drop path".into()))?;
        out.push([a, b]);
    }
    Ok(Some(out))
}

fn permutation(n: usize, rng: &mut impl Rng) -> Vec<u32> {
    use rand::seq::SliceRandom;
    let mut p: Vec<u32> = (0..n as u32).collect();
    p.shuffle(rng);
    p
}

/// The labelled splits for k-NN: (train, val); None when the training set has no labels.
/// A val set that is the training set itself is refused: accuracy on training images is
/// never reported as val accuracy.
fn knn_datasets(cfg: &TrainConfig) -> Result<Option<(Arc<Dataset>, Arc<Dataset>)>> {
    let train = Dataset::open(cfg.data.knn_train.as_ref().unwrap_or(&cfg.data.path), Split::Train)?;
    let val = Dataset::open(cfg.data.knn_val.as_ref().unwrap_or(&cfg.data.path), Split::Test)?;
    if train.labels().is_none() || val.labels().is_none() {
        return Ok(None);
    }
    if crate::data::same_images(&train, &val) {
        return Err(SopError::file(
            val.root(),
            "k-NN evaluation: no held-out split, so the val set would be the training images themselves; \
             give `train/` and `val/` folders (or IDX `t10k-*` files) under --data, `--knn-val DIR`, or `--no-eval`",
        ));
    }
    crate::data::val_labels_by_name(&train, &val)?;
    Ok(Some((Arc::new(train), Arc::new(val))))
}

/// Weighted k-NN of the teacher backbone's [CLS] features.
pub fn knn_eval(
    gpu: &Gpu,
    vit: &Vit,
    weights: &Weights,
    train: Arc<Dataset>,
    val: Arc<Dataset>,
    k: usize,
    temperature: f32,
) -> Result<KnnResult> {
    let labels = |d: &Dataset, f: &crate::eval::features::Features| -> Vec<u32> {
        let l = d.labels().expect("labelled");
        f.indices.iter().map(|&i| l[i]).collect()
    };
    // Val classes are matched to the training classes by name.
    let val_labels = crate::data::val_labels_by_name(&train, &val)?;
    let ft = extract(gpu, vit, weights, train.clone(), 256)?;
    let fv = extract(gpu, vit, weights, val.clone(), 256)?;
    let fv_labels: Vec<u32> = fv.indices.iter().map(|&i| val_labels[i]).collect();
    knn_classify(gpu, &ft.normalized(), &labels(&train, &ft), &fv.normalized(), &fv_labels, ft.dim, k, temperature)
}

/// Whether two paths name the same existing folder.
fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Run (or resume) training as `cfg` says. `resume` is a run folder written by `sop train`.
pub fn train(gpu: &Gpu, cfg: TrainConfig, resume: Option<&Path>, progress_bar: bool) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let (cfg, resumed) = resolve_run(gpu, cfg, resume)?;
    let out = cfg.run.out.clone();
    let in_place = resume.is_some_and(|dir| same_dir(dir, &out));
    let knn_sets = if cfg.run.no_eval { None } else { knn_datasets(&cfg)? };
    let config_toml = prepare_folder(&cfg, resumed.as_ref(), in_place)?;

    let dataset = Dataset::open(&cfg.data.path, Split::Train)?;
    let (b, accum) = (cfg.data.batch_size, cfg.optim.accumulate);
    let steps_per_epoch = dataset.len() / b / accum;
    if steps_per_epoch == 0 {
        return Err(SopError::Invalid(format!(
            "{}: {} images are fewer than one step of {} (batch {b} x accumulate {accum})",
            cfg.data.path.display(),
            dataset.len(),
            b * accum
        )));
    }
    let schedule_steps = cfg.optim.epochs * steps_per_epoch;
    let total_steps = cfg.optim.steps.unwrap_or(schedule_steps);
    let (model, opt, cls_bank, patch_bank, start_step) = restore_or_init(gpu, &cfg, resumed.as_ref())?;
    let knn = |vit: &Vit, w: &Weights| -> Result<Option<KnnResult>> {
        match &knn_sets {
            Some((t, v)) => {
                Ok(Some(knn_eval(gpu, vit, w, t.clone(), v.clone(), cfg.run.knn_k, cfg.run.knn_temperature)?))
            }
            None => Ok(None),
        }
    };
    let knn_before = if start_step == 0 { knn(&model.vit, &model.teacher)? } else { None };
    if let Some(k) = &knn_before {
        eprintln!(
            "k-NN before training: top-1 {:.2}%, top-5 {:.2}% (k = {}, {} train, {} val)",
            k.top1, k.top5, k.k, k.n_train, k.n_val
        );
    }
    let mut metrics = MetricsLog::open(&out)?;
    // The checkpoint the run folder holds (a run moved to a new folder has none there yet).
    let saved_step = resumed.as_ref().filter(|_| in_place).map(|(_, r)| r.progress.step);
    let mut trainer = Trainer {
        gpu,
        cfg: &cfg,
        model,
        opt,
        cls_bank,
        patch_bank,
        steps_per_epoch,
        schedule_steps,
        out: out.clone(),
        config_toml,
        saved_step,
    };
    let summary = |steps, final_loss, knn_after| TrainSummary {
        steps,
        final_loss,
        knn_before,
        knn_after,
        seconds: t0.elapsed().as_secs_f64(),
        out: out.clone(),
    };
    if total_steps == 0 || start_step >= total_steps {
        trainer.save(start_step)?;
        return Ok(summary(start_step, None, None));
    }

    let loader_cfg = LoaderConfig {
        batch_size: b,
        drop_last: true,
        shuffle: true,
        seed: cfg.run.seed,
        prefetch: 3,
        threads: cfg.data.threads,
    };
    let mut loader = Loader::new(Arc::new(dataset), Views::Train(cfg.augment.clone()), loader_cfg)?;
    let bar = progress_bar.then(|| new_progress_bar(total_steps, start_step));
    let mut step = start_step;
    let mut final_loss = None;
    let mut pending: Vec<Batch> = Vec::with_capacity(accum);
    'epochs: for epoch in step / steps_per_epoch..total_steps.div_ceil(steps_per_epoch) {
        // Batches of this epoch consumed before a resume are decoded again and skipped.
        let skip = if epoch == step / steps_per_epoch { (step % steps_per_epoch) * accum } else { 0 };
        let mut skipped_images = 0;
        for (i, batch) in loader.epoch(epoch).enumerate() {
            let batch = batch?;
            if i < skip || i >= steps_per_epoch * accum {
                continue;
            }
            skipped_images += batch.skipped;
            pending.push(batch);
            if pending.len() < accum {
                continue;
            }
            let (t_step, counted) = (Instant::now(), gpu.counters());
            let m = trainer.step(step, &std::mem::take(&mut pending))?;
            step += 1;
            let secs = t_step.elapsed().as_secs_f64();
            final_loss = Some(m.loss);
            let images_per_sec = (b * accum) as f64 / secs;
            metrics.write(step_line(
                step,
                epoch,
                &m,
                images_per_sec,
                skipped_images,
                secs,
                &gpu.counters().since(&counted),
            ))?;
            if let Some(bar) = &bar {
                bar.set_position(step as u64);
                bar.set_message(format!(
                    "loss {:.4} (cls {:.4}, mim {:.4}) lr {:.2e} τt {:.3} {images_per_sec:.1} img/s",
                    m.loss, m.loss_cls, m.loss_mim, m.lr, m.teacher_temp
                ));
            }
            if cfg.run.checkpoint_every > 0 && step % cfg.run.checkpoint_every == 0 && step < total_steps {
                trainer.save(step)?;
            }
            if step >= total_steps {
                break 'epochs;
            }
        }
        if skipped_images > 0 {
            log::warn!("epoch {epoch}: {skipped_images} images could not be decoded and were skipped");
        }
        if cfg.run.eval_every > 0 && (epoch + 1) % cfg.run.eval_every == 0 && step < total_steps {
            if let Some(k) = knn(&trainer.model.vit, &trainer.model.teacher)? {
                metrics
                    .write(serde_json::json!({"step": step, "epoch": epoch, "knn_top1": k.top1, "knn_top5": k.top5}))?;
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    trainer.save(step)?;
    let knn_after = knn(&trainer.model.vit, &trainer.model.teacher)?;
    if let Some(k) = &knn_after {
        metrics.write(serde_json::json!({"step": step, "knn_top1": k.top1, "knn_top5": k.top5, "final": true}))?;
    }
    Ok(summary(step, final_loss, knn_after))
}

/// The configuration a run uses: `cfg` for a fresh run; for a resumed one its own saved
/// configuration (its architecture too), extended by `cfg`'s epochs, steps, folder and
/// `no_eval`, with the matmul variant it started with pinned.
fn resolve_run(
    gpu: &Gpu,
    mut cfg: TrainConfig,
    resume: Option<&Path>,
) -> Result<(TrainConfig, Option<(PathBuf, state::Resumed)>)> {
    let resumed = match resume {
        Some(dir) => {
            let saved = state::saved_config(dir)?;
            let r = state::load_all(dir, &param_specs(&saved.model))?;
            let (epochs, steps, no_eval) = (cfg.optim.epochs, cfg.optim.steps, cfg.run.no_eval);
            let out = cfg.run.out.clone();
            cfg = saved;
            cfg.optim.epochs = epochs.max(cfg.optim.epochs);
            cfg.optim.steps = steps.or(cfg.optim.steps);
            cfg.run.out = out;
            cfg.run.no_eval |= no_eval;
            if let Some(v) = r.matmul {
                if !v.available(gpu) {
                    log::warn!("the run used the {} matmul, which {} cannot run; continuing with its own, so the resumed run may differ in rounding", v.name(), gpu.adapter_name());
                } else if !crate::ops::matmul::MatmulVariant::pin(gpu, v) {
                    log::warn!("the run used the {} matmul; this process already uses another, so the resumed run may differ in rounding", v.name());
                }
            }
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
fn prepare_folder(cfg: &TrainConfig, resumed: Option<&(PathBuf, state::Resumed)>, in_place: bool) -> Result<String> {
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
fn restore_or_init(
    gpu: &Gpu,
    cfg: &TrainConfig,
    resumed: Option<&(PathBuf, state::Resumed)>,
) -> Result<(Model, AdamW, Bank, Bank, usize)> {
    let specs = param_specs(&cfg.model);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let decay: Vec<bool> = specs.iter().map(|s| s.decay).collect();
    let (width, seed) = (cfg.model.head_bottleneck, cfg.run.seed);
    let vit = Vit::new(cfg.model.clone());
    match resumed {
        Some((dir, r)) => {
            let student = weights_from_map(gpu, &names, &r.student)?;
            let teacher = weights_from_map(gpu, &names, &r.teacher)?;
            let mut opt = AdamW::new(gpu, &student.tensors, decay)?;
            for (i, (n, t)) in names.iter().zip(&student.tensors).enumerate() {
                opt.m[i] = gpu.upload_f32(
                    &t.shape,
                    &state::state_tensor(dir, &r.state, &format!("adamw.m.{n}"), &t.shape)?.data,
                )?;
                opt.v[i] = gpu.upload_f32(
                    &t.shape,
                    &state::state_tensor(dir, &r.state, &format!("adamw.v.{n}"), &t.shape)?.data,
                )?;
            }
            opt.step = r.adamw_step;
            let cb = state::restore_bank(gpu, dir, &r.state, "cls_bank", cfg.sop.cls_bank_size, width, r.bank_ptrs.0)?;
            let pb =
                state::restore_bank(gpu, dir, &r.state, "patch_bank", cfg.sop.patch_bank_size, width, r.bank_ptrs.1)?;
            Ok((Model { vit, student, teacher }, opt, cb, pb, r.progress.step))
        }
        None => {
            let host = init_params(&cfg.model, stream_seed(seed, 0, 0, STEP_INIT));
            let student = Weights::upload(gpu, &host)?;
            let teacher = Weights::upload(gpu, &host)?;
            let opt = AdamW::new(gpu, &student.tensors, decay)?;
            let cb = Bank::random(gpu, cfg.sop.cls_bank_size, width, stream_seed(seed, 0, 1, STEP_INIT))?;
            let pb = Bank::random(gpu, cfg.sop.patch_bank_size, width, stream_seed(seed, 0, 2, STEP_INIT))?;
            Ok((Model { vit, student, teacher }, opt, cb, pb, 0))
        }
    }
}

/// The run's `metrics.jsonl`, appended to one JSON object per line.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(out: &Path) -> Result<MetricsLog> {
        let path = out.join(state::METRICS);
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| SopError::file(&path, e))?;
        Ok(MetricsLog { file, path })
    }

    fn write(&mut self, line: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}").map_err(|e| SopError::file(&self.path, e))
    }
}

/// One step's line of `metrics.jsonl`: what it computed, how fast, and what it asked of the
/// device (`gpu::counters`).
fn step_line(
    step: usize,
    epoch: usize,
    m: &StepMetrics,
    images_per_sec: f64,
    skipped: usize,
    secs: f64,
    c: &CounterSnapshot,
) -> serde_json::Value {
    serde_json::json!({
        "step": step, "epoch": epoch, "loss": m.loss, "loss_cls": m.loss_cls, "loss_mim": m.loss_mim,
        "lr": m.lr, "weight_decay": m.weight_decay, "teacher_temp": m.teacher_temp, "momentum": m.momentum,
        "grad_norm": m.grad_norm, "agreement_cls": m.agreement_cls,
        "images_per_sec": images_per_sec, "skipped_images": skipped,
        "step_ms": secs * 1e3, "dispatches": c.dispatches, "host_waits": c.host_waits,
        "bind_groups_created": c.bind_groups_created, "buffers_created": c.buffers_created,
        "uniform_bytes": c.uniform_bytes, "host_ms": c.host_ms,
    })
}

fn new_progress_bar(total_steps: usize, start_step: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total_steps as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    pb.set_position(start_step as u64);
    pb
}

/// The mutable state of a run.
struct Trainer<'a> {
    gpu: &'a Gpu,
    cfg: &'a TrainConfig,
    model: Model,
    opt: AdamW,
    cls_bank: Bank,
    patch_bank: Bank,
    steps_per_epoch: usize,
    schedule_steps: usize,
    /// The run folder, its config as saved, and the step of the checkpoint it holds.
    out: PathBuf,
    config_toml: String,
    saved_step: Option<usize>,
}

/// What one optimiser step logs.
pub struct StepMetrics {
    pub loss: f64,
    pub loss_cls: f64,
    pub loss_mim: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub teacher_temp: f64,
    pub momentum: f64,
    pub grad_norm: f64,
    pub agreement_cls: f64,
}

/// Teacher rows a micro-batch leaves for the banks: [CLS] (B, W) and one patch per image.
struct BankRows {
    cls: Tensor,
    patch: Tensor,
    sources: Vec<i64>,
}

/// The student's embeddings of one micro-batch, on its tape.
struct StudentOut {
    /// [CLS] of the two global crops (2B, W) and of the local crops (L·B, W), if any.
    cls_global: Var,
    cls_local: Option<Var>,
    /// Patches of the masked global crops (2B, N, W).
    patch: Var,
    /// Every [CLS] row, the global views first ((2+L)·B, W).
    cls: Tensor,
}

impl StudentOut {
    /// The tape's backward from the objective's embedding gradients (scaled by 1/n_micro):
    /// the gradient of every student parameter.
    fn backward(
        &self,
        gpu: &Gpu,
        tape: &mut Tape,
        p: &ParamVars,
        out: &ObjectiveTensors,
        b: usize,
        n_micro: usize,
    ) -> Result<Vec<Option<Tensor>>> {
        let inv = 1.0 / n_micro as f32;
        let scale = |t: &Tensor| crate::ops::elementwise::scale(gpu, t, inv);
        let mut seeds = vec![
            (&self.cls_global, scale(&gpu.slice_rows(&out.dstudent_cls, 0, 2 * b)?)?),
            (&self.patch, scale(&out.dstudent_patch)?),
        ];
        if let Some(sl) = &self.cls_local {
            let l = sl.value.shape[0];
            seeds.push((sl, scale(&gpu.slice_rows(&out.dstudent_cls, 2 * b, l)?)?));
        }
        let mut g = tape.backward(seeds)?;
        Ok(p.vars.iter().map(|v| g.take(v)).collect())
    }
}

impl Trainer<'_> {
    /// Write the run's checkpoint of `step` into its folder.
    fn save(&mut self, step: usize) -> Result<()> {
        state::save_all(
            self.gpu,
            &self.out,
            &self.cfg.model,
            &self.config_toml,
            &self.model.student,
            &self.model.teacher,
            &self.opt,
            (&self.cls_bank, &self.patch_bank),
            &Progress { step, seed: self.cfg.run.seed },
        )?;
        self.saved_step = Some(step);
        Ok(())
    }

    /// The error that stops the run at `step` (from 0) for `reason`.
    fn stop(&self, step: usize, reason: String) -> SopError {
        SopError::TrainingStopped { step: step + 1, reason, folder: self.out.clone(), checkpoint: self.saved_step }
    }

    /// One optimiser step over `micro` batches (gradient accumulation); `step` counts from 0.
    fn step(&mut self, step: usize, micro: &[Batch]) -> Result<StepMetrics> {
        let (gpu, cfg) = (self.gpu, self.cfg);
        let o = &cfg.optim;
        let scale_lr = (cfg.data.batch_size * o.accumulate) as f64 / 256.0;
        let warmup = o.warmup_epochs * self.steps_per_epoch;
        let total = self.schedule_steps;
        let lr = schedule::cosine(step, total, warmup, 0.0, o.lr * scale_lr, o.min_lr);
        let wd = schedule::cosine(step, total, 0, o.weight_decay, o.weight_decay, o.weight_decay_end);
        let momentum = schedule::cosine(step, total, 0, o.momentum_teacher, o.momentum_teacher, o.momentum_teacher_end);
        let obj_cfg = cfg.objective(step, self.steps_per_epoch);

        let n_params = self.model.student.tensors.len();
        let mut grads: Vec<Option<Tensor>> = vec![None; n_params];
        let mut bank_rows = Vec::with_capacity(micro.len());
        let mut scalars = Vec::with_capacity(micro.len());
        for (mi, batch) in micro.iter().enumerate() {
            let (obj, embed_sq, rows, g) = self.micro_step(step, mi, batch, &obj_cfg, micro.len())?;
            for (acc, g) in grads.iter_mut().zip(g) {
                *acc = match (acc.take(), g) {
                    (Some(a), Some(g)) => Some(crate::ops::elementwise::add(gpu, &a, &g)?),
                    (a, g) => a.or(g),
                };
            }
            scalars.push((obj, embed_sq));
            bank_rows.push(rows);
        }
        // The step's one wait: losses, agreement, the embeddings' finiteness check and the
        // gradients' norms come back together.
        let sq = optimizer::grad_squares(gpu, &grads)?;
        let mut parts: Vec<&Tensor> = Vec::new();
        for (obj, embed_sq) in &scalars {
            parts.extend(obj.scalar_tensors());
            parts.push(embed_sq);
        }
        parts.extend(sq.iter().flatten());
        let words = gpu.read_words(&parts)?;
        let mut at = 0;
        let (mut loss, mut loss_cls, mut loss_mim, mut agreement) = (0.0, 0.0, 0.0, 0.0);
        let n = micro.len() as f64;
        for (obj, _) in scalars {
            let k = obj.scalar_tensors().len();
            let out = obj.finish_words(&words[at..at + k]);
            // A NaN can hide inside clamped logs, so the embeddings are checked as well: the
            // summed squares of all four (unit rows, so no finite sum overflows).
            let embeddings_finite = f32::from_bits(words[at + k][0]).is_finite();
            at += k + 1;
            if !out.loss.is_finite() || !embeddings_finite {
                let note = if embeddings_finite { "" } else { ", non-finite embeddings" };
                let reason = format!("the loss is not finite (cls {}, mim {}{note})", out.loss_cls, out.loss_mim);
                return Err(self.stop(step, reason));
            }
            loss += out.loss as f64 / n;
            loss_cls += out.loss_cls as f64 / n;
            loss_mim += out.loss_mim as f64 / n;
            agreement += out.agreement_cls as f64 / n;
        }
        let sq_host: Vec<Option<f32>> = sq
            .iter()
            .map(|s| {
                s.as_ref().map(|_| {
                    at += 1;
                    f32::from_bits(words[at - 1][0])
                })
            })
            .collect();
        let clip = (o.clip_grad > 0.0).then_some((o.clip_grad, o.clip_mode));
        let params = &self.model.student.tensors;
        let report = match self.opt.apply(gpu, params, &grads, &sq_host, lr as f32, wd as f32, clip) {
            Ok(r) => r,
            Err(SopError::Invalid(reason)) => return Err(self.stop(step, reason)),
            Err(e) => return Err(e),
        };
        drop(grads);
        for (t, s) in self.model.teacher.tensors.iter().zip(&self.model.student.tensors) {
            ema_update(gpu, t, s, momentum as f32)?;
        }
        // The banks were read by the objective above; now they take this step's rows.
        for rows in bank_rows {
            self.cls_bank.push(gpu, &rows.cls, &rows.sources)?;
            self.patch_bank.push(gpu, &rows.patch, &rows.sources)?;
        }
        Ok(StepMetrics {
            loss,
            loss_cls,
            loss_mim,
            lr,
            weight_decay: wd,
            teacher_temp: obj_cfg.teacher_temp as f64,
            momentum,
            grad_norm: report.grad_norm,
            agreement_cls: agreement,
        })
    }

    /// Forward, objective and backward of one micro-batch: its objective (losses still on
    /// the device), the summed squares of its embeddings (the finiteness check), the rows it
    /// leaves for the banks, and the gradient of every student parameter (scaled by
    /// 1/n_micro).
    fn micro_step(
        &self,
        step: usize,
        mi: usize,
        batch: &Batch,
        obj_cfg: &ObjectiveConfig,
        n_micro: usize,
    ) -> Result<(ObjectiveTensors, Tensor, BankRows, Vec<Option<Tensor>>)> {
        let gpu = self.gpu;
        let (b, n) = (batch.batch_size, batch.grid.0 * batch.grid.1);
        let s = batch.global_size;
        let globals = gpu.upload_f32(&[2 * b, 3, s, s], &batch.globals)?;
        let masks = gpu.upload_u32(&[2 * b, n], &batch.masks)?;
        let (t_cls, t_patch) = self.teacher_forward(&globals)?;
        let mut tape = Tape::new(gpu);
        let p = self.model.student.leaves(&mut tape, true);
        let student = self.student_forward(&mut tape, &p, step, mi, batch, globals, &masks)?;
        let masks_host: Vec<u8> = batch.masks.iter().map(|&m| (m != 0) as u8).collect();
        let emb = Embeddings {
            student_cls: &student.cls,
            teacher_cls: &t_cls,
            student_patch: &student.patch.value,
            teacher_patch: &t_patch,
            masks: &masks_host,
            batch: b,
            local_views: batch.n_local,
        };
        let out = self.objective(step, mi, obj_cfg, &emb)?;
        // Summed squares of all four embeddings, checked for finiteness with the step's
        // other scalars (`step`).
        let ss = |t: &Tensor| sum_squares(gpu, t);
        let add = |a: &Tensor, b: &Tensor| crate::ops::elementwise::add(gpu, a, b);
        let embed_sq = add(&add(&ss(&student.cls)?, &ss(&student.patch.value)?)?, &add(&ss(&t_cls)?, &ss(&t_patch)?)?)?;
        let grads = student.backward(gpu, &mut tape, &p, &out, b, n_micro)?;
        let rows = self.bank_rows(step, mi, batch, &t_cls, &t_patch)?;
        Ok((out, embed_sq, rows, grads))
    }

    /// Step 1, the teacher (no grad) on the unmasked global crops: [CLS] (2B, W), patches (2B, N, W).
    fn teacher_forward(&self, globals: &Tensor) -> Result<(Tensor, Tensor)> {
        let (gpu, vit) = (self.gpu, &self.model.vit);
        let mut tape = Tape::no_grad(gpu);
        let p = self.model.teacher.leaves(&mut tape, false);
        let x = tape.constant(globals.clone());
        let tokens = vit.backbone(&mut tape, &p, &x, &ForwardOptions::default())?;
        let h = vit.head(&mut tape, &p, &tokens)?;
        let (c, r) = tape.tokens_split(&h)?;
        Ok((c.value, r.value))
    }

    /// Step 2, the student on the masked global crops (all tokens) and the local crops ([CLS]
    /// only), with drop path, recorded on `tape`.
    #[allow(clippy::too_many_arguments)]
    fn student_forward(
        &self,
        tape: &mut Tape,
        p: &ParamVars,
        step: usize,
        mi: usize,
        batch: &Batch,
        globals: Tensor,
        masks: &Tensor,
    ) -> Result<StudentOut> {
        let (gpu, vit) = (self.gpu, &self.model.vit);
        let (b, l, ls) = (batch.batch_size, batch.n_local, batch.local_size);
        let mut rng = step_rng(self.cfg.run.seed, step, mi, STEP_DROP_PATH);
        let dp_g = drop_path_scales(gpu, vit, 2 * b, &mut rng)?;
        let x = tape.constant(globals);
        let tokens = vit.backbone(tape, p, &x, &ForwardOptions { mask: Some(masks), drop_path: dp_g.as_deref() })?;
        let h = vit.head(tape, p, &tokens)?;
        let (cls_global, patch) = tape.tokens_split(&h)?;
        let cls_local = if l > 0 {
            let dp_l = drop_path_scales(gpu, vit, l * b, &mut rng)?;
            let xl = tape.constant(gpu.upload_f32(&[l * b, 3, ls, ls], &batch.locals)?);
            let tokens = vit.backbone(tape, p, &xl, &ForwardOptions { mask: None, drop_path: dp_l.as_deref() })?;
            let (cls, _) = tape.tokens_split(&tokens)?;
            Some(vit.head(tape, p, &cls)?)
        } else {
            None
        };
        let cls = match &cls_local {
            Some(sl) => gpu.concat_rows(&[&cls_global.value, &sl.value])?,
            None => cls_global.value.clone(),
        };
        Ok(StudentOut { cls_global, cls_local, patch, cls })
    }

    /// Step 3, the objective on this micro-batch's embeddings, with the step's random draws.
    fn objective(
        &self,
        step: usize,
        mi: usize,
        obj_cfg: &ObjectiveConfig,
        emb: &Embeddings,
    ) -> Result<ObjectiveTensors> {
        let (gpu, seed) = (self.gpu, self.cfg.run.seed);
        let mut rng = step_rng(seed, step, mi, STEP_DRAWS);
        let cls_draws: Vec<TaskDraw> = (0..obj_cfg.cls.tasks)
            .map(|_| TaskDraw { perm: permutation(self.cls_bank.len(), &mut rng), keep: None })
            .collect();
        let patch_draws: Vec<TaskDraw> = (0..obj_cfg.patch.tasks)
            .map(|_| TaskDraw { perm: permutation(self.patch_bank.len(), &mut rng), keep: None })
            .collect();
        let sampling = self.cfg.sop.anchor_sampling;
        let mut keep_rng = step_rng(seed, step, mi, STEP_KEEP);
        let cls = TaskSet { bank: &self.cls_bank, draws: &cls_draws };
        let patch = TaskSet { bank: &self.patch_bank, draws: &patch_draws };
        sop_objective_tensors(gpu, obj_cfg, emb, cls, patch, |nb, kind, _| {
            let (pc, bank) = match kind {
                TaskKind::Cls => (&obj_cfg.cls, &self.cls_bank),
                TaskKind::Patch => (&obj_cfg.patch, &self.patch_bank),
            };
            sample_keep(gpu, nb, pc.anchors, pc.experts, bank.len() - pc.anchors, sampling, &mut keep_rng)
        })
    }

    /// Step 4, what the banks take after the step: the second view's teacher [CLS] rows and one
    /// random teacher patch row per image.
    fn bank_rows(&self, step: usize, mi: usize, batch: &Batch, t_cls: &Tensor, t_patch: &Tensor) -> Result<BankRows> {
        let gpu = self.gpu;
        let (b, n, w) = (batch.batch_size, batch.grid.0 * batch.grid.1, self.cfg.model.head_bottleneck);
        let cls = gpu.slice_rows(t_cls, b, b)?;
        let mut rng = step_rng(self.cfg.run.seed, step, mi, STEP_BANK_PATCH);
        let pick: Vec<u32> = (0..b).map(|i| ((b + i) * n + rng.random_range(0..n)) as u32).collect();
        let patch = gather_rows(gpu, &t_patch.reshape(&[2 * b * n, w])?, &gpu.upload_u32(&[b], &pick)?)?;
        let sources = batch.indices.iter().map(|&i| i as i64).collect();
        Ok(BankRows { cls, patch, sources })
    }
}
