//! Subcommands of `sop`. Each lives in its own file with its argument struct and `run`.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod info;
pub mod preview;

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
    pub fn gpu(&self) -> anyhow::Result<crate::gpu::Gpu> {
        Ok(crate::gpu::Gpu::new(self.adapter.as_deref())?)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List GPU adapters with their backend, type and the limits that matter.
    Info(info::InfoArgs),
    /// Time every kernel on the chosen adapter (validated against the CPU reference first).
    Bench(bench::BenchArgs),
    /// Write a PNG grid of sample images, their global and local crops and masks.
    Preview(preview::PreviewArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Preview(a) => preview::run(a),
    }
}
