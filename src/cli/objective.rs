//! `sop objective --inputs FILE --out FILE`: replay the SOP objective on given embeddings,
//! banks and random draws (format in `sop::objective_io`), so it can be checked against any
//! other implementation. `--check` also runs the f64 CPU reference and prints the relative
//! errors.

use std::path::PathBuf;

use super::AdapterArg;
use crate::sop::bank::Bank;
use crate::sop::objective::{sop_objective, Embeddings, ObjectiveConfig, TaskDraw};
use crate::sop::objective_io::{write_objective_outputs, BankInputs, ObjectiveInputs, WIDTH};
use crate::sop::prototypes::PrototypeConfig;

#[derive(clap::Args, Debug)]
pub struct ObjectiveArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// Input safetensors (embeddings, banks, permutations, kept anchors; see README).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Output safetensors: loss_cls, loss_mim, loss, dstudent_cls, dstudent_patch.
    #[arg(long)]
    pub out: PathBuf,
    /// Compare with the f64 CPU reference and print the relative errors.
    #[arg(long)]
    pub check: bool,
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

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (*g as f64 - w).powi(2)).sum::<f64>().sqrt();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt().max(1e-30);
    num / den
}

pub fn run(args: ObjectiveArgs) -> anyhow::Result<()> {
    let inp = ObjectiveInputs::load(&args.inputs)?;
    if inp.global_views != 2 {
        anyhow::bail!("{}: global_views = {}; SOP uses 2 global views", args.inputs.display(), inp.global_views);
    }
    let gpu = args.adapter.gpu()?;
    let (b, t, l) = (inp.batch, inp.tokens, inp.local_views);
    let cfg = ObjectiveConfig {
        cls: PrototypeConfig { anchors: inp.cls.anchors, experts: inp.cls.experts, tasks: inp.cls.tasks },
        patch: PrototypeConfig { anchors: inp.patch.anchors, experts: inp.patch.experts, tasks: inp.patch.tasks },
        smoothing: inp.smoothing as f32,
        student_temp: inp.student_temp as f32,
        teacher_temp: inp.teacher_temp as f32,
    };
    let student_cls = gpu.upload_f32(&[(2 + l) * b, WIDTH], &inp.student_cls)?;
    let teacher_cls = gpu.upload_f32(&[2 * b, WIDTH], &inp.teacher_cls)?;
    let student_patch = gpu.upload_f32(&[2 * b, t, WIDTH], &inp.student_patch)?;
    let teacher_patch = gpu.upload_f32(&[2 * b, t, WIDTH], &inp.teacher_patch)?;
    let bank = |bi: &BankInputs| Bank::from_parts(&gpu, bi.rows(), WIDTH, &bi.bank, 0, vec![-1; bi.rows()]);
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
    let out = sop_objective(&gpu, &cfg, &emb, &cls_bank, &patch_bank, &draws(&inp.cls), &draws(&inp.patch), |_, _| {
        unreachable!("every draw in the file has its kept anchors")
    })?;
    let dcls = gpu.read_f32(&out.dstudent_cls)?;
    let dpatch = gpu.read_f32(&out.dstudent_patch)?;
    write_objective_outputs(&args.out, &inp, out.loss_cls, out.loss_mim, out.loss, &dcls, &dpatch)?;
    println!("loss {:.6} (cls {:.6}, mim {:.6}) -> {} on {}", out.loss, out.loss_cls, out.loss_mim, args.out.display(), gpu.adapter_name());
    if args.check {
        let r = sop_reference::sop_objective::sop_objective(&inp.to_reference());
        println!(
            "vs f64 reference: loss_cls {:.2e}, loss_mim {:.2e}, dstudent_cls {:.2e}, dstudent_patch {:.2e} (relative errors)",
            (out.loss_cls as f64 - r.loss_cls).abs() / r.loss_cls.abs().max(1e-30),
            (out.loss_mim as f64 - r.loss_mim).abs() / r.loss_mim.abs().max(1e-30),
            rel_err(&dcls, &r.dstudent_cls),
            rel_err(&dpatch, &r.dstudent_patch)
        );
    }
    Ok(())
}
