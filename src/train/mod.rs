//! `sop train`: student and EMA teacher, the SOP objective, AdamW with the schedules of
//! docs/METHOD.md ("Schedules", "Optimisation"), memory-bank updates ("Bank updates"),
//! checkpoints, metrics (and their plot, `plot.png`) and k-NN evaluation.
//!
//! One optimiser step (see README "One training step"):
//! 1. teacher (no grad): backbone + head on the 2 global crops → [CLS] (2B, W), patches (2B, N, W)
//! 2. student: backbone (masked, drop path) + head on the global crops, backbone + head on the
//!    [CLS] of the local crops
//! 3. objective (reads the banks) → losses and d(student embeddings); tape backward → grads
//! 4. AdamW (clipped), EMA teacher update, then the banks take the teacher's second-view
//!    [CLS] rows and one random patch row per image: all on the device, skipped there after
//!    a non-finite step (the step's flag).
//!
//! Every random draw comes from (seed, step, micro-batch or the image's place in the step's
//! global batch, purpose), so a resumed run repeats the uninterrupted one exactly, and a run
//! split over data-parallel ranks (`distributed`) makes the same draws as one process.
//!
//! A step never waits for the device: its metrics come back asynchronously (`inflight`) and
//! are written a step or two later; the run blocks only in `InFlight::settle` (pacing, and
//! draining before a checkpoint, a k-NN evaluation and the end).

pub mod config;
pub mod distributed;
mod heads;
mod inflight;
pub mod memory;
pub mod optimizer;
pub mod recipe;
mod run;
mod scalars;
pub mod schedule;
pub mod state;
mod step;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use inflight::{InFlight, Timing, Until};

use crate::data::{Batch, Dataset, Loader, LoaderConfig, Split, Views};
use crate::error::{Result, SopError};
use crate::eval::features::extract;
use crate::eval::knn::{knn_classify, KnnResult};
use crate::gpu::Gpu;
use crate::model::vit::{Vit, Weights};
use config::TrainConfig;
use run::{new_progress_bar, prepare_folder, resolve_run, restore_or_init, MetricsLog};
pub use step::StepMetrics;
use step::Trainer;

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
    let (mut cfg, resumed) = resolve_run(gpu, cfg, resume)?;
    // Data parallel: the ranks agree on the configuration; a resume reshards (`distributed`).
    distributed::agree(&mut cfg, resumed.as_ref().map(|(_, r)| r.progress.ranks))?;
    let root = distributed::is_root();
    // The memory plan, printed; a batch that cannot fit stops here, before any work.
    memory::check(gpu, &cfg)?;
    let out = cfg.run.out.clone();
    let in_place = resume.is_some_and(|dir| same_dir(dir, &out));
    let knn_sets = if cfg.run.no_eval || !root { None } else { knn_datasets(&cfg)? };
    // Every refusal comes before the run folder is written, so a refused start leaves none.
    let dataset = Dataset::open(&cfg.data.path, Split::Train)?;
    let (b, accum) = (cfg.data.batch_size, cfg.optim.accumulate);
    // Images of one step over every rank.
    let global = distributed::shard(b).global_batch() * accum;
    let steps_per_epoch = dataset.len() / global;
    if steps_per_epoch == 0 {
        return Err(SopError::Invalid(format!(
            "{}: {} images are fewer than one step of {global} (batch {b} x accumulate {accum} x {} ranks)",
            cfg.data.path.display(),
            dataset.len(),
            distributed::shard(b).ranks
        )));
    }
    let config_toml = if root { prepare_folder(&cfg, resumed.as_ref(), in_place)? } else { cfg.to_toml() };
    let schedule_epoch = cfg.optim.schedule_epoch(steps_per_epoch);
    let schedule_steps = cfg.optim.epochs * schedule_epoch;
    if let Some(m) = cfg.optim.max_steps.filter(|_| root && schedule_epoch < steps_per_epoch) {
        eprintln!(
            "schedules: {} epochs of {schedule_epoch} steps (optim.max_steps {m}; an epoch of the data is {steps_per_epoch} steps)",
            cfg.optim.epochs
        );
    }
    let total_steps = cfg.optim.steps.unwrap_or(schedule_steps);
    let (model, opt, cls_bank, patch_bank, centers, start_step) = restore_or_init(gpu, &cfg, resumed.as_ref())?;
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
    let mut metrics = if root { MetricsLog::open(&out)? } else { MetricsLog::none(&out) };
    if let Some(k) = &knn_before {
        metrics.write(serde_json::json!({"step": 0, "knn_top1": k.top1, "knn_top5": k.top5}))?;
    }
    // The checkpoint the run folder holds (a run moved to a new folder has none there yet).
    let saved_step = resumed.as_ref().filter(|_| in_place).map(|(_, r)| r.progress.step);
    let mut trainer = Trainer {
        gpu,
        cfg: &cfg,
        model,
        opt,
        cls_bank,
        patch_bank,
        centers,
        schedule_epoch,
        schedule_steps,
        out: out.clone(),
        config_toml,
        saved_step,
        flag: gpu.zeros(&[1], crate::gpu::DType::U32)?,
        diagnostics: root.then(Default::default),
    };
    // Rank 0's state on every rank (nothing with one rank).
    trainer.broadcast_state()?;
    let summary = |steps, final_loss, knn_after| TrainSummary {
        steps,
        final_loss,
        knn_before,
        knn_after,
        seconds: t0.elapsed().as_secs_f64(),
        out: out.clone(),
    };
    let mut inflight = InFlight::default();
    if total_steps == 0 || start_step >= total_steps {
        trainer.save(start_step, &inflight)?;
        return Ok(summary(start_step, None, None));
    }

    let loader_cfg = LoaderConfig {
        batch_size: b,
        drop_last: true,
        shuffle: true,
        seed: cfg.run.seed,
        prefetch: 3,
        threads: cfg.data.threads,
        shard: (distributed::shard(b).rank, distributed::shard(b).ranks),
    };
    let mut loader = Loader::new(Arc::new(dataset), Views::Train(cfg.augment.clone()), loader_cfg)?;
    let bar = (progress_bar && root).then(|| new_progress_bar(total_steps, start_step));
    let mut step = start_step;
    let mut pending: Vec<Batch> = Vec::with_capacity(accum);
    // Write the lines of the steps whose metrics are back (waiting as `until` says); a step
    // that was not finite stops the run.
    let settle = |trainer: &Trainer, inflight: &mut InFlight, metrics: &mut MetricsLog, until| -> Result<()> {
        let shown = |step: usize, m: &StepMetrics| {
            if let Some(bar) = &bar {
                bar.set_position(step as u64);
                bar.set_message(format!(
                    "loss {:.4} (cls {:.4}, mim {:.4}) lr {:.2e} τt {:.3}",
                    m.loss, m.loss_cls, m.loss_mim, m.lr, m.teacher_temp
                ));
            }
        };
        match inflight.settle(gpu, metrics, until, shown)? {
            Some(stop) => Err(trainer.stop(stop.step, stop.reason)),
            None => Ok(()),
        }
    };
    let (mut recorded_at, mut counted) = (Instant::now(), gpu.counters());
    let mut comm_before = crate::dist::world().comm_seconds();
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
            let rec = trainer.step(step, &std::mem::take(&mut pending))?;
            step += 1;
            let (now, c) = (Instant::now(), gpu.counters());
            let secs = now.duration_since(recorded_at).as_secs_f64();
            let counters = c.since(&counted);
            (recorded_at, counted) = (now, c);
            let comm = crate::dist::world().comm_seconds();
            let comm_secs = comm - std::mem::replace(&mut comm_before, comm);
            let memory = gpu.memory();
            inflight.push(
                rec,
                Timing { epoch, images: global, skipped: skipped_images, secs, counters, memory, comm_secs },
            );
            let checkpoint = cfg.run.checkpoint_every > 0 && step % cfg.run.checkpoint_every == 0 && step < total_steps;
            // Before a checkpoint every step's metrics are in: a non-finite step stops the
            // run before its weights could be saved.
            let until = if checkpoint { Until::Drained } else { Until::Paced };
            settle(&trainer, &mut inflight, &mut metrics, until)?;
            if checkpoint || step % distributed::CHECK_EVERY == 0 {
                trainer.verify_same(Some(step))?;
            }
            if checkpoint {
                trainer.save(step, &inflight)?;
            }
            if step >= total_steps {
                break 'epochs;
            }
        }
        if skipped_images > 0 {
            log::warn!("epoch {epoch}: {skipped_images} images could not be decoded and were skipped");
        }
        if cfg.run.eval_every > 0 && (epoch + 1) % cfg.run.eval_every == 0 && step < total_steps {
            settle(&trainer, &mut inflight, &mut metrics, Until::Drained)?;
            if let Some(k) = knn(&trainer.model.vit, &trainer.model.teacher)? {
                metrics
                    .write(serde_json::json!({"step": step, "epoch": epoch, "knn_top1": k.top1, "knn_top5": k.top5}))?;
            }
        }
    }
    settle(&trainer, &mut inflight, &mut metrics, Until::Drained)?;
    if let Some(bar) = &bar {
        bar.finish();
    }
    let final_loss = inflight.last_loss;
    trainer.verify_same(Some(step))?;
    trainer.save(step, &inflight)?;
    let knn_after = knn(&trainer.model.vit, &trainer.model.teacher)?;
    if let Some(k) = &knn_after {
        metrics.write(serde_json::json!({"step": step, "knn_top1": k.top1, "knn_top5": k.top5, "final": true}))?;
    }
    // The curves beside the checkpoint; a picture that cannot be drawn loses nothing else.
    if !root {
        return Ok(summary(step, final_loss, knn_after));
    }
    if let Err(e) = crate::plot::plot_run(&out, &out.join(state::PLOT)) {
        log::warn!("the run's plot was not written: {e}");
    }
    Ok(summary(step, final_loss, knn_after))
}
