//! The SOP objective on the GPU (docs/METHOD.md "Losses"): [CLS] loss across views and the
//! SOP-MIM patch loss, averaged over tasks, with gradients for the student embeddings only.
//!
//! Shape letters as in src/lib.rs. Per task, with prototypes D (M, W) and Y (M, P′):
//!   P(u) = softmax(u·Dᵀ/τ)·Y                       (ops::soft_assign_variant: matmul +
//!                                                   soft_assign, or the fused flash kernel)
//!   [CLS]: student rows ((2+L)·B) vs teacher rows (2B). Since H(q, p) is linear in q, the
//!     sum over teacher views j ≠ i of H(q_j, p_i) is H(Σ_{j≠i} q_j, p_i): the targets are
//!     Q = Sel·q_t with a 0/1 selection matrix Sel ((2+L)B, 2B), and the weights
//!     1/(B · pairs · tasks), pairs = 2 + 2L.
//!   MIM: student patch rows of masked view i vs teacher rows of the same view, weight
//!     mask / max(1, masked count of that image) / (2B · tasks).
//! Backward: dp = −w·q/p (cross_entropy), dlogits = soft_assign_backward, du = dlogits·D
//! (or the flash backward, which fuses the last two).

use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::cross_entropy::{cross_entropy_backward, cross_entropy_forward};
use crate::ops::elementwise::add;
use crate::ops::matmul::Matmul;
use crate::ops::soft_assign::Votes;
use crate::ops::soft_assign_variant::{assign_backward, assign_forward, SoftAssignVariant};
use crate::ops::topk::topk_forward;
use crate::sop::bank::Bank;
use crate::sop::prototypes::{build, Keep, PrototypeConfig, Prototypes};

/// Hyper-parameters of the objective.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectiveConfig {
    pub cls: PrototypeConfig,
    pub patch: PrototypeConfig,
    pub smoothing: f32,
    pub student_temp: f32,
    pub teacher_temp: f32,
    /// `sop.center_teacher_cls`: the teacher's [CLS] targets from the cosine of the
    /// batch-centred rows (`centred_teacher`; a departure from SOP.md).
    #[serde(default)]
    pub center_teacher_cls: bool,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            cls: PrototypeConfig { anchors: 64, experts: 9, tasks: 4 },
            patch: PrototypeConfig { anchors: 512, experts: 1, tasks: 1 },
            smoothing: 0.1,
            student_temp: 0.1,
            teacher_temp: 0.04,
            center_teacher_cls: false,
        }
    }
}

/// The random draws of one step: per task a bank permutation and (E > 1) the kept anchors.
/// `keep` entries may be None, in which case `choose` draws them once the SEs are known.
pub struct TaskDraw {
    pub perm: Vec<u32>,
    pub keep: Option<Vec<u32>>,
}

/// Embeddings of one step. Rows are view-major: view v of image b is row v·B + b.
pub struct Embeddings<'a> {
    /// ((2+L)·B, W), the 2 global views first.
    pub student_cls: &'a Tensor,
    /// (2B, W).
    pub teacher_cls: &'a Tensor,
    /// (2B, N, W): the patch tokens of the masked global views.
    pub student_patch: &'a Tensor,
    /// (2B, N, W): the patch tokens of the unmasked global views.
    pub teacher_patch: &'a Tensor,
    /// (2B·N) host masks, 1 = masked.
    pub masks: &'a [u8],
    pub batch: usize,
    pub local_views: usize,
}

/// The objective as device tensors, before any readback: what a training step keeps on the
/// GPU until its one read of the step's scalars.
pub struct ObjectiveTensors {
    /// One (1) loss tensor per [CLS] task and per patch task.
    pub cls_losses: Vec<Tensor>,
    pub mim_losses: Vec<Tensor>,
    pub dstudent_cls: Tensor,
    pub dstudent_patch: Tensor,
    /// Arg-max prototype of each [CLS] student row and of its target (first task), u32.
    pub agreement_idx: [Tensor; 2],
    /// The teacher's [CLS] targets of the first task, (2B, P′), for the diagnostics.
    pub targets_cls: Tensor,
}

impl ObjectiveTensors {
    /// The tensors whose words `finish_words` expects, in its order.
    pub fn scalar_tensors(&self) -> Vec<&Tensor> {
        self.cls_losses.iter().chain(&self.mim_losses).chain(&self.agreement_idx).collect()
    }

    /// The output, from the words of `scalar_tensors` read back (one read for many).
    pub fn finish_words(self, words: &[Vec<u32>]) -> ObjectiveOutput {
        let s = ObjectiveScalars::from_words(self.cls_losses.len(), self.mim_losses.len(), words);
        let iq = &words[self.cls_losses.len() + self.mim_losses.len() + 1];
        ObjectiveOutput {
            loss_cls: s.loss_cls,
            loss_mim: s.loss_mim,
            loss: s.loss,
            dstudent_cls: self.dstudent_cls,
            dstudent_patch: self.dstudent_patch,
            agreement_cls: s.agreement_cls,
            prototypes_used: prototypes_used(self.targets_cls.shape[0], iq),
        }
    }

    /// Read the scalars back (one wait) and return the output.
    pub fn finish(self, gpu: &Gpu) -> Result<ObjectiveOutput> {
        let words = gpu.read_words(&self.scalar_tensors())?;
        Ok(self.finish_words(&words))
    }
}

/// Distinct prototypes among the teacher's arg-maxes `iq` (student-row order): target rows
/// 0..`teacher_rows` are the teacher's views (swapped), one each (`sop::diagnostics`).
pub fn prototypes_used(teacher_rows: usize, iq: &[u32]) -> usize {
    let used: std::collections::BTreeSet<u32> = iq[..teacher_rows.min(iq.len())].iter().copied().collect();
    used.len()
}

/// The objective's scalars, from the words of `ObjectiveTensors::scalar_tensors`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectiveScalars {
    pub loss_cls: f32,
    pub loss_mim: f32,
    pub loss: f32,
    pub agreement_cls: f32,
}

impl ObjectiveScalars {
    /// From `n_cls` [CLS] task losses, `n_mim` patch task losses and the two arg-max
    /// vectors, in `scalar_tensors` order.
    pub fn from_words(n_cls: usize, n_mim: usize, words: &[Vec<u32>]) -> ObjectiveScalars {
        let (nc, nm) = (n_cls, n_mim);
        let f = |w: &Vec<u32>| f32::from_bits(w[0]);
        // Summed in task order in f32, as the tasks' losses always were.
        let loss_cls = words[..nc].iter().map(f).fold(0.0f32, |a, x| a + x);
        let loss_mim = words[nc..nc + nm].iter().map(f).fold(0.0f32, |a, x| a + x);
        let (ip, iq) = (&words[nc + nm], &words[nc + nm + 1]);
        let same = ip.iter().zip(iq).filter(|(a, b)| a == b).count();
        ObjectiveScalars {
            loss_cls,
            loss_mim,
            loss: loss_cls + loss_mim,
            agreement_cls: same as f32 / ip.len().max(1) as f32,
        }
    }
}

pub struct ObjectiveOutput {
    pub loss_cls: f32,
    pub loss_mim: f32,
    pub loss: f32,
    /// Same shapes as the student inputs.
    pub dstudent_cls: Tensor,
    pub dstudent_patch: Tensor,
    /// Fraction of [CLS] student rows whose most likely prototype is the target's (first task).
    pub agreement_cls: f32,
    /// Distinct prototypes that are the most likely one of at least one teacher [CLS] row
    /// (first task; `sop::diagnostics`).
    pub prototypes_used: usize,
}

/// Y as SOP builds it: member m of prototype m / E, one value off the owner's column.
fn owned_votes(proto: &Prototypes) -> Votes<'_> {
    Votes::Owned { y: &proto.votes, experts: proto.members.shape[0] / proto.kept.max(1) }
}

/// The distribution P(u) (R, P′) = softmax(u·Dᵀ/τ)·Y, by the adapter's soft-assign variant;
/// D = `members` (M, W), the prototypes' member rows or a transform of them.
fn assign(gpu: &Gpu, u: &Tensor, members: &Tensor, proto: &Prototypes, tau: f32) -> Result<Tensor> {
    let v = SoftAssignVariant::for_adapter(gpu)?;
    Ok(assign_forward(gpu, v, u, members, owned_votes(proto), tau)?.0)
}

/// `sop.center_teacher_cls` (a departure from SOP.md; docs/RECIPE.md): x ↦ (x − c)/‖x − c‖
/// per row, c (W) the mean of the teacher [CLS] rows of the batch. Applied to the teacher
/// rows and to the members D, the teacher's logits become cos(u − c, d − c)/τ_t: the part c
/// every embedding shares (whose term c·d decides uncentred targets once the bank crowds)
/// is gone, and the logits keep their [−1, 1]/τ_t range however crowded the bank is.
struct Centring {
    neg_mean: Tensor,
}

impl Centring {
    /// c = the mean of x's rows, averaged over the ranks by `over_ranks`.
    fn of_rows(gpu: &Gpu, x: &Tensor, over_ranks: &dyn Fn(&[&Tensor]) -> Result<()>) -> Result<Centring> {
        let sum = crate::ops::reduce::sum_rows(gpu, x)?;
        let neg_mean = crate::ops::elementwise::scale(gpu, &sum, -1.0 / x.shape[0] as f32)?;
        over_ranks(&[&neg_mean])?;
        Ok(Centring { neg_mean })
    }

    fn apply(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let centred = crate::ops::elementwise::add_broadcast(gpu, x, &self.neg_mean)?;
        Ok(crate::ops::l2norm::l2norm_forward(gpu, &centred, 1e-6)?.0)
    }
}

/// One cross-entropy term: loss (a (1) tensor), and du (R, W) of the student rows.
fn term(
    gpu: &Gpu,
    u_s: &Tensor,
    target: &Tensor,
    w: &Tensor,
    proto: &Prototypes,
    tau_s: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let v = SoftAssignVariant::for_adapter(gpu)?;
    let votes = owned_votes(proto);
    let (p_s, saved) = assign_forward(gpu, v, u_s, &proto.members, votes, tau_s)?;
    let loss = cross_entropy_forward(gpu, target, &p_s, w)?;
    let dp = cross_entropy_backward(gpu, target, &p_s, w, 1.0)?;
    let du = assign_backward(gpu, v, u_s, &proto.members, votes, tau_s, &p_s, &saved, &dp)?;
    Ok((loss, du, p_s))
}

/// Checks the shapes of `e`; returns N, the patches per view.
pub(crate) fn check(op: &'static str, e: &Embeddings) -> Result<usize> {
    let (b, l) = (e.batch, e.local_views);
    let w = e.teacher_cls.shape.get(1).copied().unwrap_or(0);
    let bad = |what: &str, t: &Tensor, want: &[usize]| {
        Err(SopError::shape(op, format!("{what} {:?}, expected {want:?}", t.shape)))
    };
    if e.student_cls.shape != [(2 + l) * b, w] {
        return bad("student_cls", e.student_cls, &[(2 + l) * b, w]);
    }
    if e.teacher_cls.shape != [2 * b, w] {
        return bad("teacher_cls", e.teacher_cls, &[2 * b, w]);
    }
    let t = e.student_patch.shape.get(1).copied().unwrap_or(0);
    if e.student_patch.shape != [2 * b, t, w] {
        return bad("student_patch", e.student_patch, &[2 * b, t, w]);
    }
    if e.teacher_patch.shape != [2 * b, t, w] {
        return bad("teacher_patch", e.teacher_patch, &[2 * b, t, w]);
    }
    if e.masks.len() != 2 * b * t {
        return Err(SopError::shape(op, format!("{} mask entries for {} patch rows", e.masks.len(), 2 * b * t)));
    }
    Ok(t)
}

/// Which bank, prototypes and loss a task belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// [CLS] bank, the [CLS] loss across views.
    Cls,
    /// Patch bank, the SOP-MIM loss on masked patches.
    Patch,
}

/// One kind's tasks: its bank and one random draw per task.
#[derive(Clone, Copy)]
pub struct TaskSet<'a> {
    pub bank: &'a Bank,
    pub draws: &'a [TaskDraw],
}

/// The whole objective: `cls` and `patch` have one draw per task; a draw whose `keep` is
/// None gets it from `choose_keep(neighbours, kind, task)`; the neighbours stay on the
/// device (the 1/CV rule draws there too, `sop::prototypes::sample_keep`).
pub fn sop_objective(
    gpu: &Gpu,
    cfg: &ObjectiveConfig,
    e: &Embeddings,
    cls: TaskSet,
    patch: TaskSet,
    choose_keep: impl FnMut(&crate::sop::prototypes::Neighbours, TaskKind, usize) -> Result<Keep>,
) -> Result<ObjectiveOutput> {
    sop_objective_tensors(gpu, cfg, e, cls, patch, choose_keep)?.finish(gpu)
}

/// What differs between the two task kinds: the rows compared and their weights.
struct KindTerms<'a> {
    kind: TaskKind,
    set: TaskSet<'a>,
    protos: &'a PrototypeConfig,
    /// Teacher rows assigned to the prototypes, and the student rows that learn from them.
    teacher: Tensor,
    student: Tensor,
    /// [CLS]: targets = Sel · q (the other views summed); patches: the teacher's own row.
    select: Option<Tensor>,
    /// Per student row loss weight.
    weights: Tensor,
}

/// [CLS] pairing of student view v with every teacher global view j ≠ v: the selection
/// matrix Sel ((2+L)B, 2B) with a 1 at (v·B + b, j·B + b), and the uniform row weights
/// 1/(B · pairs · tasks), pairs = 2 + 2L. The `ibot` objective pairs its rows the same way.
pub(crate) fn cls_pairing(gpu: &Gpu, b: usize, l: usize, tasks: usize) -> Result<(Tensor, Tensor)> {
    let rows_s = (2 + l) * b;
    let pairs = (2 + 2 * l) as f32;
    let mut sel = vec![0f32; rows_s * 2 * b];
    for v in 0..2 + l {
        for j in 0..2 {
            if j != v {
                for i in 0..b {
                    sel[(v * b + i) * 2 * b + j * b + i] = 1.0;
                }
            }
        }
    }
    Ok((
        gpu.upload_f32(&[rows_s, 2 * b], &sel)?,
        gpu.upload_f32(&[rows_s], &vec![1.0 / (b as f32 * pairs * tasks as f32); rows_s])?,
    ))
}

/// [CLS]: selection matrix and weights of `cls_pairing`.
fn cls_terms<'a>(gpu: &Gpu, cfg: &'a ObjectiveConfig, e: &Embeddings, set: TaskSet<'a>) -> Result<KindTerms<'a>> {
    let (select, weights) = cls_pairing(gpu, e.batch, e.local_views, cfg.cls.tasks)?;
    Ok(KindTerms {
        kind: TaskKind::Cls,
        set,
        protos: &cfg.cls,
        teacher: e.teacher_cls.clone(),
        student: e.student_cls.clone(),
        select: Some(select),
        weights,
    })
}

/// Masked-patch row weights (2B·T): mask / (max(1, masked count of the image) · 2B · tasks),
/// so each (view, image) pair weighs 1/(2B · tasks) whatever its masked count, and an image
/// with no masked patch adds 0 but still counts in 2B. The `ibot` objective weighs its
/// patch rows the same way.
pub(crate) fn mim_weights(gpu: &Gpu, masks: &[u8], b: usize, t: usize, tasks: usize) -> Result<Tensor> {
    let mut w_mim = vec![0f32; 2 * b * t];
    for img in 0..2 * b {
        let m = &masks[img * t..(img + 1) * t];
        let count = m.iter().filter(|&&x| x != 0).count().max(1) as f32;
        for (k, &x) in m.iter().enumerate() {
            if x != 0 {
                w_mim[img * t + k] = 1.0 / (count * 2.0 * b as f32 * tasks as f32);
            }
        }
    }
    gpu.upload_f32(&[2 * b * t], &w_mim)
}

/// SOP-MIM: patch rows (2B·T, W) with the weights of `mim_weights`.
fn patch_terms<'a>(
    gpu: &Gpu,
    cfg: &'a ObjectiveConfig,
    e: &Embeddings,
    set: TaskSet<'a>,
    t: usize,
) -> Result<KindTerms<'a>> {
    let (b, w) = (e.batch, e.teacher_cls.shape[1]);
    Ok(KindTerms {
        kind: TaskKind::Patch,
        set,
        protos: &cfg.patch,
        teacher: e.teacher_patch.reshape(&[2 * b * t, w])?,
        student: e.student_patch.reshape(&[2 * b * t, w])?,
        select: None,
        weights: mim_weights(gpu, e.masks, b, t, cfg.patch.tasks)?,
    })
}

/// `sop_objective` without the readback: losses and agreement stay on the device.
pub fn sop_objective_tensors(
    gpu: &Gpu,
    cfg: &ObjectiveConfig,
    e: &Embeddings,
    cls: TaskSet,
    patch: TaskSet,
    choose_keep: impl FnMut(&crate::sop::prototypes::Neighbours, TaskKind, usize) -> Result<Keep>,
) -> Result<ObjectiveTensors> {
    sop_objective_tensors_over(gpu, cfg, e, cls, patch, choose_keep, &|_| Ok(()))
}

/// `sop_objective_tensors` where `over_ranks` replaces the batch mean of the teacher [CLS]
/// rows that `sop.center_teacher_cls` centres on by its mean over data-parallel ranks (each
/// rank's mean is over the same count), so the centring follows the global batch; the
/// identity on one rank.
pub fn sop_objective_tensors_over(
    gpu: &Gpu,
    cfg: &ObjectiveConfig,
    e: &Embeddings,
    cls: TaskSet,
    patch: TaskSet,
    mut choose_keep: impl FnMut(&crate::sop::prototypes::Neighbours, TaskKind, usize) -> Result<Keep>,
    over_ranks: &dyn Fn(&[&Tensor]) -> Result<()>,
) -> Result<ObjectiveTensors> {
    let t = check("sop_objective", e)?;
    if cls.draws.len() != cfg.cls.tasks
        || patch.draws.len() != cfg.patch.tasks
        || cfg.cls.tasks == 0
        || cfg.patch.tasks == 0
    {
        return Err(SopError::Invalid(format!(
            "sop_objective: {} [CLS] and {} patch draws for {} and {} tasks",
            cls.draws.len(),
            patch.draws.len(),
            cfg.cls.tasks,
            cfg.patch.tasks
        )));
    }
    let kinds = [cls_terms(gpu, cfg, e, cls)?, patch_terms(gpu, cfg, e, patch, t)?];
    let centring = match cfg.center_teacher_cls {
        true => Some(Centring::of_rows(gpu, e.teacher_cls, over_ranks)?),
        false => None,
    };
    // Per kind: the tasks' losses and the summed gradient of the student rows.
    let mut losses: [Vec<Tensor>; 2] = [Vec::new(), Vec::new()];
    let mut grads: [Option<Tensor>; 2] = [None, None];
    let mut agreement_idx = None;
    let mut targets_cls = None;
    for (k, terms) in kinds.iter().enumerate() {
        for (task, draw) in terms.set.draws.iter().enumerate() {
            let proto = build(gpu, terms.set.bank, &draw.perm, terms.protos, cfg.smoothing, |nb| match &draw.keep {
                Some(keep) => Ok(Keep::Listed(keep.clone())),
                None => choose_keep(nb, terms.kind, task),
            })?;
            let q = match (&centring, terms.kind) {
                (Some(c), TaskKind::Cls) => {
                    let (u, d) = (c.apply(gpu, &terms.teacher)?, c.apply(gpu, &proto.members)?);
                    assign(gpu, &u, &d, &proto, cfg.teacher_temp)?
                }
                _ => assign(gpu, &terms.teacher, &proto.members, &proto, cfg.teacher_temp)?,
            };
            let target = match &terms.select {
                Some(sel) => Matmul::new(sel, &q).run(gpu)?,
                None => q.clone(),
            };
            let q_first = q;
            let (loss, du, p_s) = term(gpu, &terms.student, &target, &terms.weights, &proto, cfg.student_temp)?;
            losses[k].push(loss);
            grads[k] = Some(match grads[k].take() {
                Some(acc) => add(gpu, &acc, &du)?,
                None => du,
            });
            if terms.kind == TaskKind::Cls && task == 0 {
                agreement_idx = Some(argmax_pair(gpu, &p_s, &target)?);
                targets_cls = Some(q_first);
            }
        }
    }
    let [dcls, dpatch] = grads;
    let [cls_losses, mim_losses] = losses;
    let dstudent_cls = dcls.expect("at least one task").reshape(&e.student_cls.shape)?;
    let dstudent_patch = dpatch.expect("at least one task").reshape(&e.student_patch.shape)?;
    let agreement_idx = agreement_idx.expect("at least one task");
    let targets_cls = targets_cls.expect("at least one task");
    Ok(ObjectiveTensors { cls_losses, mim_losses, dstudent_cls, dstudent_patch, agreement_idx, targets_cls })
}

/// Arg-max rows of two (R, P′) distributions (the agreement metric compares them).
pub(crate) fn argmax_pair(gpu: &Gpu, p: &Tensor, q: &Tensor) -> Result<[Tensor; 2]> {
    let (_, ip) = topk_forward(gpu, p, 1)?;
    let (_, iq) = topk_forward(gpu, q, 1)?;
    Ok([ip, iq])
}
