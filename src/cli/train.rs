//! `sop train`: SOP pre-training (or the `--objective ibot` baseline). With no arguments it trains the small default model on the
//! bundled Fashion-MNIST subset and prints the k-NN accuracy before and after.

use std::path::PathBuf;

use super::AdapterArg;
use crate::train::{self, config::TrainConfig};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// A TOML file with any of the hyper-parameters (see the run folder's config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training images: an image folder (one subfolder per class, or flat) or an IDX directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Labelled folder for the k-NN training features (default: --data's train split).
    #[arg(long)]
    pub knn_train: Option<PathBuf>,
    /// Labelled folder for the k-NN validation features (default: --data's test split).
    #[arg(long)]
    pub knn_val: Option<PathBuf>,
    /// Run folder for the config, metrics and checkpoints (default runs/default; with
    /// --resume, the resumed folder). It must not hold another run's files.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder (its saved configuration is used; it is written to
    /// unless --out names another, empty folder).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// What the student learns: `sop` (self-organizing prototypes from the memory banks) or
    /// `ibot` (the parametric baseline: a learned prototype layer with teacher centring,
    /// `ibot.*` in the config).
    #[arg(long, value_enum)]
    pub objective: Option<crate::train::config::Objective>,
    /// vit_tiny, vit_small, vit_base (the width/depth/heads of a preset).
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub dim: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub depth: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub heads: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub patch_size: Option<usize>,
    /// Input size of the model (the global crop size too).
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub img_size: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub batch_size: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub epochs: Option<usize>,
    /// Stop after this many optimiser steps (0 writes the initial weights).
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub steps: Option<usize>,
    /// Peak learning rate for a batch of 256.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub local_crops: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub accumulate: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub checkpoint_every: Option<usize>,
    /// k-NN evaluation every N epochs.
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub eval_every: Option<usize>,
    /// Skip the k-NN evaluations.
    #[arg(long)]
    pub no_eval: bool,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
    /// Time every kernel (each dispatch waited for alone: slower) and print the table at the end.
    #[arg(long)]
    pub profile_kernels: bool,
}

/// A resumed run's configuration: its own (saved in its train state), with only the length
/// (`--epochs`, `--steps`, or those of `--config`), the folder (`--out`, else the run's own)
/// and `--no-eval` taken from the command line; any other setting is refused.
fn resolve_resume(args: &TrainArgs, dir: &std::path::Path) -> anyhow::Result<TrainConfig> {
    let fixed = [
        ("--data", args.data.is_some()),
        ("--knn-train", args.knn_train.is_some()),
        ("--knn-val", args.knn_val.is_some()),
        ("--objective", args.objective.is_some()),
        ("--arch", args.arch.is_some()),
        ("--dim", args.dim.is_some()),
        ("--depth", args.depth.is_some()),
        ("--heads", args.heads.is_some()),
        ("--patch-size", args.patch_size.is_some()),
        ("--img-size", args.img_size.is_some()),
        ("--batch-size", args.batch_size.is_some()),
        ("--lr", args.lr.is_some()),
        ("--local-crops", args.local_crops.is_some()),
        ("--accumulate", args.accumulate.is_some()),
        ("--seed", args.seed.is_some()),
        ("--checkpoint-every", args.checkpoint_every.is_some()),
        ("--eval-every", args.eval_every.is_some()),
    ];
    let given: Vec<&str> = fixed.iter().filter(|f| f.1).map(|f| f.0).collect();
    if !given.is_empty() {
        anyhow::bail!(
            "{}: a resumed run keeps its own configuration (its config.toml); {} cannot change it \
             (only --epochs, --steps, --out and --no-eval apply)",
            dir.display(),
            given.join(", ")
        );
    }
    let mut cfg = crate::train::state::saved_config(dir)?;
    if let Some(p) = &args.config {
        let c = TrainConfig::load(p)?;
        (cfg.optim.epochs, cfg.optim.steps) = (c.optim.epochs, c.optim.steps);
    }
    if let Some(e) = args.epochs {
        cfg.optim.epochs = e;
    }
    if args.steps.is_some() {
        cfg.optim.steps = args.steps;
    }
    cfg.run.out = args.out.clone().unwrap_or_else(|| dir.to_path_buf());
    cfg.run.no_eval |= args.no_eval;
    Ok(cfg)
}

/// A count flag: a negative number is read as a value (not as an unknown flag) and refused
/// in words.
fn count(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|_| format!("{s:?} is not a whole number of at least 0"))
}

pub fn resolve(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    if let Some(dir) = &args.resume {
        return resolve_resume(args, dir);
    }
    let mut cfg = match &args.config {
        Some(p) => TrainConfig::load(p)?,
        None => TrainConfig::default(),
    };
    if let Some(a) = &args.arch {
        let preset = crate::model::config::VitConfig::from_arch(a)?;
        cfg.model.dim = preset.dim;
        cfg.model.depth = preset.depth;
        cfg.model.heads = preset.heads;
    }
    macro_rules! set {
        ($field:expr, $arg:expr) => {
            if let Some(v) = $arg.clone() {
                $field = v;
            }
        };
    }
    set!(cfg.data.path, args.data);
    if args.knn_train.is_some() {
        cfg.data.knn_train = args.knn_train.clone();
    }
    if args.knn_val.is_some() {
        cfg.data.knn_val = args.knn_val.clone();
    }
    set!(cfg.run.out, args.out);
    set!(cfg.objective, args.objective);
    // With no --data (here or in --config), the bundled subset, wherever sop is run from.
    if args.data.is_none() && cfg.data.path == std::path::Path::new(crate::train::config::BUNDLED_DATA) {
        cfg.data.path = crate::train::config::bundled_data();
    }
    set!(cfg.model.dim, args.dim);
    set!(cfg.model.depth, args.depth);
    set!(cfg.model.heads, args.heads);
    cfg.set_shape(args.patch_size, args.img_size);
    set!(cfg.data.batch_size, args.batch_size);
    set!(cfg.optim.epochs, args.epochs);
    if args.steps.is_some() {
        cfg.optim.steps = args.steps;
    }
    set!(cfg.optim.lr, args.lr);
    set!(cfg.augment.local_crops, args.local_crops);
    set!(cfg.optim.accumulate, args.accumulate);
    set!(cfg.run.seed, args.seed);
    set!(cfg.run.checkpoint_every, args.checkpoint_every);
    set!(cfg.run.eval_every, args.eval_every);
    cfg.run.no_eval |= args.no_eval;
    Ok(cfg)
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = resolve(&args)?;
    let gpu = args.adapter.gpu()?;
    eprintln!("adapter: {}", gpu.adapter_name());
    if args.profile_kernels {
        gpu.enable_kernel_profile();
    }
    let summary = train::train(&gpu, cfg, args.resume.as_deref(), !args.quiet)?;
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
