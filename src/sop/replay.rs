//! Replaying the objective on the contents of a `sop objective --inputs` file: the GPU
//! objective with the file's draws instead of fresh ones. Used by the CLI and the tests
//! that compare it with the f64 reference and the PyTorch implementation.

use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::sop::bank::Bank;
use crate::sop::objective::{sop_objective, Embeddings, ObjectiveConfig, TaskDraw, TaskSet};
use crate::sop::objective_io::{BankInputs, ObjectiveInputs, WIDTH};
use crate::sop::prototypes::{Keep, PrototypeConfig};

/// The objective's outputs on the host.
pub struct Replayed {
    pub loss_cls: f32,
    pub loss_mim: f32,
    pub loss: f32,
    pub dstudent_cls: Vec<f32>,
    pub dstudent_patch: Vec<f32>,
}

fn draws(b: &BankInputs) -> Vec<TaskDraw> {
    let n = b.rows();
    (0..b.tasks)
        .map(|t| TaskDraw {
            perm: b.perm[t * n..(t + 1) * n].iter().map(|&i| i as u32).collect(),
            keep: (b.experts > 1).then(|| b.keep[t * b.kept()..(t + 1) * b.kept()].iter().map(|&i| i as u32).collect()),
        })
        .collect()
}

pub fn replay(gpu: &Gpu, inp: &ObjectiveInputs) -> Result<Replayed> {
    if inp.global_views != 2 {
        return Err(SopError::Invalid(format!("global_views = {}; SOP uses 2 global views", inp.global_views)));
    }
    let (b, t, l) = (inp.batch, inp.tokens, inp.local_views);
    let cfg = ObjectiveConfig {
        cls: PrototypeConfig { anchors: inp.cls.anchors, experts: inp.cls.experts, tasks: inp.cls.tasks },
        patch: PrototypeConfig { anchors: inp.patch.anchors, experts: inp.patch.experts, tasks: inp.patch.tasks },
        smoothing: inp.smoothing as f32,
        student_temp: inp.student_temp as f32,
        teacher_temp: inp.teacher_temp as f32,
        center_teacher_cls: false,
    };
    let student_cls = gpu.upload_f32(&[(2 + l) * b, WIDTH], &inp.student_cls)?;
    let teacher_cls = gpu.upload_f32(&[2 * b, WIDTH], &inp.teacher_cls)?;
    let student_patch = gpu.upload_f32(&[2 * b, t, WIDTH], &inp.student_patch)?;
    let teacher_patch = gpu.upload_f32(&[2 * b, t, WIDTH], &inp.teacher_patch)?;
    let bank = |bi: &BankInputs| Bank::from_parts(gpu, bi.rows(), WIDTH, &bi.bank, 0, vec![-1; bi.rows()]);
    let (cls_bank, patch_bank) = (bank(&inp.cls)?, bank(&inp.patch)?);
    let emb = Embeddings {
        student_cls: &student_cls,
        teacher_cls: &teacher_cls,
        student_patch: &student_patch,
        teacher_patch: &teacher_patch,
        masks: &inp.masks,
        batch: b,
        local_views: l,
    };
    // Every draw from a file carries its kept anchors, so `choose_keep` is never asked.
    let (cls_draws, patch_draws) = (draws(&inp.cls), draws(&inp.patch));
    let (cls, patch) =
        (TaskSet { bank: &cls_bank, draws: &cls_draws }, TaskSet { bank: &patch_bank, draws: &patch_draws });
    let out = sop_objective(gpu, &cfg, &emb, cls, patch, |_, _, _| Ok(Keep::Listed(Vec::new())))?;
    Ok(Replayed {
        loss_cls: out.loss_cls,
        loss_mim: out.loss_mim,
        loss: out.loss,
        dstudent_cls: gpu.read_f32(&out.dstudent_cls)?,
        dstudent_patch: gpu.read_f32(&out.dstudent_patch)?,
    })
}
