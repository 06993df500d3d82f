//! `sop train`: SOP pre-training (or the `--objective ibot` baseline). With no arguments it trains the small default model on the
//! bundled Fashion-MNIST subset and prints the k-NN accuracy before and after.

use std::path::PathBuf;

use super::settings::SettingArgs;
use super::AdapterArg;
use crate::train::{self, config::TrainConfig};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Continue the run in this folder (its saved configuration is used; it is written to
    /// unless --out names another, empty folder).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
    /// Time every kernel (each dispatch waited for alone: slower) and print the table at the end.
    #[arg(long)]
    pub profile_kernels: bool,
}

/// A resumed run's configuration: its own (saved in its train state), with only the length
/// (`--epochs`, `--steps`, or those of `--config`), the folder (`--out`, else the run's own)
/// and `--no-eval` taken from the command line; any other setting (`--recipe` and `--set`
/// too) is refused.
fn resolve_resume(s: &SettingArgs, dir: &std::path::Path) -> anyhow::Result<TrainConfig> {
    let given = s.fixed_by_resume();
    if !given.is_empty() {
        anyhow::bail!(
            "{}: a resumed run keeps its own configuration (its config.toml); {} cannot change it \
             (only --epochs, --steps, --out and --no-eval apply)",
            dir.display(),
            given.join(", ")
        );
    }
    let mut cfg = crate::train::state::saved_config(dir)?;
    if let Some(p) = &s.config {
        let c = TrainConfig::load(p)?;
        (cfg.optim.epochs, cfg.optim.steps) = (c.optim.epochs, c.optim.steps);
    }
    if let Some(e) = s.epochs {
        cfg.optim.epochs = e;
    }
    if s.steps.is_some() {
        cfg.optim.steps = s.steps;
    }
    cfg.run.out = s.out.clone().unwrap_or_else(|| dir.to_path_buf());
    cfg.run.no_eval |= s.no_eval;
    Ok(cfg)
}

pub fn resolve(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    match &args.resume {
        Some(dir) => resolve_resume(&args.settings, dir),
        None => args.settings.resolve(),
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = resolve(&args)?;
    // Data parallel: local rank i takes adapter i (`dist::adapter_for_rank`).
    let adapter = crate::cli::AdapterArg { adapter: crate::dist::adapter_for_rank(args.adapter.adapter.as_deref()) };
    let gpu = adapter.gpu()?;
    let d = crate::dist::world();
    match d.is_distributed() {
        true => eprintln!("rank {} of {}: adapter {}", d.rank(), d.size(), gpu.adapter_name()),
        false => eprintln!("adapter: {}", gpu.adapter_name()),
    }
    if args.settings.auto_batch() {
        crate::train::memory::auto_batch(&gpu, &mut cfg)?;
    }
    if args.profile_kernels {
        gpu.enable_kernel_profile();
    }
    let summary = train::train(&gpu, cfg, args.resume.as_deref(), !args.quiet)?;
    if !d.is_root() {
        return Ok(()); // rank 0 reports the run
    }
    println!(
        "trained {} steps in {:.1} s on {}; run folder {}",
        summary.steps,
        summary.seconds,
        gpu.adapter_name(),
        summary.out.display()
    );
    if let Some(table) = gpu.kernel_profile_table() {
        println!("{table}");
    }
    if let Some(l) = summary.final_loss {
        println!("final loss {l:.4}");
    }
    if let Some(k) = summary.knn_before {
        println!("k-NN before: top-1 {:.2}%  top-5 {:.2}%", k.top1, k.top5);
    }
    if let Some(k) = summary.knn_after {
        println!(
            "k-NN after:  top-1 {:.2}%  top-5 {:.2}%  (k = {}, {} train / {} val images)",
            k.top1, k.top5, k.k, k.n_train, k.n_val
        );
    }
    Ok(())
}
