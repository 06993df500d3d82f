//! The memory plan of a training step, computed from the configuration before anything is
//! allocated: parameters (student, teacher), gradients, AdamW's two moments, the two banks,
//! the batch's crops, the tensors the student's tape saves for the backward, and the working
//! set of the objective and of the backward. It prices `--batch-size auto` (the largest
//! batch whose plan fits the device with `MARGIN` to spare) and refuses a batch that cannot
//! fit before the first step. tests/memory_plan.rs checks the plan against the buffer
//! pool's measured high-water mark (`Gpu::memory`), which metrics.jsonl records per step.
//!
//! Shapes as in src/lib.rs: B images, L local crops, T = 1 + N tokens of a global crop, T_l
//! of a local one, D width, H heads, depth blocks, W head output. Rows of a global pass:
//! R = 2B·T; of the local pass: R_l = L·B·T_l. Every tensor is f32 (4 bytes).
//!
//! Saved per row of a block (tape.rs): the block input and the mid-block residual (LayerNorm
//! inputs), both LayerNorm outputs (Linear inputs), qkv (3D), the attention output, the
//! MLP's hidden pre- and post-GELU (2·mlp_ratio·D), two LayerNorm statistics ×2 and the
//! attention's log-sum-exp (H): 8D + 2·mlp_hidden + 4 + H. The head saves per row its
//! input, 2 tensors of the hidden width per hidden layer, and its output (W + 1).

use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::model::params::param_specs;
use crate::train::config::TrainConfig;

/// What the buffer pool holds beyond the live tensors at the step's peak, as a fraction of
/// the per-batch tensors (crops, activations, working set): the pool reuses a freed buffer
/// only for a tensor of the same size, so the step's many shapes leave some buffers idle.
/// Measured 13-17% above the live peak (tests/memory_plan.rs, and ViT-S/16 at 224 px, batch 2).
pub const POOL_OVERHEAD: f64 = 0.2;

/// The fraction of the device's memory a plan may use: the rest is left for the driver,
/// the pipelines, the uniform ring, readback staging and the plan's own error (within ±10%
/// of the measured pool high-water mark in tests/memory_plan.rs).
pub const MARGIN: f64 = 0.15;

const F32: u64 = 4;

/// What one optimiser step needs, in bytes, and its work.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemoryPlan {
    pub batch_size: usize,
    /// Parameters of one network (student or teacher).
    pub params: u64,
    /// Student, teacher, gradients and AdamW's m and v: 5 copies of the parameters.
    pub weights_bytes: u64,
    /// The [CLS] and patch banks.
    pub banks_bytes: u64,
    /// The micro-batch's crops and masks on the device.
    pub inputs_bytes: u64,
    /// What the student's tape saves for the backward, plus the teacher's outputs.
    pub activations_bytes: u64,
    /// The objective's logits and assignments and the backward's widest gradients.
    pub working_bytes: u64,
    /// The pool's idle buffers at the peak (`POOL_OVERHEAD` of the per-batch tensors).
    pub pool_overhead_bytes: u64,
    /// The largest single tensor (it must fit the adapter's max buffer and binding size).
    pub largest_tensor_bytes: u64,
    /// Matmul and attention FLOPs of one optimiser step (forward teacher, forward and
    /// backward student; the backward counted as twice the forward).
    pub flops: f64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.weights_bytes + self.banks_bytes + self.per_batch_bytes() + self.pool_overhead_bytes
    }

    /// The tensors that scale with the batch.
    fn per_batch_bytes(&self) -> u64 {
        self.inputs_bytes + self.activations_bytes + self.working_bytes
    }

    /// What a half-precision (bf16/f16) path would need: every tensor in 2 bytes but AdamW's
    /// moments and an f32 master copy of the student (mixed precision keeps both in f32).
    pub fn half_precision_total(&self) -> u64 {
        let p = self.params * F32;
        // f32: student master + m + v (3 copies); 2 bytes: teacher, grads, a half student.
        let weights = 3 * p + 3 * p / 2;
        weights + (self.banks_bytes + self.per_batch_bytes() + self.pool_overhead_bytes) / 2
    }

    /// Four lines for the run's log.
    pub fn describe(&self) -> String {
        format!(
            "model: {:.2} M parameters, {:.1} GFLOP per step (batch {})\n\
             memory plan: {} = weights, grads, AdamW {} + banks {} + crops {} + saved activations {} + working set {} + pool reuse {}\n\
             largest tensor {}; half precision would need {}",
            self.params as f64 / 1e6,
            self.flops / 1e9,
            self.batch_size,
            gib(self.total()),
            gib(self.weights_bytes),
            gib(self.banks_bytes),
            gib(self.inputs_bytes),
            gib(self.activations_bytes),
            gib(self.working_bytes),
            gib(self.pool_overhead_bytes),
            gib(self.largest_tensor_bytes),
            gib(self.half_precision_total()),
        )
    }
}

/// Bytes as GiB (MiB below 1 GiB) for the logs.
pub fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// The plan of one step of `cfg` at batch `b` (per micro-batch; `optim.accumulate`
/// micro-batches run one after the other and share the activation memory).
pub fn plan(cfg: &TrainConfig, b: usize) -> MemoryPlan {
    let (m, a, s) = (&cfg.model, &cfg.augment, &cfg.sop);
    let params: u64 = param_specs(m).iter().map(|p| p.shape.iter().product::<usize>() as u64).sum();
    let (d, h, hm, w, hid) =
        (m.dim as u64, m.heads as u64, m.mlp_hidden() as u64, m.head_bottleneck as u64, m.head_hidden as u64);
    let depth = m.depth as u64;
    let grid = |side: usize| (side / m.patch_size) as u64;
    let (n, n_l) = (grid(a.global_size).pow(2), grid(a.local_size).pow(2));
    let (t, t_l) = (1 + n, 1 + n_l);
    let (b, l) = (b as u64, a.local_crops as u64);
    let (rows_g, rows_l) = (2 * b * t, l * b * t_l);
    let hidden_layers = m.head_layers.saturating_sub(1) as u64;

    // Per row of a backbone pass: every block, the patch embedding's input (3p²) and the
    // final LayerNorm's input, output and statistics.
    let block_row = 8 * d + 2 * hm + 4 + h;
    let backbone_row = depth * block_row + 3 * (m.patch_size as u64).pow(2) + 2 * d + 2;
    let head_row = 2 * hid * hidden_layers + w + 1;
    let saved = rows_g * (backbone_row + head_row) + rows_l * backbone_row + l * b * (d + head_row);
    // The teacher's [CLS] and patch outputs and the student's split copies of its own.
    let outputs = 2 * rows_g * w;
    let activations_bytes = F32 * (saved + outputs);

    // The objective: per task, student and teacher logits against the M member rows, their
    // assignments over P′ prototypes, and the gradients of both (6 tensors of rows × M).
    let members = |p: &crate::sop::prototypes::PrototypeConfig| {
        let kept = if p.experts > 1 { p.anchors / 2 } else { p.anchors };
        (kept * p.experts) as u64
    };
    let patch_rows = 2 * b * n;
    let cls_rows = (2 + l) * b;
    let objective = 6 * (patch_rows * members(&s.patch) + cls_rows * members(&s.cls));
    // The backward's widest step: a gradient, its input's gradient and an accumulation of
    // rows × the widest layer, at once.
    let widest = hid.max(hm).max(3 * d);
    let backward = 3 * rows_g * widest;
    let working_bytes = F32 * (objective + backward);

    let inputs_bytes =
        F32 * (2 * b * 3 * (a.global_size as u64).pow(2) + l * b * 3 * (a.local_size as u64).pow(2) + 2 * b * n);
    let banks_bytes = F32 * ((s.cls_bank_size + s.patch_bank_size) as u64 * w);
    let largest = [rows_g * widest, patch_rows * members(&s.patch), rows_l * hm, params];
    let largest_tensor_bytes = F32 * largest.into_iter().max().unwrap_or(0);

    // FLOPs: 2 per multiply-add. A backbone row: qkv, proj, fc1, fc2 and attention (QKᵀ and
    // PV over the tokens of its crop); a head row: its linear layers.
    let patch_in = 3 * (m.patch_size as u64).pow(2);
    let block_flops = |tokens: u64| 2.0 * (4 * d * d + 2 * d * hm + 2 * tokens * d) as f64;
    let backbone =
        |rows: u64, tokens: u64| rows as f64 * (depth as f64 * block_flops(tokens) + 2.0 * (patch_in * d) as f64);
    let head_per_row = 2.0 * (d * hid + hidden_layers.saturating_sub(1) * hid * hid + hid * w) as f64;
    let student_fwd = backbone(rows_g, t) + backbone(rows_l, t_l) + (rows_g + l * b) as f64 * head_per_row;
    let teacher_fwd = backbone(rows_g, t) + rows_g as f64 * head_per_row;
    let objective_flops = 2.0 * 4.0 * (objective / 6) as f64 * w as f64;
    let flops = (3.0 * student_fwd + teacher_fwd + objective_flops) * cfg.optim.accumulate as f64;

    let per_batch = inputs_bytes + activations_bytes + working_bytes;
    MemoryPlan {
        batch_size: b as usize,
        pool_overhead_bytes: (per_batch as f64 * POOL_OVERHEAD) as u64,
        params,
        weights_bytes: 5 * params * F32,
        banks_bytes,
        inputs_bytes,
        activations_bytes,
        working_bytes,
        largest_tensor_bytes,
        flops,
    }
}

/// The bytes a plan may use on `gpu` (the device's memory less `MARGIN`), with a line saying
/// where the figure comes from; None when the device's memory cannot be known.
pub fn budget(gpu: &Gpu) -> Option<(u64, String)> {
    gpu.device_memory.as_ref().map(|m| {
        let usable = (m.bytes as f64 * (1.0 - MARGIN)) as u64;
        (usable, format!("{} of {} ({}), less a {:.0}% margin", gib(usable), gib(m.bytes), m.source, MARGIN * 100.0))
    })
}

/// Why a plan cannot run on `gpu`, if it cannot: more bytes than the budget, or a tensor
/// larger than one buffer or binding may be.
pub fn refusal(gpu: &Gpu, p: &MemoryPlan) -> Option<String> {
    if let Some((usable, source)) = budget(gpu).filter(|(usable, _)| p.total() > *usable) {
        return Some(format!(
            "batch {} needs {} ({} bytes) but {usable} bytes are available: {source}",
            p.batch_size,
            gib(p.total()),
            p.total(),
        ));
    }
    let max_tensor = max_tensor_bytes(gpu);
    (p.largest_tensor_bytes > max_tensor).then(|| {
        format!(
            "batch {}: its largest tensor needs {} but {} allows {} per buffer",
            p.batch_size,
            gib(p.largest_tensor_bytes),
            gpu.adapter_name(),
            gib(max_tensor)
        )
    })
}

/// The largest tensor the adapter can hold and bind.
fn max_tensor_bytes(gpu: &Gpu) -> u64 {
    gpu.limits.max_buffer_size.min(gpu.limits.max_storage_buffer_binding_size)
}

/// Print the plan of `cfg`'s batch and the budget; refuse, before any work, a batch that
/// does not fit.
pub fn check(gpu: &Gpu, cfg: &TrainConfig) -> Result<MemoryPlan> {
    let p = plan(cfg, cfg.data.batch_size);
    eprintln!("{}", p.describe());
    match budget(gpu) {
        Some((_, source)) => eprintln!("device memory: {source}"),
        None => eprintln!("device memory: unknown on {} (set SOP_DEVICE_MEMORY to check the plan)", gpu.adapter_name()),
    }
    match refusal(gpu, &p) {
        Some(why) => Err(SopError::Config(format!(
            "{why}; give a smaller --batch-size (or --batch-size auto; --set optim.accumulate=K then keeps K times as many images per optimiser step)"
        ))),
        None => Ok(p),
    }
}

/// `cfg.data.batch_size` set to the largest batch whose plan fits `gpu` (never above the
/// smaller bank, which each step writes a batch into). With several ranks (data parallel)
/// every rank's rows go into the banks, so the cap is the bank over the ranks, and every
/// rank takes the smallest batch any rank's memory allows (they must train the same one).
pub fn auto_batch(gpu: &Gpu, cfg: &mut TrainConfig) -> Result<usize> {
    let d = crate::dist::world();
    let lo = auto_batch_here(gpu, cfg, d.size())?;
    if !d.is_distributed() {
        return Ok(lo);
    }
    let all: Vec<u64> = d.all_gather_u64(&[lo as u64])?.iter().map(|v| v[0]).collect();
    let least = all.iter().copied().min().expect("one value per rank") as usize;
    if d.is_root() && least < lo {
        crate::dist::eprint_line(&format!(
            "--batch-size auto: {least} on every rank (the smallest rank's choice; per rank: {all:?})"
        ));
    }
    cfg.data.batch_size = least;
    Ok(least)
}

/// `auto_batch` on this rank alone, for `ranks` ranks writing into the banks.
fn auto_batch_here(gpu: &Gpu, cfg: &mut TrainConfig, ranks: usize) -> Result<usize> {
    let Some((_, source)) = budget(gpu) else {
        return Err(SopError::Config(format!(
            "--batch-size auto: the memory of {} cannot be queried; set SOP_DEVICE_MEMORY (e.g. 8GiB) or give a number",
            gpu.adapter_name()
        )));
    };
    let cap = cfg.sop.cls_bank_size.min(cfg.sop.patch_bank_size) / (cfg.optim.accumulate.max(1) * ranks);
    let fits = |b: usize| refusal(gpu, &plan(cfg, b)).is_none();
    if cap == 0 || !fits(1) {
        let why = refusal(gpu, &plan(cfg, 1)).unwrap_or_else(|| {
            let rows = cfg.sop.cls_bank_size.min(cfg.sop.patch_bank_size);
            format!("the banks' {rows} rows are fewer than one image per rank and micro-batch")
        });
        return Err(SopError::Config(format!("--batch-size auto: not even one image fits: {why}")));
    }
    // The plan grows with the batch: bisect for the last batch that fits.
    let (mut lo, mut hi) = (1, cap + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    cfg.data.batch_size = lo;
    let bound = if refusal(gpu, &plan(cfg, lo + 1)).is_some_and(|r| r.contains("per buffer")) {
        format!("its largest tensor, {}, must fit one buffer", gib(plan(cfg, lo).largest_tensor_bytes))
    } else {
        "its plan must fit the memory".into()
    };
    crate::dist::eprint_line(&format!(
        "--batch-size auto: {lo}, the largest batch whose plan fits {source} and whose tensors fit the adapter's \
         {} per buffer ({bound})",
        gib(max_tensor_bytes(gpu))
    ));
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::recipe::Recipe;

    #[test]
    fn plan_grows_with_the_batch_and_counts_the_parameters() {
        let cfg = Recipe::Paper.config(None).unwrap();
        let (p1, p2) = (plan(&cfg, 1), plan(&cfg, 2));
        // ViT-S/16 with the 2048-wide head: 21.7 M backbone + 5.0 M head parameters.
        assert!((26_000_000..28_000_000).contains(&p1.params), "{}", p1.params);
        assert_eq!(p1.banks_bytes, 4 * (65_536 + 8_192) * 256);
        assert!(p2.total() > p1.total() && p2.activations_bytes == 2 * p1.activations_bytes);
        assert!(p2.half_precision_total() < p2.total());
        // ViT-S/16 at 224 px: 4.6 GMAC (9.1 GFLOP) per crop through the backbone (timm's
        // figure), 2.2 GFLOP through the head; per image 2 crops, student forward + backward
        // (3 passes) and teacher forward: 8 × 11.3 = 90 GFLOP, plus the objective.
        let mut globals_only = cfg.clone();
        globals_only.augment.local_crops = 0;
        let per_image = plan(&globals_only, 4).flops / 4.0;
        assert!((88e9..95e9).contains(&per_image), "{per_image:e}");
    }
}
