//! `sop plot --run RUN --out F.png`: a run's curves (loss terms, k-NN, bank cosines,
//! effective rank, targets, learning rate, momentum) against the step, from its metrics.jsonl.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// A run folder written by `sop train` (or its metrics.jsonl).
    #[arg(long)]
    pub run: PathBuf,
    /// The PNG to write (default: plot.png in the run folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let out = match &args.out {
        Some(o) => o.clone(),
        None if args.run.is_dir() => args.run.join(crate::train::state::PLOT),
        None if !args.run.exists() => anyhow::bail!("{}: no such run folder", args.run.display()),
        None => anyhow::bail!("{}: is not a run folder; pass --out for the PNG", args.run.display()),
    };
    // The default picture in the run folder is the run's own, redrawn: no --force needed.
    super::check_output(&out, &[], args.force || args.out.is_none())?;
    crate::plot::plot_run(&args.run, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}
