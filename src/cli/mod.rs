//! Subcommands of `sop`. Each lives in its own file with its argument struct and `run`.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod config;
pub mod embed;
pub mod eval;
pub mod info;
pub mod objective;
pub mod pictures;
pub mod plot;
pub mod preview;
pub mod settings;
pub mod train;
pub mod weights;

#[derive(Parser, Debug)]
#[command(name = "sop", version, about = "Self-Organizing Visual Prototypes: ViT pre-training in WGSL on any GPU")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Adapter selection shared by every subcommand that touches the GPU.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AdapterArg {
    /// Adapter to use: an index from `sop info` or part of its name (default: the best
    /// hardware adapter; also read from SOP_ADAPTER).
    #[arg(long, value_name = "NAME|INDEX")]
    pub adapter: Option<String>,
}

impl AdapterArg {
    /// The device, with the `SOP_MATMUL`, `SOP_SOFT_ASSIGN` and `SOP_ATTENTION` overrides
    /// checked (and the first two fixed) before any work.
    pub fn gpu(&self) -> anyhow::Result<crate::gpu::Gpu> {
        let gpu = crate::gpu::Gpu::new(self.adapter.as_deref())?;
        if std::env::var_os("SOP_MATMUL").is_some() {
            crate::ops::matmul::MatmulVariant::for_adapter(&gpu)?;
        }
        if std::env::var_os("SOP_SOFT_ASSIGN").is_some() {
            crate::ops::soft_assign_variant::SoftAssignVariant::for_adapter(&gpu)?;
        }
        crate::ops::attention_variant::AttentionVariant::from_env()?;
        Ok(gpu)
    }
}

/// An image set and the split to read, shared by the subcommands that walk one dataset.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArg {
    /// Images: a folder (class subfolders or flat; recursive), an IDX file, or a directory of
    /// IDX files.
    #[arg(long)]
    pub data: std::path::PathBuf,
    /// Which split when the data holds both: train or test.
    #[arg(long, default_value = "train")]
    pub split: crate::data::Split,
}

impl DataArg {
    pub fn open(&self) -> anyhow::Result<crate::data::Dataset> {
        Ok(crate::data::Dataset::open(&self.data, self.split)?)
    }
}

/// Refuses an output file that is one of the command's inputs or lies in an input folder (even
/// with --force), a folder, or an existing file unless `force`: no command writes over what
/// it reads, and only `--force` writes over what is already there.
pub fn check_output(out: &std::path::Path, inputs: &[&std::path::Path], force: bool) -> anyhow::Result<()> {
    if let Ok(o) = out.canonicalize() {
        if let Some(i) = inputs.iter().find(|i| i.canonicalize().is_ok_and(|i| o.starts_with(i))) {
            let (o, i) = (out.display(), i.display());
            anyhow::bail!("{o}: is also an input of this command ({i}); write to another file");
        }
    }
    if out.is_dir() {
        anyhow::bail!("{}: is a folder; --out names the file to write", out.display());
    }
    if out.exists() && !force {
        anyhow::bail!("{}: already exists; pass --force to overwrite it", out.display());
    }
    Ok(())
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List GPU adapters with their backend, type and the limits that matter.
    Info(info::InfoArgs),
    /// Time every kernel on the chosen adapter (validated against the CPU reference first).
    Bench(bench::BenchArgs),
    /// Pre-train a ViT with SOP (no arguments: the small default run on the bundled data).
    Train(train::TrainArgs),
    /// Print the fully resolved training configuration (recipe, --config, --set, flags) as TOML.
    Config(config::ConfigArgs),
    /// Evaluate a checkpoint's frozen backbone.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Write the final-norm [CLS] features of every image of a folder to safetensors.
    Embed(embed::EmbedArgs),
    /// Replay the SOP objective on embeddings, banks and draws from a file.
    Objective(objective::ObjectiveArgs),
    /// The last block's [CLS] attention per head over an image, as a PNG.
    Attention(pictures::AttentionArgs),
    /// A few prototypes of a run's [CLS] bank: the images behind the anchor and its SEs.
    Prototypes(pictures::PrototypesArgs),
    /// Draw a run's curves (losses, k-NN, diagnostics, schedules) from its metrics.jsonl as a PNG.
    Plot(plot::PlotArgs),
    /// Write a PNG grid of sample images, their global and local crops and masks.
    Preview(preview::PreviewArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::Config(a) => config::run(a),
        Command::Eval(c) => eval::run(c),
        Command::Embed(a) => embed::run(a),
        Command::Objective(a) => objective::run(a),
        Command::Attention(a) => pictures::attention(a),
        Command::Prototypes(a) => pictures::prototypes(a),
        Command::Plot(a) => plot::run(a),
        Command::Preview(a) => preview::run(a),
    }
}
