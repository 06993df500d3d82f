//! `sop bench --step`: whole training steps, timed. Runs `sop train` (no k-NN, no
//! checkpoints until the end) on a temporary run folder and reports the median of the steps
//! after both banks filled, with the per-step counters of `metrics.jsonl` (dispatches, host
//! waits, pace waits, bind groups and buffers created, uniform bytes, host recording time and
//! wgpu's encoding time).

use std::path::PathBuf;

use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::model::config::VitConfig;
use crate::train::config::TrainConfig;

/// What `sop bench --step` trains: the default run's configuration with these changes.
#[derive(Clone, Debug, Default)]
pub struct StepBenchArgs {
    pub arch: Option<String>,
    pub patch_size: Option<usize>,
    pub img_size: Option<usize>,
    pub batch_size: Option<usize>,
    pub data: Option<PathBuf>,
    /// Timed steps after the banks filled (default 10).
    pub steps: Option<usize>,
}

/// Medians over the timed steps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepBench {
    pub adapter: String,
    pub model: String,
    pub batch_size: usize,
    pub steps_timed: usize,
    pub ms_per_step: f64,
    pub images_per_sec: f64,
    pub dispatches: f64,
    pub host_waits: f64,
    pub pace_waits: f64,
    pub bind_groups_created: f64,
    pub buffers_created: f64,
    pub uniform_bytes: f64,
    pub host_ms: f64,
    pub encode_ms: f64,
}

/// The configuration `args` describe (crops follow the image and patch size).
pub fn config(args: &StepBenchArgs, out: PathBuf) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::default();
    if let Some(a) = &args.arch {
        let p = VitConfig::from_arch(a)?;
        (cfg.model.dim, cfg.model.depth, cfg.model.heads) = (p.dim, p.depth, p.heads);
    }
    cfg.set_shape(args.patch_size, args.img_size);
    // Local crops are off in the default run; their size only has to be a whole number of
    // patches: half the global crop, rounded down to patches.
    let p = cfg.model.patch_size;
    cfg.augment.local_size = (cfg.augment.global_size / 2 / p).max(1) * p;
    if let Some(b) = args.batch_size {
        cfg.data.batch_size = b;
    }
    if let Some(d) = &args.data {
        cfg.data.path = d.clone();
    }
    let timed = match args.steps {
        Some(0) => return Err(SopError::Invalid("bench --step: --steps 0 times nothing; give at least 1".into())),
        Some(n) => n,
        None => 10,
    };
    cfg.optim.steps = Some(fill_steps(&cfg) + timed);
    cfg.run.out = out;
    cfg.run.no_eval = true;
    cfg.run.checkpoint_every = 0;
    cfg.validate()?;
    Ok(cfg)
}

/// Steps until both banks hold only rows written by training (each step writes a batch).
fn fill_steps(cfg: &TrainConfig) -> usize {
    cfg.sop.cls_bank_size.max(cfg.sop.patch_bank_size).div_ceil(cfg.data.batch_size * cfg.optim.accumulate)
}

/// Train as `args` say and time the steps after the banks filled.
pub fn run(gpu: &Gpu, args: &StepBenchArgs) -> Result<StepBench> {
    // A run folder of its own in the temporary folder: created here (never an existing one),
    // so removing it afterwards removes nothing of anyone else's.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let out = std::env::temp_dir().join(format!("sop-bench-step-{}-{nanos}", std::process::id()));
    let cfg = config(args, out.clone())?;
    std::fs::create_dir(&out).map_err(|e| SopError::file(&out, e))?;
    let fill = fill_steps(&cfg);
    let model = format!("{} patch {} at {} px", cfg.model.arch(), cfg.model.patch_size, cfg.model.img_size);
    let batch_size = cfg.data.batch_size;
    let trained = crate::train::train(gpu, cfg, None, false);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"));
    let _ = std::fs::remove_dir_all(&out);
    trained?;
    let metrics = metrics.map_err(|e| SopError::file(out.join("metrics.jsonl"), e))?;
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.get("step_ms").is_some() && r["step"].as_u64().is_some_and(|s| s as usize > fill))
        .collect();
    if rows.is_empty() {
        return Err(SopError::Invalid("bench --step: no step after the banks filled was recorded".into()));
    }
    let med = |k: &str| super::median(rows.iter().map(|r| r[k].as_f64().unwrap_or(f64::NAN)).collect());
    let ms = med("step_ms");
    Ok(StepBench {
        adapter: gpu.adapter_name(),
        model,
        batch_size,
        steps_timed: rows.len(),
        ms_per_step: ms,
        images_per_sec: batch_size as f64 / (ms * 1e-3),
        dispatches: med("dispatches"),
        host_waits: med("host_waits"),
        pace_waits: med("pace_waits"),
        bind_groups_created: med("bind_groups_created"),
        buffers_created: med("buffers_created"),
        uniform_bytes: med("uniform_bytes"),
        host_ms: med("host_ms"),
        encode_ms: med("encode_ms"),
    })
}

impl StepBench {
    /// The lines `sop bench --step` prints.
    pub fn table(&self) -> String {
        format!(
            "adapter: {}\nmodel: {}, batch {}; median of {} steps after the banks filled\n\
             {:.2} ms per step, {:.1} images/s\nper step: {} dispatches, {} host waits, {} pace waits, {} bind groups and {} \
             buffers created, {} uniform bytes, {:.3} ms host recording ({:.2} µs per dispatch) + {:.3} ms encoding in \
             wgpu's finish ({:.2} µs per dispatch)",
            self.adapter,
            self.model,
            self.batch_size,
            self.steps_timed,
            self.ms_per_step,
            self.images_per_sec,
            self.dispatches,
            self.host_waits,
            self.pace_waits,
            self.bind_groups_created,
            self.buffers_created,
            self.uniform_bytes,
            self.host_ms,
            1e3 * self.host_ms / self.dispatches.max(1.0),
            self.encode_ms,
            1e3 * self.encode_ms / self.dispatches.max(1.0)
        )
    }
}
