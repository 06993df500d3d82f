//! `sop bench`: time every kernel on the chosen adapter (see `crate::bench`).

use super::AdapterArg;
use crate::bench::{self, Options};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// Only kernels whose name (or kernel/variant) contains one of these comma-separated words.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Repetitions per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let gpu = args.adapter.gpu()?;
    let adapter = gpu.adapter_name();
    let opts = Options { filter: args.filter.clone(), reps: args.reps, ..Options::default() };
    let matmul = crate::ops::matmul::MatmulVariant::for_adapter(&gpu)?.name();
    if args.json {
        eprintln!("adapter: {adapter}; default matmul variant: {matmul}");
    } else {
        println!("adapter: {adapter}; default matmul variant: {matmul}");
        println!("{}", bench::TABLE_HEADER);
    }
    let results = bench::run(&gpu, &opts, |m| {
        if args.json {
            println!("{}", m.json(&adapter));
        } else {
            println!("{}", bench::table_row(m));
        }
    })?;
    if results.is_empty() {
        anyhow::bail!("no benchmark matches --filter {:?}", args.filter.unwrap_or_default());
    }
    if !args.json {
        for line in bench::ratios(&results) {
            println!("{line}");
        }
    }
    Ok(())
}
