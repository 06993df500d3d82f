//! The parametric baseline of `sop train --objective ibot` (iBOT, Zhou et al., ICLR 2022;
//! DINO's head and centring): what SOP replaces, on the same backbone, head MLP, data,
//! masks and schedules, with the memory banks neither read nor written.
//!
//! Shape letters as in src/lib.rs, plus K prototypes (`ibot.prototypes`).
//! - Prototype layer (`prototype_logits`): the head's L2-normalised output z (…, W) times
//!   the weight-normalised prototypes, logits = z · (v / ‖v‖)ᵀ (…, K): PyTorch's
//!   `weight_norm(Linear(W, K, bias=False))` with its gain g frozen at 1, as DINO/iBOT's
//!   `norm_last_layer=True`. Composed of existing ops (l2norm of v's rows, then a linear),
//!   so its backward is theirs. The checkpoint names are the authors':
//!   `head.last_layer.weight_v` (K, W), trained, and `head.last_layer.weight_g` (K, 1), ones,
//!   kept for PyTorch's `weight_norm` and never updated (no gradient, no EMA).
//! - Teacher targets: q = softmax((t − c)/τ_t) for [CLS] rows and softmax((t − c2)/τ_t2) for
//!   patch rows, c and c2 (K) the centres, EMAs of the teacher's mean logits (`Centers`).
//! - Student: p = softmax(s/τ_s). [CLS] loss across views and masked-patch loss pair and
//!   weigh rows exactly as SOP's (`objective::cls_pairing`, `objective::mim_weights`):
//!   L_cls = mean over (student view v, teacher view j ≠ v) pairs and images of
//!   H(q_j, p_v); L_mim = mean over views and images of the mean over masked patches of
//!   H(q2, p2). H(q, p) = −Σ q log p through `cross_entropy` (p clamped at 1e-30, which
//!   never binds: |s| ≤ 1 for unit z and unit prototypes, so p_k ≥ e^(−2/τ_s)/K, and
//!   `TrainConfig::validate` keeps that above 1e-26).
//!   Backward: dp = −w·q/p, then the softmax backward ds = (1/τ_s)·p ⊙ (dp − Σ p·dp)
//!   = (w/τ_s)(p·Σq − q).
//! - Centres after each micro-batch, in place: c ← m·c + (1 − m)·mean of the 2B teacher
//!   [CLS] rows, c2 likewise over the 2B·N teacher patch rows (`ema_update`), m =
//!   `ibot.center_momentum` (0.9). With several data-parallel ranks the two means are
//!   averaged over the ranks first (`ibot_objective_tensors_over`): the global batch's.
//!
//! The reference is kernels-tests/src/ibot_objective.rs (f64), tested in
//! kernels-tests/tests/kernels/ibot_objective.rs.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::model::params::{Init, ParamSpec};
use crate::model::vit::ParamVars;
use crate::ops::cross_entropy::{cross_entropy_backward, cross_entropy_forward};
use crate::ops::ema::ema_update;
use crate::ops::matmul::Matmul;
use crate::ops::reduce::sum_rows;
use crate::ops::softmax::{softmax_backward, softmax_forward};
use crate::sop::objective::{argmax_pair, check, cls_pairing, mim_weights, Embeddings, ObjectiveTensors};
use crate::tape::{Tape, Var};

/// The trained prototype directions, (K, W).
pub const WEIGHT_V: &str = "head.last_layer.weight_v";
/// The frozen gain, (K, 1) ones.
pub const WEIGHT_G: &str = "head.last_layer.weight_g";

/// `[ibot]` in a training config: the baseline's own hyper-parameters. The temperatures
/// τ_s and τ_t (with its warm-up) are `sop.student_temp` and `sop.teacher_temp`, shared
/// with the SOP objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IbotConfig {
    /// K, the rows of the prototype layer (iBOT uses 8192; 1024 suits the small runs).
    pub prototypes: usize,
    /// τ_t2, the teacher temperature of the patch targets (iBOT's `teacher_patch_temp`);
    /// during the teacher-temperature warm-up it rises from `sop.warmup_teacher_temp`.
    pub teacher_patch_temp: f32,
    /// m of the centres' EMA (iBOT's `center_momentum`, also used for the patch centre).
    pub center_momentum: f32,
    /// The prototype layer gets no update during the first epochs (iBOT's
    /// `freeze_last_layer`: its gradient is dropped, so AdamW skips it, decay included).
    pub freeze_last_layer_epochs: usize,
}

impl Default for IbotConfig {
    fn default() -> Self {
        IbotConfig { prototypes: 1024, teacher_patch_temp: 0.07, center_momentum: 0.9, freeze_last_layer_epochs: 1 }
    }
}

/// The prototype layer's parameters for head width `w`. v starts as PyTorch's default
/// Linear init, U(±1/√W) (DINO's head initialises its MLP before creating `last_layer`).
pub fn param_specs(w: usize, k: usize) -> Vec<ParamSpec> {
    let bound = 1.0 / (w as f64).sqrt();
    vec![
        ParamSpec {
            name: WEIGHT_V.into(),
            shape: vec![k, w],
            decay: true,
            init: Init::Uniform { lo: -bound, hi: bound },
        },
        ParamSpec { name: WEIGHT_G.into(), shape: vec![k, 1], decay: false, init: Init::Ones },
    ]
}

/// Whether a parameter is held fixed (neither trained nor averaged into the teacher).
pub fn is_frozen(name: &str) -> bool {
    name == WEIGHT_G
}

/// logits (…, K) = h (…, W) · (v / ‖v‖ per row)ᵀ on the tape.
pub fn prototype_logits(tape: &mut Tape, p: &ParamVars, h: &Var) -> Result<Var> {
    // PyTorch's weight_norm has no epsilon; 1e-12 only guards a zero row.
    let vn = tape.l2norm(p.get(WEIGHT_V)?, 1e-12)?;
    tape.linear(h, &vn, None)
}

/// The teacher's logit centres (K each), carried from step to step and in the train state.
pub struct Centers {
    pub cls: Tensor,
    pub patch: Tensor,
}

impl Centers {
    /// The train-state names: iBOTLoss's buffers `center` and `center2`.
    pub const NAMES: [&'static str; 2] = ["ibot_loss.center", "ibot_loss.center2"];

    /// Zeros, as iBOT starts them.
    pub fn zeros(gpu: &Gpu, k: usize) -> Result<Centers> {
        Ok(Centers { cls: gpu.zeros(&[k], DType::F32)?, patch: gpu.zeros(&[k], DType::F32)? })
    }

    pub fn tensors(&self) -> [(&'static str, &Tensor); 2] {
        [(Self::NAMES[0], &self.cls), (Self::NAMES[1], &self.patch)]
    }
}

/// Temperatures and centre momentum of one step.
#[derive(Clone, Copy, Debug)]
pub struct IbotStep {
    pub student_temp: f32,
    pub teacher_temp: f32,
    pub teacher_patch_temp: f32,
    pub center_momentum: f32,
}

/// softmax((t − c)/τ) per row of t (R, K).
fn targets(gpu: &Gpu, t: &Tensor, c: &Tensor, tau: f32) -> Result<Tensor> {
    let centred = crate::ops::elementwise::add_broadcast(gpu, t, &crate::ops::elementwise::scale(gpu, c, -1.0)?)?;
    softmax_forward(gpu, &centred, 1.0 / tau)
}

/// Loss (1) and ds (R, K) of H(target, softmax(s/τ_s)) with row weights w; p_s also.
fn term(gpu: &Gpu, s: &Tensor, target: &Tensor, w: &Tensor, tau_s: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let p = softmax_forward(gpu, s, 1.0 / tau_s)?;
    let loss = cross_entropy_forward(gpu, target, &p, w)?;
    let dp = cross_entropy_backward(gpu, target, &p, w, 1.0)?;
    let ds = softmax_backward(gpu, &p, &dp, 1.0 / tau_s)?;
    Ok((loss, ds, p))
}

/// The column mean (K) of x (R, K).
fn column_mean(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    crate::ops::elementwise::scale(gpu, &sum_rows(gpu, x)?, 1.0 / x.shape[0] as f32)
}

/// The iBOT objective on logits `e` (widths K): losses, agreement and the student logits'
/// gradients left on the device, as the SOP objective's; the centres are read for the
/// targets, then updated in place.
pub fn ibot_objective_tensors(gpu: &Gpu, hp: &IbotStep, e: &Embeddings, centers: &Centers) -> Result<ObjectiveTensors> {
    ibot_objective_tensors_over(gpu, hp, e, centers, &|_| Ok(()))
}

/// `ibot_objective_tensors` where `over_ranks` replaces the two batch means the centres
/// move towards (the teacher's [CLS] and patch logits', (K) each) by their mean over the
/// data-parallel ranks, so the centres follow the global batch (the identity on one rank).
pub fn ibot_objective_tensors_over(
    gpu: &Gpu,
    hp: &IbotStep,
    e: &Embeddings,
    centers: &Centers,
    over_ranks: &dyn Fn(&[&Tensor]) -> Result<()>,
) -> Result<ObjectiveTensors> {
    let n = check("ibot_objective", e)?;
    let (b, k) = (e.batch, e.teacher_cls.shape[1]);
    let (select, w_cls) = cls_pairing(gpu, b, e.local_views, 1)?;
    let q_teacher = targets(gpu, e.teacher_cls, &centers.cls, hp.teacher_temp)?;
    let q = Matmul::new(&select, &q_teacher).run(gpu)?;
    let (loss_cls, dcls, p_cls) = term(gpu, e.student_cls, &q, &w_cls, hp.student_temp)?;
    let t_patch = e.teacher_patch.reshape(&[2 * b * n, k])?;
    let q2 = targets(gpu, &t_patch, &centers.patch, hp.teacher_patch_temp)?;
    let w_mim = mim_weights(gpu, e.masks, b, n, 1)?;
    let (loss_mim, dpatch, _) = term(gpu, &e.student_patch.reshape(&[2 * b * n, k])?, &q2, &w_mim, hp.student_temp)?;
    let agreement_idx = argmax_pair(gpu, &p_cls, &q)?;
    // c ← m·c + (1 − m)·(column mean of the teacher rows), likewise c2.
    let means = [column_mean(gpu, e.teacher_cls)?, column_mean(gpu, &t_patch)?];
    over_ranks(&[&means[0], &means[1]])?;
    ema_update(gpu, &centers.cls, &means[0], hp.center_momentum)?;
    ema_update(gpu, &centers.patch, &means[1], hp.center_momentum)?;
    Ok(ObjectiveTensors {
        cls_losses: vec![loss_cls],
        mim_losses: vec![loss_mim],
        dstudent_cls: dcls,
        dstudent_patch: dpatch.reshape(&e.student_patch.shape)?,
        agreement_idx,
        targets_cls: q_teacher,
    })
}
