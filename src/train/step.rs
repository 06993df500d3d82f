//! One optimiser step (`Trainer::step`): per micro-batch the teacher, the student on the
//! tape, the objective and the backward (`micro_step` and its named parts), then AdamW, the
//! EMA teacher and the bank writes, all on the device; the step's scalars go back
//! asynchronously (`scalars`, `inflight`), so nothing in a step waits for the device.
//! With several data-parallel ranks, each gradient goes to the flat buffer as the last
//! backward finishes it and its bucket's exchange starts then (`distributed`); the step
//! waits for the exchanges before AdamW.
//!
//! Over 400 lines because the step's parts share one `Trainer` and the one list of scalars
//! (losses, finiteness, gradient norms, diagnostics) that the device checks and the host
//! logs; the `ibot` objective's changes live in `heads.rs`, the diagnostics in
//! `sop::diagnostics`.

use std::path::PathBuf;

use rand::Rng;

use crate::data::Batch;
use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::model::vit::{ForwardOptions, ParamVars, Vit, Weights};
use crate::ops::ema::ema_update_unless;
use crate::ops::finite::finite_check;
use crate::ops::gather::gather_rows;
use crate::rng::{
    image_rng, step_rng, IMAGE_BANK_PATCH, IMAGE_DROP_PATH_GLOBAL, IMAGE_DROP_PATH_LOCAL, STEP_DRAWS, STEP_KEEP,
};
use crate::sop::bank::Bank;
use crate::sop::diagnostics::{DiagnosticConstants, DiagnosticTensors, Diagnostics};
use crate::sop::ibot::Centers;
use crate::sop::objective::{
    prototypes_used, sop_objective_tensors_over, Embeddings, ObjectiveConfig, ObjectiveTensors, TaskDraw, TaskKind,
    TaskSet,
};
use crate::sop::prototypes::sample_keep;
use crate::tape::{Tape, Var};

use super::config::TrainConfig;
use super::distributed;
use super::inflight::{InFlight, Recorded, MAX_IN_FLIGHT};
use super::optimizer::AdamW;
use super::scalars::StepScalars;
use super::schedule;
use super::state::{self, Progress};

pub(super) struct Model {
    pub(super) vit: Vit,
    pub(super) student: Weights,
    pub(super) teacher: Weights,
}

/// Per-block drop-path scales for `views` views of the images at `places` (rows view-major,
/// views·B), each image's draws from its own stream (`image_rng` of its place in the step's
/// global batch), so how the ranks split the batch changes none. None when the rate is 0.
fn drop_path_scales(
    gpu: &Gpu,
    vit: &Vit,
    views: usize,
    places: &[u64],
    mut rng_of: impl FnMut(u64) -> rand::rngs::StdRng,
) -> Result<Option<Vec<[Tensor; 2]>>> {
    let cfg = &vit.cfg;
    if cfg.drop_path <= 0.0 {
        return Ok(None);
    }
    let b = places.len();
    // keep[blk][half][v·B + i], drawn per image in (blk, half, view) order.
    let mut keep = vec![[vec![0f32; views * b], vec![0f32; views * b]]; cfg.depth];
    for (i, &place) in places.iter().enumerate() {
        let mut rng = rng_of(place);
        for (blk, pair) in keep.iter_mut().enumerate() {
            let rate = cfg.drop_path_rate(blk);
            for half in pair.iter_mut() {
                for v in 0..views {
                    half[v * b + i] =
                        if rate > 0.0 && rng.random::<f64>() < rate { 0.0 } else { (1.0 / (1.0 - rate)) as f32 };
                }
            }
        }
    }
    let mut out = Vec::with_capacity(cfg.depth);
    for kp in &keep {
        let mut pair = Vec::with_capacity(2);
        for s in kp {
            pair.push(gpu.upload_f32(&[views * b], s)?);
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

/// The mutable state of a run.
pub(super) struct Trainer<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) cfg: &'a TrainConfig,
    pub(super) model: Model,
    pub(super) opt: AdamW,
    pub(super) cls_bank: Bank,
    pub(super) patch_bank: Bank,
    /// The `ibot` objective's teacher centres (None for SOP, whose banks are used instead).
    pub(super) centers: Option<Centers>,
    /// An epoch of the schedules in steps (shorter than the data's under `optim.max_steps`),
    /// and their whole length.
    pub(super) schedule_epoch: usize,
    pub(super) schedule_steps: usize,
    /// The run folder, its config as saved, and the step of the checkpoint it holds.
    pub(super) out: PathBuf,
    pub(super) config_toml: String,
    pub(super) saved_step: Option<usize>,
    /// The non-finite flag (1, u32): raised on the device by a step whose values are not
    /// finite, never lowered; AdamW, the EMA and the bank writes do nothing while it is set.
    pub(super) flag: Tensor,
    /// The diagnostics' constants where this process writes metrics.jsonl (rank 0); None
    /// elsewhere: the diagnostics are then not computed at all.
    pub(super) diagnostics: Option<DiagnosticConstants>,
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
    /// Further metrics by name (`StepScalars::extra`): cls_bank_cos and patch_bank_cos (the
    /// mean cosine between distinct rows of the [CLS] and patch banks the step read), the
    /// diagnostics of `sop::diagnostics` and prototypes_used, averaged over micro-batches.
    pub extras: Vec<(&'static str, f64)>,
}

/// Teacher rows a micro-batch leaves for the banks: [CLS] (B, W) and one patch per image.
pub(super) struct BankRows {
    pub(super) cls: Tensor,
    pub(super) patch: Tensor,
    pub(super) sources: Vec<i64>,
}

/// What one micro-batch leaves for the step: its objective, its embeddings' finiteness
/// word, its diagnostics (where metrics are written), its bank rows (SOP only) and its
/// KoLeo loss (1) when `sop.koleo_weight` > 0. Its parameter gradients go to the step's
/// `GradSink` as the backward finishes each.
type MicroStep = (ObjectiveTensors, Tensor, Option<DiagnosticTensors>, Option<BankRows>, Option<Tensor>);

/// Parameter `i`'s gradient of a micro-batch (None: it got none), handed over by the
/// backward as soon as it is whole (`Tape::backward_watching`).
type GradSink<'s> = dyn FnMut(usize, Option<Tensor>) -> Result<()> + 's;

/// One micro-batch's diagnostics (`sop::diagnostics`) and the prototypes its teacher rows
/// pick, logged with the step's scalars.
fn diagnostics(scalars: &mut StepScalars, obj: &ObjectiveTensors, diag: DiagnosticTensors) {
    let n = diag.gram.shape[0];
    let names = ["teacher_cls_erank", "target_entropy", "prototypes_effective"];
    scalars.extras(&names, &diag.tensors(), move |w| {
        let d = Diagnostics::from_words(n, w);
        vec![d.teacher_cls_erank, d.target_entropy, d.prototypes_effective]
    });
    let teacher_rows = obj.targets_cls.shape[0];
    scalars.extra("prototypes_used", &obj.agreement_idx[1], move |w| prototypes_used(teacher_rows, w) as f64);
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
    /// The tape's backward from the objective's embedding gradients (scaled by 1/n_micro),
    /// plus `koleo`'s gradient of the global [CLS] rows (2B, W; already scaled) if any: the
    /// gradient of every student parameter, each handed to `sink` once whole.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        gpu: &Gpu,
        tape: &mut Tape,
        p: &ParamVars,
        out: &ObjectiveTensors,
        koleo: Option<&Tensor>,
        b: usize,
        n_micro: usize,
        sink: &mut GradSink,
    ) -> Result<()> {
        let inv = 1.0 / n_micro as f32;
        // Scaling by 1 (no accumulation) is the identity: no dispatch.
        let scale = |t: &Tensor| match n_micro {
            1 => Ok(t.clone()),
            _ => crate::ops::elementwise::scale(gpu, t, inv),
        };
        let mut d_cls = scale(&gpu.slice_rows(&out.dstudent_cls, 0, 2 * b)?)?;
        if let Some(k) = koleo {
            d_cls = crate::ops::elementwise::add(gpu, &d_cls, k)?;
        }
        let mut seeds = vec![(&self.cls_global, d_cls), (&self.patch, scale(&out.dstudent_patch)?)];
        if let Some(sl) = &self.cls_local {
            let l = sl.value.shape[0];
            seeds.push((sl, scale(&gpu.slice_rows(&out.dstudent_cls, 2 * b, l)?)?));
        }
        tape.backward_watching(seeds, &p.vars, sink)?;
        Ok(())
    }
}

impl Trainer<'_> {
    /// Write the run's checkpoint of `step` into its folder. Every step's metrics must be in
    /// (`InFlight::settle` with `Until::Drained`), so a non-finite step has stopped the run
    /// before its state could be saved: a checkpoint with steps in flight is refused.
    pub(super) fn save(&mut self, step: usize, inflight: &InFlight) -> Result<()> {
        if !inflight.is_empty() {
            return Err(SopError::Invalid(format!(
                "internal: checkpoint of step {step} with {} steps' metrics not yet read",
                inflight.len()
            )));
        }
        // Rank 0 alone writes the run folder (data parallel, `distributed::save_folder`).
        let Some(dir) = super::distributed::save_folder(&self.out) else {
            self.saved_step = Some(step);
            return Ok(());
        };
        state::save_all(
            self.gpu,
            &dir,
            &self.cfg.model,
            self.cfg.objective,
            &self.config_toml,
            &self.model.student,
            &self.model.teacher,
            &self.opt,
            (&self.cls_bank, &self.patch_bank),
            &self.centers.as_ref().map_or(vec![], |c| c.tensors().to_vec()),
            &Progress { step, seed: self.cfg.run.seed, ranks: distributed::shard(0).ranks },
        )?;
        self.saved_step = Some(step);
        Ok(())
    }

    /// The error that stops the run at `step` (from 0) for `reason`.
    pub(super) fn stop(&self, step: usize, reason: String) -> SopError {
        SopError::TrainingStopped { step: step + 1, reason, folder: self.out.clone(), checkpoint: self.saved_step }
    }

    /// One optimiser step over `micro` batches (gradient accumulation); `step` counts from 0.
    /// Everything is recorded for the device and nothing is waited for: the step's metrics
    /// come back later (`Recorded::read`, collected by `inflight`). A non-finite loss,
    /// embedding or gradient raises the device's flag, and AdamW, the EMA and the bank
    /// writes of this and every later step then leave their buffers as they were.
    pub(super) fn step(&mut self, step: usize, micro: &[Batch]) -> Result<Recorded> {
        let (gpu, cfg) = (self.gpu, self.cfg);
        gpu.settle_pool();
        let o = &cfg.optim;
        // The global batch (every rank's) scales the learning rate.
        let scale_lr = (distributed::shard(cfg.data.batch_size).global_batch() * o.accumulate) as f64 / 256.0;
        let warmup = o.warmup_steps.unwrap_or(o.warmup_epochs * self.schedule_epoch);
        let total = self.schedule_steps;
        let lr = schedule::cosine(step, total, warmup, 0.0, o.lr * scale_lr, o.min_lr);
        let wd = schedule::cosine(step, total, 0, o.weight_decay, o.weight_decay, o.weight_decay_end);
        let momentum = schedule::cosine(step, total, 0, o.momentum_teacher, o.momentum_teacher, o.momentum_teacher_end);
        let obj_cfg = cfg.objective(step, self.schedule_epoch);

        let n_params = self.model.student.tensors.len();
        let mut grads: Vec<Option<Tensor>> = vec![None; n_params];
        let mut bank_rows = Vec::with_capacity(micro.len());
        let mut scalars = StepScalars::default();
        let mut checks = Vec::with_capacity(micro.len());
        // With several ranks, the gradients' exchange starts during the last backward.
        let mut overlapped = distributed::overlapped_mean(self.opt.grads_flat(), &self.model.student.layout)?;
        for (mi, batch) in micro.iter().enumerate() {
            let last = mi + 1 == micro.len();
            // Each gradient as the backward finishes it: added to the earlier micro-batches',
            // and after the last one copied into the flat buffer (its exchange may start).
            let mut sink = |i: usize, g: Option<Tensor>| -> Result<()> {
                grads[i] = match (grads[i].take(), g) {
                    (Some(a), Some(g)) => Some(crate::ops::elementwise::add(gpu, &a, &g)?),
                    (a, g) => a.or(g),
                };
                if last {
                    if self.prototypes_frozen(step, i) {
                        grads[i] = None;
                    }
                    self.opt.copy_grad(gpu, i, grads[i].as_ref())?;
                    distributed::slot_written(gpu, overlapped.as_mut(), i)?;
                }
                Ok(())
            };
            let (obj, embed_check, diag, rows, koleo) =
                self.micro_step(step, mi, batch, &obj_cfg, micro.len(), &mut sink)?;
            // The words the device checks before AdamW: the task losses, then the
            // embeddings' finiteness word.
            let mut parts: Vec<&Tensor> = obj.cls_losses.iter().chain(&obj.mim_losses).collect();
            parts.push(&embed_check);
            let c = gpu.concat_rows(&parts)?;
            scalars.micro(
                obj.cls_losses.len(),
                obj.mim_losses.len(),
                &c,
                [&obj.agreement_idx[0], &obj.agreement_idx[1]],
            );
            checks.push(c);
            if let Some(diag) = diag {
                diagnostics(&mut scalars, &obj, diag);
            }
            if let Some(k) = koleo {
                scalars.extra("loss_koleo", &k, |w| f32::from_bits(w[0]) as f64);
            }
            bank_rows.extend(rows);
        }
        self.opt.note_has_grad(gpu, grads.iter().map(Option::is_some).collect())?;
        // Diagnostics of the banks this step read (before its writes); `ibot` uses none.
        if self.centers.is_none() {
            let (cn, pn) = (self.cls_bank.len(), self.patch_bank.len());
            let cos = |n: usize| move |w: &[u32]| Bank::mean_cosine(f32::from_bits(w[0]) as f64, n);
            scalars.extra("cls_bank_cos", &self.cls_bank.sum_norm_sq(gpu)?, cos(cn));
            scalars.extra("patch_bank_cos", &self.patch_bank.sum_norm_sq(gpu)?, cos(pn));
        }

        // Every rank's gradients and loss words averaged (data parallel; nothing with one rank).
        distributed::mean_over_ranks(gpu, self.opt.grads_flat(), overlapped, &checks)?;
        let checks = gpu.concat_rows(&checks.iter().collect::<Vec<_>>())?;
        let sq = self.opt.sum_squares(gpu)?.clone();
        drop(grads);
        let clip = (o.clip_grad > 0.0).then_some((o.clip_grad, o.clip_mode));
        let student = &self.model.student;
        self.opt.apply(gpu, student, lr as f32, wd as f32, clip, (&checks, checks.numel()), &self.flag)?;
        scalars.optimiser(&sq, &self.flag);
        let teacher = &self.model.teacher;
        ema_update_unless(gpu, &teacher.flat, &student.flat, momentum as f32, &self.flag)?;
        // Frozen parameters (ibot's unit gain) are not averaged: the teacher keeps the
        // student's, which nothing changes. SOP has none.
        if self.centers.is_some() {
            for (i, name) in student.names.iter().enumerate() {
                if crate::sop::ibot::is_frozen(name) {
                    gpu.copy(&student.tensors[i], &teacher.tensors[i])?;
                }
            }
        }
        // The banks were read by the objective above; now they take this step's rows.
        for rows in bank_rows {
            let rows = self.gather_bank_rows(rows)?;
            self.cls_bank.push_unless(gpu, &rows.cls, &rows.sources, Some(&self.flag))?;
            self.patch_bank.push_unless(gpu, &rows.patch, &rows.sources, Some(&self.flag))?;
        }
        let gathered = scalars.gather(gpu)?;
        // Up to MAX_IN_FLIGHT steps' reads wait in `InFlight` when this one starts, and a
        // blocking read may take one more: made now, so whether an earlier read happens to
        // be back yet (the device's and the MPI thread's timing) never creates a buffer later.
        gpu.reserve_staging(gathered.bytes().max(4), MAX_IN_FLIGHT + 2);
        let read = gpu.read_async(&gathered)?;
        Ok(Recorded { step, lr, weight_decay: wd, teacher_temp: obj_cfg.teacher_temp as f64, momentum, scalars, read })
    }

    /// Forward, objective and backward of one micro-batch: its objective (losses still on
    /// the device), its embeddings' finiteness check (`finite_check`), the rows it
    /// leaves for the banks, and the gradient of every student parameter (scaled by
    /// 1/n_micro) handed to `sink` as the backward finishes it.
    fn micro_step(
        &self,
        step: usize,
        mi: usize,
        batch: &Batch,
        obj_cfg: &ObjectiveConfig,
        n_micro: usize,
        sink: &mut GradSink,
    ) -> Result<MicroStep> {
        let gpu = self.gpu;
        let (b, n) = (batch.batch_size, batch.grid.0 * batch.grid.1);
        let s = batch.global_size;
        let globals = gpu.upload_f32(&[2 * b, 3, s, s], &batch.globals)?;
        let masks = gpu.upload_u32(&[2 * b, n], &batch.masks)?;
        let (t_cls, t_patch, z_cls) = self.teacher_forward(&globals)?;
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
        // All four embeddings' finiteness as one word (+0.0 or NaN), checked with the step's
        // other scalars (`step`).
        let embed_check = finite_check(gpu, &[&student.cls, &student.patch.value, &t_cls, &t_patch])?;
        let koleo = self.koleo(&student.cls_global.value, b, n_micro)?;
        let (koleo_loss, koleo_grad) = koleo.map_or((None, None), |(l, g)| (Some(l), Some(g)));
        student.backward(gpu, &mut tape, &p, &out, koleo_grad.as_ref(), b, n_micro, sink)?;
        let diag = match &self.diagnostics {
            Some(c) => Some(c.diagnostics(gpu, &gpu.slice_rows(&z_cls, 0, b)?, &out.targets_cls)?),
            None => None,
        };
        let rows = match self.centers {
            None => Some(self.bank_rows(step, mi, batch, &t_cls, &t_patch)?),
            Some(_) => None,
        };
        Ok((out, embed_check, diag, rows, koleo_loss))
    }

    /// SOP.md's w·KoLeo on the student [CLS] rows of each global view (2B, W; one group of B
    /// per view, the two views' terms summed as DINOv2 does): its loss (1, unweighted, logged
    /// as `loss_koleo`) and its gradient w/n_micro · ∂KoLeo/∂rows. None when w is 0.
    /// With R ranks the nearest neighbours are over the global batch: every rank's rows are
    /// gathered (R·2B, one group of R·B per view), and this rank keeps its rows' gradient,
    /// scaled by R since the ranks' gradients are averaged, not summed.
    fn koleo(&self, cls_global: &Tensor, b: usize, n_micro: usize) -> Result<Option<(Tensor, Tensor)>> {
        use crate::ops::koleo::{koleo_backward, koleo_forward, KOLEO_EPS};
        let w = self.cfg.sop.koleo_weight;
        if w == 0.0 {
            return Ok(None);
        }
        let ranks = distributed::shard(b).ranks;
        let all = distributed::gather_views(self.gpu, cls_global, 2)?;
        let (loss, saved) = koleo_forward(self.gpu, &all, ranks * b, KOLEO_EPS)?;
        let scale = w * ranks as f32 / n_micro as f32;
        let grad = koleo_backward(self.gpu, &all, &saved, ranks * b, KOLEO_EPS, scale)?;
        Ok(Some((loss, distributed::own_views(self.gpu, &grad, 2)?)))
    }

    /// Step 1, the teacher (no grad) on the unmasked global crops: [CLS] (2B, W), patches
    /// (2B, N, W) (widths K for `ibot`), and the unit [CLS] head rows (2B, W).
    fn teacher_forward(&self, globals: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (gpu, vit) = (self.gpu, &self.model.vit);
        let mut tape = Tape::no_grad(gpu);
        let p = self.model.teacher.leaves(&mut tape, false);
        let x = tape.constant(globals.clone());
        let tokens = vit.backbone(&mut tape, &p, &x, &ForwardOptions::default())?;
        let (h, z_cls) = self.teacher_head(&mut tape, &p, &tokens)?;
        let (c, r) = tape.tokens_split(&h)?;
        let z_cls = z_cls.unwrap_or_else(|| c.value.clone());
        Ok((c.value, r.value, z_cls))
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
        let seed = self.cfg.run.seed;
        let places: Vec<u64> = (0..b).map(|i| distributed::shard(b).image_place(mi, i)).collect();
        let dp_g = drop_path_scales(gpu, vit, 2, &places, |g| image_rng(seed, step, g, IMAGE_DROP_PATH_GLOBAL))?;
        let x = tape.constant(globals);
        let tokens = vit.backbone(tape, p, &x, &ForwardOptions { mask: Some(masks), drop_path: dp_g.as_deref() })?;
        let h = self.head(tape, p, &tokens)?;
        let (cls_global, patch) = tape.tokens_split(&h)?;
        let cls_local = if l > 0 {
            let dp_l = drop_path_scales(gpu, vit, l, &places, |g| image_rng(seed, step, g, IMAGE_DROP_PATH_LOCAL))?;
            let xl = tape.constant(gpu.upload_f32(&[l * b, 3, ls, ls], &batch.locals)?);
            let tokens = vit.backbone(tape, p, &xl, &ForwardOptions { mask: None, drop_path: dp_l.as_deref() })?;
            let (cls, _) = tape.tokens_split(&tokens)?;
            Some(self.head(tape, p, &cls)?)
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
        if let Some(centers) = &self.centers {
            let hp = self.cfg.ibot_step(step, self.schedule_epoch);
            let over_ranks = |means: &[&Tensor]| distributed::mean_now(self.gpu, means);
            return crate::sop::ibot::ibot_objective_tensors_over(self.gpu, &hp, emb, centers, &over_ranks);
        }
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
        let choose_keep = |nb: &_, kind, _| {
            let (pc, bank) = match kind {
                TaskKind::Cls => (&obj_cfg.cls, &self.cls_bank),
                TaskKind::Patch => (&obj_cfg.patch, &self.patch_bank),
            };
            sample_keep(gpu, nb, pc.anchors, bank.len() - pc.anchors, sampling, &mut keep_rng)
        };
        // With several ranks, `sop.center_teacher_cls` centres on the global batch's mean.
        let over_ranks = |means: &[&Tensor]| distributed::mean_now(gpu, means);
        sop_objective_tensors_over(gpu, obj_cfg, emb, cls, patch, choose_keep, &over_ranks)
    }

    /// Step 4, what the banks take after the step: the second view's teacher [CLS] rows and one
    /// random teacher patch row per image (drawn from the image's own stream).
    fn bank_rows(&self, step: usize, mi: usize, batch: &Batch, t_cls: &Tensor, t_patch: &Tensor) -> Result<BankRows> {
        let gpu = self.gpu;
        let (b, n, w) = (batch.batch_size, batch.grid.0 * batch.grid.1, self.cfg.model.head_bottleneck);
        let cls = gpu.slice_rows(t_cls, b, b)?;
        let shard = distributed::shard(b);
        let pick: Vec<u32> = (0..b)
            .map(|i| {
                let mut rng = image_rng(self.cfg.run.seed, step, shard.image_place(mi, i), IMAGE_BANK_PATCH);
                ((b + i) * n + rng.random_range(0..n)) as u32
            })
            .collect();
        let patch = gather_rows(gpu, &t_patch.reshape(&[2 * b * n, w])?, &gpu.upload_u32(&[b], &pick)?)?;
        let sources = batch.indices.iter().map(|&i| i as i64).collect();
        Ok(BankRows { cls, patch, sources })
    }
}
