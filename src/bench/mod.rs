//! The benchmark harness behind `sop bench` and `cargo bench`: every case is validated
//! against its CPU reference, warmed up, then timed with the device synchronised before the
//! clock stops; the median of the repetitions is reported with GFLOP/s or GB/s.
//! Each op family contributes its cases from its own file here.

use std::time::Instant;

use crate::error::{Result, SopError};
use crate::gpu::Gpu;

pub mod attention;
pub mod elementwise;
pub mod loader;
pub mod matmul;
pub mod prototypes;
pub mod soft_assign;
pub mod step;
pub mod topk;

/// What a case does per run, for the throughput column.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
}

/// Something a case does on the device.
pub type GpuFn = Box<dyn Fn(&Gpu) -> Result<()>>;

/// One timed configuration: a kernel variant on one shape.
pub struct Case {
    pub kernel: &'static str,
    pub variant: String,
    pub shape: String,
    pub work: Work,
    /// Records one run of the kernel (no sync).
    pub run: GpuFn,
    /// Runs the kernel once and compares with the CPU reference; Err says how it differs.
    pub validate: GpuFn,
}

/// A family of cases, built only when the filter selects it.
pub struct Family {
    pub kernel: &'static str,
    pub cases: fn(&Gpu) -> Result<Vec<Case>>,
}

pub fn families() -> Vec<Family> {
    vec![
        Family { kernel: "matmul", cases: matmul::cases },
        Family { kernel: "topk", cases: topk::cases },
        Family { kernel: "soft_assign", cases: soft_assign::cases },
        Family { kernel: "assignment", cases: soft_assign::assignment_cases },
        Family { kernel: "prototypes", cases: prototypes::cases },
        Family { kernel: "attention", cases: attention::cases },
        Family { kernel: "layernorm", cases: elementwise::layernorm_cases },
        Family { kernel: "gelu", cases: elementwise::gelu_cases },
        Family { kernel: "softmax", cases: elementwise::softmax_cases },
        Family { kernel: "sum_squares", cases: elementwise::reduce_cases },
        Family { kernel: "l2norm", cases: elementwise::l2norm_cases },
    ]
}

#[derive(Clone, Debug)]
pub struct Measurement {
    pub kernel: &'static str,
    pub variant: String,
    pub shape: String,
    pub ms: f64,
    pub work: Work,
    pub reps: usize,
}

impl Measurement {
    pub fn gflops(&self) -> Option<f64> {
        match self.work {
            Work::Flops(f) => Some(f / (self.ms * 1e-3) / 1e9),
            Work::Bytes(_) => None,
        }
    }
    pub fn gbps(&self) -> Option<f64> {
        match self.work {
            Work::Bytes(b) => Some(b / (self.ms * 1e-3) / 1e9),
            Work::Flops(_) => None,
        }
    }
    pub fn json(&self, adapter: &str) -> String {
        let mut v = serde_json::json!({
            "kernel": self.kernel, "variant": self.variant, "shape": self.shape,
            "ms": self.ms, "reps": self.reps, "adapter": adapter, "validated": true,
        });
        if let Some(g) = self.gflops() {
            v["gflops"] = g.into();
        }
        if let Some(g) = self.gbps() {
            v["gbps"] = g.into();
        }
        v.to_string()
    }
}

pub struct Options {
    pub filter: Option<String>,
    pub reps: usize,
    /// Each repetition runs the kernel enough times to last at least this long.
    pub min_rep_ms: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { filter: None, reps: 5, min_rep_ms: 20.0 }
    }
}

fn selected(filter: &Option<String>, kernel: &str, variant: &str) -> bool {
    match filter {
        None => true,
        Some(f) => f.split(',').any(|f| {
            let f = f.trim();
            kernel.contains(f) || format!("{kernel}/{variant}").contains(f)
        }),
    }
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Time one validated case: the median over `reps` of (wall time of `iters` runs + sync) / iters.
pub fn time_case(gpu: &Gpu, case: &Case, opts: &Options) -> Result<Measurement> {
    (case.validate)(gpu).map_err(|e| {
        SopError::Invalid(format!("{}/{} {} failed validation, not timed: {e}", case.kernel, case.variant, case.shape))
    })?;
    // Warm-up (pipelines compiled, caches filled), and a first estimate of one run's time.
    (case.run)(gpu)?;
    gpu.sync()?;
    let t = Instant::now();
    (case.run)(gpu)?;
    gpu.sync()?;
    let once_ms = t.elapsed().as_secs_f64() * 1e3;
    let iters = ((opts.min_rep_ms / once_ms.max(1e-3)).ceil() as usize).clamp(1, 1000);
    let mut samples = Vec::with_capacity(opts.reps);
    for _ in 0..opts.reps.max(1) {
        let t = Instant::now();
        for _ in 0..iters {
            (case.run)(gpu)?;
        }
        gpu.sync()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3 / iters as f64);
    }
    Ok(Measurement {
        kernel: case.kernel,
        variant: case.variant.clone(),
        shape: case.shape.clone(),
        ms: median(samples),
        work: case.work,
        reps: opts.reps.max(1),
    })
}

/// Run every selected case; `report` sees each measurement as soon as it exists.
pub fn run(gpu: &Gpu, opts: &Options, mut report: impl FnMut(&Measurement)) -> Result<Vec<Measurement>> {
    let mut out = Vec::new();
    for fam in families() {
        if !selected(&opts.filter, fam.kernel, "") && !opts.filter.as_deref().is_some_and(|f| f.contains('/')) {
            continue;
        }
        for case in (fam.cases)(gpu)? {
            if !selected(&opts.filter, case.kernel, &case.variant) {
                continue;
            }
            let m = time_case(gpu, &case, opts)?;
            report(&m);
            out.push(m);
        }
    }
    Ok(out)
}

/// One table row (the header is `TABLE_HEADER`).
pub fn table_row(m: &Measurement) -> String {
    let rate = match (m.gflops(), m.gbps()) {
        (Some(g), _) => format!("{g:>9.2} GFLOP/s"),
        (_, Some(g)) => format!("{g:>9.2} GB/s   "),
        _ => String::new(),
    };
    format!("{:<14} {:<14} {:<28} {:>10.3} ms {}", m.kernel, m.variant, m.shape, m.ms, rate)
}

pub const TABLE_HEADER: &str = "kernel         variant        shape                        median time   throughput";

/// For every (kernel, shape) measured with a `naive` variant: each other variant's speed-up;
/// then every other kernel's GFLOP/s as a fraction of the best matmul's in the same run.
pub fn ratios(ms: &[Measurement]) -> Vec<String> {
    let mut lines = Vec::new();
    let best_matmul = ms
        .iter()
        .filter(|m| m.kernel == "matmul")
        .filter_map(|m| m.gflops().map(|g| (g, m)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((best, bm)) = best_matmul {
        for m in ms.iter().filter(|m| m.kernel != "matmul") {
            if let Some(g) = m.gflops() {
                let (k, v, s) = (m.kernel, &m.variant, &m.shape);
                let of = format!("{best:.2} GFLOP/s, {} {}", bm.variant, bm.shape);
                lines.push(format!("{k} {v} {s}: {g:.2} GFLOP/s = {:.2} of the best matmul ({of})", g / best));
            }
        }
    }
    for base in ms.iter().filter(|m| m.variant == "naive") {
        for m in ms.iter().filter(|m| m.kernel == base.kernel && m.shape == base.shape && m.variant != "naive") {
            lines.push(format!("{} {} {}: {:.2}x the naive kernel", m.kernel, m.shape, m.variant, base.ms / m.ms));
        }
    }
    lines
}

/// Every non-matmul FLOP case against the matmuls of the same run: the fastest (the highest
/// GFLOP/s of any matmul variant on any shape: the strictest baseline) and the median over
/// the shapes of each shape's fastest variant (less sensitive to one lucky sample on a
/// shared machine). One line each.
pub fn matmul_ratios(ms: &[Measurement]) -> Vec<String> {
    let matmuls: Vec<&Measurement> = ms.iter().filter(|m| m.kernel == "matmul" && m.gflops().is_some()).collect();
    let Some(best) = matmuls.iter().max_by(|a, b| a.gflops().unwrap().total_cmp(&b.gflops().unwrap())) else {
        return Vec::new();
    };
    let g0 = best.gflops().unwrap();
    let mut shapes: Vec<&str> = matmuls.iter().map(|m| m.shape.as_str()).collect();
    shapes.dedup();
    let per_shape: Vec<f64> = shapes
        .iter()
        .map(|s| matmuls.iter().filter(|m| m.shape == *s).map(|m| m.gflops().unwrap()).fold(0.0, f64::max))
        .collect();
    let g1 = median(per_shape);
    let mut lines = vec![format!(
        "best matmul of this run: {} {} at {g0:.2} GFLOP/s; median over shapes of the best variant {g1:.2}",
        best.variant, best.shape
    )];
    for m in ms.iter().filter(|m| m.kernel != "matmul") {
        if let Some(g) = m.gflops() {
            lines.push(format!(
                "{} {} {}: {:.2} of the best matmul, {:.2} of the median",
                m.kernel,
                m.variant,
                m.shape,
                g / g0,
                g / g1
            ));
        }
    }
    lines
}
