//! `sop objective --inputs FILE --out FILE`: replay the SOP objective on given embeddings,
//! banks and random draws (format in `sop::objective_io`), so it can be checked against any
//! other implementation. `--check` also runs the f64 CPU reference and prints the relative
//! errors.

use std::path::PathBuf;

use super::AdapterArg;
use crate::sop::objective_io::{write_objective_outputs, ObjectiveInputs};
use crate::sop::replay::replay;

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
    /// Overwrite --out if it exists (never allowed when it is one of the inputs).
    #[arg(long)]
    pub force: bool,
}

/// ‖got − want‖ / ‖want‖.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (*g as f64 - w).powi(2)).sum::<f64>().sqrt();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt().max(1e-30);
    num / den
}

pub fn run(args: ObjectiveArgs) -> anyhow::Result<()> {
    super::check_output(&args.out, &[&args.inputs], args.force)?;
    let inp = ObjectiveInputs::load(&args.inputs)?;
    let gpu = args.adapter.gpu()?;
    let r = replay(&gpu, &inp).map_err(|e| anyhow::anyhow!("{}: {e}", args.inputs.display()))?;
    write_objective_outputs(&args.out, &inp, r.loss_cls, r.loss_mim, r.loss, &r.dstudent_cls, &r.dstudent_patch)?;
    println!(
        "loss {:.6} (cls {:.6}, mim {:.6}) -> {} on {}",
        r.loss,
        r.loss_cls,
        r.loss_mim,
        args.out.display(),
        gpu.adapter_name()
    );
    if args.check {
        let c = sop_reference::sop_objective::sop_objective(&inp.to_reference());
        println!(
            "vs f64 reference (relative errors): loss_cls {:.2e}, loss_mim {:.2e}, dstudent_cls {:.2e}, dstudent_patch {:.2e}",
            (r.loss_cls as f64 - c.loss_cls).abs() / c.loss_cls.abs().max(1e-30),
            (r.loss_mim as f64 - c.loss_mim).abs() / c.loss_mim.abs().max(1e-30),
            rel_err(&r.dstudent_cls, &c.dstudent_cls),
            rel_err(&r.dstudent_patch, &c.dstudent_patch)
        );
    }
    Ok(())
}
