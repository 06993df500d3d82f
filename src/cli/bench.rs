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
    /// Run the matmul autotune now and print its table: every variant timed on the product
    /// the start-up choice uses (256³ on CPU adapters, where a rule picks instead); on other
    /// adapters the choice is stored in the autotune cache for later runs.
    #[arg(long, conflicts_with = "step")]
    pub autotune: bool,
    /// Time whole training steps instead of kernels (the default run's model unless the
    /// options below say otherwise): ms per step, images/s and per-step counters.
    #[arg(long)]
    pub step: bool,
    /// With --step: vit_tiny, vit_small, vit_base, vit_large.
    #[arg(long, requires = "step")]
    pub arch: Option<String>,
    /// With --step: patch side in pixels.
    #[arg(long, requires = "step")]
    pub patch_size: Option<usize>,
    /// With --step: image (global crop) side in pixels.
    #[arg(long, requires = "step")]
    pub img_size: Option<usize>,
    /// With --step: images per step.
    #[arg(long, requires = "step")]
    pub batch_size: Option<usize>,
    /// With --step: training images (default: the bundled data). Without --step: benchmark
    /// the data loader (decode + the recipe's multi-crop augmentation, no GPU) on this folder.
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Loader benchmark: whose crops to make (small: 2 x 28 px; paper: 2 x 224 + 10 x 96 px).
    #[arg(long, value_enum, requires = "data", conflicts_with = "step")]
    pub recipe: Option<crate::train::recipe::Recipe>,
    /// Loader benchmark: first write this many generated ImageNet-like JPEGs (500 x 375) into
    /// --data, which must not exist yet.
    #[arg(long, requires = "data", conflicts_with = "step")]
    pub generate: Option<usize>,
    /// Loader benchmark: decoding threads (default: one per core).
    #[arg(long, requires = "data", conflicts_with = "step")]
    pub threads: Option<usize>,
    /// With --step: steps timed after the banks filled.
    #[arg(long, requires = "step")]
    pub steps: Option<usize>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let (false, Some(dir)) = (args.step, &args.data) {
        return loader_bench(&args, dir);
    }
    let gpu = args.adapter.gpu()?;
    if args.step {
        let step_args = crate::bench::step::StepBenchArgs {
            arch: args.arch.clone(),
            patch_size: args.patch_size,
            img_size: args.img_size,
            batch_size: args.batch_size,
            data: args.data.clone(),
            steps: args.steps,
        };
        let r = crate::bench::step::run(&gpu, &step_args)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{}", r.table());
        }
        return Ok(());
    }
    if args.autotune {
        return autotune_table(&gpu);
    }
    let adapter = gpu.adapter_name();
    let opts = Options { filter: args.filter.clone(), reps: args.reps, ..Options::default() };
    let matmul = crate::ops::matmul::MatmulVariant::for_adapter(&gpu)?.name();
    let soft = crate::ops::soft_assign_variant::SoftAssignVariant::for_adapter(&gpu)?.name();
    let defaults = format!("default matmul variant: {matmul}; default soft-assign variant: {soft}");
    if args.json {
        eprintln!("adapter: {adapter}; {defaults}");
    } else {
        println!("adapter: {adapter}; {defaults}");
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
    let attention = crate::ops::attention::AttentionVariant::from_env()?;
    let attention = attention.map_or("per shape (see `sop bench --autotune`)", |v| v.name());
    let lines = bench::ratios(&results).into_iter().chain(bench::matmul_ratios(&results));
    for line in lines.chain([format!("attention variant: {attention}")]) {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// `sop bench --data DIR`: the loader's images/s with the recipe's crops.
fn loader_bench(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    if let Some(n) = args.generate {
        if dir.exists() {
            anyhow::bail!("{}: already exists; --generate writes into a new folder", dir.display());
        }
        crate::data::synthetic::write_jpegs(dir, n, 500, 375, 1, 0)?;
        eprintln!("wrote {n} generated 500x375 JPEGs into {}", dir.display());
    }
    let cfg = args.recipe.unwrap_or_default().config(None)?;
    let data = crate::data::Dataset::open(dir, crate::data::Split::Train)?;
    let r = crate::bench::loader::run(&data, &cfg.augment, args.threads.unwrap_or(0), args.reps)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{}", r.table());
    }
    Ok(())
}

/// `sop bench --autotune`.
fn autotune_table(gpu: &crate::gpu::Gpu) -> anyhow::Result<()> {
    use crate::ops::matmul::{autotune, fastest, AUTOTUNE_SHAPE};
    let shape = if gpu.is_cpu() { (256, 256, 256) } else { AUTOTUNE_SHAPE };
    let timings = autotune(gpu, shape)?;
    let (best, best_ms) = fastest(&timings);
    let (m, k, n) = shape;
    println!("adapter: {}; matmul {m}x{k}·{k}x{n}, median of 3 samples", gpu.adapter_name());
    for (v, ms) in &timings {
        let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e-3) / 1e9;
        println!("{:<14} {ms:>10.3} ms {gflops:>9.2} GFLOP/s{}", v.name(), if *v == best { "  fastest" } else { "" });
    }
    if gpu.is_cpu() {
        println!(
            "CPU adapter: sop uses the rule's variant ({}) rather than this table",
            crate::ops::matmul::MatmulVariant::cpu_rule(gpu).name()
        );
    } else {
        let named: Vec<(&str, f64)> = timings.iter().map(|&(v, ms)| (v.name(), ms)).collect();
        crate::ops::autotune_cache::store(gpu, crate::ops::matmul::FAMILY, best.name(), shape, &named);
        let file = crate::ops::autotune_cache::cache_file().map(|f| f.display().to_string()).unwrap_or_default();
        println!("stored {} ({best_ms:.3} ms) for this adapter in {file}", best.name());
    }
    attention_autotune_table(gpu)?;
    soft_assign_autotune_table(gpu)
}

/// The attention part of `sop bench --autotune`: the GPU autotune's table (stored in the
/// cache), or on CPU adapters the rule (timing there would take minutes).
fn attention_autotune_table(gpu: &crate::gpu::Gpu) -> anyhow::Result<()> {
    use crate::ops::attention_variant::{autotune, cache_shape, fastest, AUTOTUNE_SHAPE, FAMILY, UNFUSED_MIN_TOKENS};
    if gpu.is_cpu() {
        match gpu.subgroups {
            true => {
                println!(
                    "attention on this CPU adapter: unfused from T = {UNFUSED_MIN_TOKENS} tokens on, subgroup below"
                )
            }
            false => println!("attention on this CPU adapter: fused (no subgroups for the fast matmul)"),
        }
        return Ok(());
    }
    let (b, t, h, dh) = AUTOTUNE_SHAPE;
    let timings = autotune(gpu)?;
    let best = fastest(&timings);
    println!("attention B{b} T{t} H{h} Dh{dh}, forward + backward, median of 3 samples");
    for (v, ms) in &timings {
        let gflops = 3.5 * 4.0 * (b * h * t * t * dh) as f64 / (ms * 1e-3) / 1e9;
        println!("{:<14} {ms:>10.3} ms {gflops:>9.2} GFLOP/s{}", v.name(), if *v == best { "  fastest" } else { "" });
    }
    let named: Vec<(&str, f64)> = timings.iter().map(|&(v, ms)| (v.name(), ms)).collect();
    crate::ops::autotune_cache::store(gpu, FAMILY, best.name(), cache_shape(), &named);
    println!("stored {} for this adapter", best.name());
    Ok(())
}

/// The soft-assign part of `sop bench --autotune`: forward + backward of the whole
/// assignment per variant (dense-equivalent GFLOP/s: 4·R·M·(W + K)).
fn soft_assign_autotune_table(gpu: &crate::gpu::Gpu) -> anyhow::Result<()> {
    use crate::ops::soft_assign_variant::{autotune, fastest, SoftAssignVariant, AUTOTUNE_SHAPE, FAMILY};
    let shape = if gpu.is_cpu() { (256, 128, 128, 64) } else { AUTOTUNE_SHAPE };
    let timings = autotune(gpu, shape)?;
    let best = fastest(&timings);
    let (r, m, k, w) = shape;
    println!("soft assignment R {r}, M {m}, K {k}, W {w}, forward + backward, median of 3 samples");
    for (v, ms) in &timings {
        let gflops = 4.0 * (r * m * (w + k)) as f64 / (ms * 1e-3) / 1e9;
        println!("{:<14} {ms:>10.3} ms {gflops:>9.2} GFLOP/s{}", v.name(), if *v == best { "  fastest" } else { "" });
    }
    if gpu.is_cpu() {
        println!(
            "CPU adapter: sop uses the rule's variant ({}) rather than this table",
            SoftAssignVariant::cpu_rule().name()
        );
    } else {
        let named: Vec<(&str, f64)> = timings.iter().map(|&(v, ms)| (v.name(), ms)).collect();
        crate::ops::autotune_cache::store(gpu, FAMILY, best.name(), (r, m, w), &named);
        println!("stored {} for this adapter", best.name());
    }
    Ok(())
}
