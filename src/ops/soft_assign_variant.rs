//! The whole SOP assignment P(u) = softmax(u·Dᵀ/τ)·Y and its backward, by one of four
//! variants, and the choice of variant per adapter (as for matmul: `SOP_SOFT_ASSIGN=<name>`,
//! a resumed run's pin, a rule on CPU adapters, else an autotune cached on disk).
//!
//! u (…, W) embeddings, D (M, W) support embeddings, Y (M, K) votes; p (…, K); du (…, W).
//! Variants (all deterministic, no atomics):
//! - `tiled16`, `matmul`, `votes`: logits = u·Dᵀ by the adapter's matmul (kept for the
//!   backward: R·M·4 bytes), then `ops::soft_assign` by that route; backward dlogits by the
//!   same route, then du = dlogits·D by matmul.
//! - `flash`: ops::soft_assign_flash, no logits buffer (saves R·4 bytes).
//!
//! A variant that stores the logits falls back to `flash`, with a warning naming both, when
//! R·M·4 bytes exceed the adapter's storage binding limit.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::matmul::Matmul;
use crate::ops::soft_assign::{soft_assign_backward_with, soft_assign_forward_with, LogitsRoute, Votes};
use crate::ops::soft_assign_flash::{flash_backward, flash_forward, FlashSaved};
use crate::ops::variant::{self, Variant};

/// The op family name under which the device keeps its choice.
pub const FAMILY: &str = "soft_assign";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftAssignVariant {
    Tiled16,
    Matmul,
    Votes,
    Flash,
}

impl SoftAssignVariant {
    pub const ALL: [SoftAssignVariant; 4] =
        [SoftAssignVariant::Tiled16, SoftAssignVariant::Matmul, SoftAssignVariant::Votes, SoftAssignVariant::Flash];

    pub fn name(self) -> &'static str {
        match self {
            SoftAssignVariant::Tiled16 => "tiled16",
            SoftAssignVariant::Matmul => "matmul",
            SoftAssignVariant::Votes => "votes",
            SoftAssignVariant::Flash => "flash",
        }
    }

    pub fn parse(s: &str) -> Option<SoftAssignVariant> {
        variant::parse(s)
    }

    /// Whether the variant can take this Y (`votes` needs SOP's owned vote matrix).
    pub fn takes(self, votes: Votes) -> bool {
        self != SoftAssignVariant::Votes || matches!(votes, Votes::Owned { .. })
    }

    fn route(self) -> Option<LogitsRoute> {
        match self {
            SoftAssignVariant::Tiled16 => Some(LogitsRoute::Tiled16),
            SoftAssignVariant::Matmul => Some(LogitsRoute::Matmul),
            SoftAssignVariant::Votes => Some(LogitsRoute::Votes),
            SoftAssignVariant::Flash => None,
        }
    }

    /// `SOP_SOFT_ASSIGN`, if set: a variant name, or an error that lists the valid ones.
    pub fn from_env() -> Result<Option<SoftAssignVariant>> {
        variant::from_env()
    }

    /// The variant CPU adapters use without timing: `votes` (O(M + K) per row; the
    /// benchmark in benches/RESULTS.md).
    pub fn cpu_rule() -> SoftAssignVariant {
        SoftAssignVariant::Votes
    }

    /// The variant the objective uses on this device: `SOP_SOFT_ASSIGN`, else a pin, else on
    /// CPU adapters `cpu_rule`, else the cached autotune choice, else an autotune (stored).
    pub fn for_adapter(gpu: &Gpu) -> Result<SoftAssignVariant> {
        variant::fixed(gpu, || {
            Ok(match SoftAssignVariant::from_env()? {
                Some(v) => v,
                None if gpu.is_cpu() => SoftAssignVariant::cpu_rule(),
                None => variant::tuned(gpu),
            })
        })
    }

    /// Use `v` on this device from now on (a resumed run keeps the variant it started with,
    /// so it repeats the uninterrupted run bit for bit). False when another is already fixed.
    pub fn pin(gpu: &Gpu, v: SoftAssignVariant) -> bool {
        variant::pin(gpu, v)
    }
}

impl Variant for SoftAssignVariant {
    const FAMILY: &'static str = FAMILY;
    const ENV: &'static str = "SOP_SOFT_ASSIGN";
    const KIND: &'static str = "soft-assign";
    const OP: &'static str = "soft assignment";
    const FALLBACK: Self = SoftAssignVariant::Flash;
    const TUNE_SHAPE: (usize, usize, usize) = (AUTOTUNE_SHAPE.0, AUTOTUNE_SHAPE.1, AUTOTUNE_SHAPE.3);
    fn all() -> &'static [Self] {
        &SoftAssignVariant::ALL
    }
    fn name(self) -> &'static str {
        SoftAssignVariant::name(self)
    }
    fn autotune(gpu: &Gpu) -> Result<Vec<(Self, f64)>> {
        autotune(gpu, AUTOTUNE_SHAPE)
    }
}

/// What the forward keeps for the backward.
pub enum Saved {
    /// The (R, M) logits u·Dᵀ.
    Logits(Tensor),
    /// The flash kernel's logsumexp per row.
    Flash(FlashSaved),
}

static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// `v`, or `flash` when `v` would store logits (R, M) larger than one storage binding.
pub fn fitting(gpu: &Gpu, v: SoftAssignVariant, rows: usize, m: usize) -> SoftAssignVariant {
    let bytes = (rows * m * 4) as u64;
    let limit = gpu.limits.max_storage_buffer_binding_size;
    if v == SoftAssignVariant::Flash || bytes <= limit {
        return v;
    }
    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "soft assignment: the {} variant would store {rows}x{m} logits ({bytes} bytes, over the {limit}-byte binding limit of {}); using flash for such shapes",
            v.name(),
            gpu.adapter_name()
        );
    }
    SoftAssignVariant::Flash
}

/// p = softmax(u·Dᵀ/τ)·Y by `v` (after `fitting`), and what the backward needs.
pub fn assign_forward(
    gpu: &Gpu,
    v: SoftAssignVariant,
    u: &Tensor,
    d: &Tensor,
    votes: Votes,
    tau: f32,
) -> Result<(Tensor, Saved)> {
    let rows = u.numel() / u.shape.last().copied().unwrap_or(1).max(1);
    let v = fitting(gpu, v, rows, d.shape.first().copied().unwrap_or(0));
    match v.route() {
        None => {
            let (p, saved) = flash_forward(gpu, u, d, votes.y(), tau)?;
            Ok((p, Saved::Flash(saved)))
        }
        Some(route) => {
            let logits = Matmul::new(u, d).trans_b().run(gpu)?;
            let p = soft_assign_forward_with(gpu, route, &logits, votes, tau)?;
            Ok((p, Saved::Logits(logits)))
        }
    }
}

/// du (…, W) from dp (…, K), with the forward's p and `saved` (the variant is the one that
/// made `saved`: flash for `Saved::Flash`, `v` otherwise).
#[allow(clippy::too_many_arguments)]
pub fn assign_backward(
    gpu: &Gpu,
    v: SoftAssignVariant,
    u: &Tensor,
    d: &Tensor,
    votes: Votes,
    tau: f32,
    p: &Tensor,
    saved: &Saved,
    dp: &Tensor,
) -> Result<Tensor> {
    match (saved, v.route()) {
        (Saved::Flash(s), _) => flash_backward(gpu, u, d, votes.y(), tau, p, s, dp),
        (Saved::Logits(logits), Some(route)) => {
            let dlogits = soft_assign_backward_with(gpu, route, logits, votes, tau, dp)?;
            Matmul::new(&dlogits, d).run(gpu)
        }
        (Saved::Logits(_), None) => {
            Err(SopError::Invalid("soft assignment: logits saved by another variant than flash's backward".into()))
        }
    }
}

/// (R, M, K, W) the autotune times: the paper recipe's patch task (M = K = 512, E = 1).
pub const AUTOTUNE_SHAPE: (usize, usize, usize, usize) = (4096, 512, 512, 256);

/// Median milliseconds of a forward plus backward of each variant at (R, M, K, W) with an
/// owned vote matrix (E = 1), after one warm-up run that also builds the pipelines.
pub fn autotune(gpu: &Gpu, (r, m, k, w): (usize, usize, usize, usize)) -> Result<Vec<(SoftAssignVariant, f64)>> {
    let fill = |n: usize, s: usize| (0..n).map(|i| ((i * s) % 11) as f32 * 0.02 - 0.1).collect::<Vec<_>>();
    let u = gpu.upload_f32(&[r, w], &fill(r * w, 7))?;
    let d = gpu.upload_f32(&[m, w], &fill(m * w, 5))?;
    let y = gpu.upload_f32(
        &[m, k],
        &(0..m * k).map(|i| if i / k == i % k { 0.9 } else { 0.1 / (k - 1).max(1) as f32 }).collect::<Vec<_>>(),
    )?;
    let dp = gpu.upload_f32(&[r, k], &fill(r * k, 3))?;
    let votes = Votes::Owned { y: &y, experts: m / k };
    let once = |v: SoftAssignVariant| -> Result<()> {
        let (p, saved) = assign_forward(gpu, v, &u, &d, votes, 0.1)?;
        assign_backward(gpu, v, &u, &d, votes, 0.1, &p, &saved, &dp)?;
        Ok(())
    };
    SoftAssignVariant::ALL.into_iter().map(|v| Ok((v, variant::median_ms(gpu, 1, || once(v))?))).collect()
}

/// The fastest of `timings`.
pub fn fastest(timings: &[(SoftAssignVariant, f64)]) -> SoftAssignVariant {
    variant::fastest(timings).0
}
