//! Which attention variant runs (src/ops/attention.rs): `SOP_ATTENTION=<name>` if set; on
//! CPU adapters a rule (no timing: it would cost seconds there); on other adapters the
//! fastest variant, timed once at first use on a ViT-S-like shape and kept in the on-disk
//! autotune cache (src/ops/autotune_cache.rs) per adapter and driver. The `unfused` variant
//! stores B·H·T² floats and `subgroup` needs subgroups and T ≤ 64; where the chosen one does
//! not fit it falls back to `fused`, with a warning that names the reason (once per process).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::ops::attention::{attention_backward_with, attention_forward_with, Dims, SUBGROUP_MAX_TOKENS};
use crate::ops::variant::{self, Variant};

/// The op family name under which the device keeps its (GPU) attention choice and the
/// autotune cache its timings.
pub(crate) const FAMILY: &str = "attention";

/// How the attention is computed (see src/ops/attention.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// shaders/attention.wgsl: one invocation per row, no barriers, nothing T² stored.
    Fused,
    /// shaders/attention_flash.wgsl: FlashAttention-2 tiles through workgroup memory.
    Flash2,
    /// src/ops/attention_unfused.rs: batched matmuls and row softmaxes, B·H·T² floats stored.
    Unfused,
    /// shaders/attention_subgroup.wgsl: T ≤ 64, blocks of ≤ 24 rows per group of 8 subgroup lanes.
    Subgroup,
}

/// On CPU adapters with subgroups (where the matmul is `subgroup_16x4`) the rule takes
/// `unfused` from this many tokens on: below it the 64 × 64 matmul tiles are mostly padding
/// (benches/RESULTS.md, issue 14); below it they take `subgroup` (T ≤ 64 fits its registers).
pub const UNFUSED_MIN_TOKENS: usize = 64;

/// The shape the GPU autotune times: (B, T, H, Dh), ViT-S at batch 16.
pub const AUTOTUNE_SHAPE: (usize, usize, usize, usize) = (16, 197, 6, 64);

static WARNED_FALLBACK: AtomicBool = AtomicBool::new(false);

impl AttentionVariant {
    pub const ALL: [AttentionVariant; 4] =
        [AttentionVariant::Fused, AttentionVariant::Flash2, AttentionVariant::Unfused, AttentionVariant::Subgroup];

    pub fn name(self) -> &'static str {
        match self {
            AttentionVariant::Fused => "fused",
            AttentionVariant::Flash2 => "flash2",
            AttentionVariant::Unfused => "unfused",
            AttentionVariant::Subgroup => "subgroup",
        }
    }

    pub fn parse(s: &str) -> Option<AttentionVariant> {
        variant::parse(s)
    }

    /// `SOP_ATTENTION`, if set: a variant name, or an error that lists the valid ones.
    pub fn from_env() -> Result<Option<AttentionVariant>> {
        variant::from_env()
    }

    /// Bytes of one B·H·T² score matrix (`unfused` holds one in the forward, two in the
    /// backward, besides the (B·H, T, Dh) copies of q, k, v and dO).
    pub fn scores_bytes(dm: &Dims) -> u64 {
        (dm.b * dm.h) as u64 * (dm.t * dm.t) as u64 * 4
    }

    /// Whether this variant can run `dm` on `gpu`: Err names why not (`unfused`: its score
    /// matrix must fit one storage binding and one buffer; `subgroup`: the adapter must have
    /// subgroups of at least 8 lanes, queried at device creation, and T ≤ 64).
    pub fn check_fits(self, gpu: &Gpu, dm: &Dims) -> Result<()> {
        if self == AttentionVariant::Subgroup {
            if !gpu.subgroups {
                return Err(SopError::Invalid(format!(
                    "attention (subgroup) needs subgroup operations with at least 8 lanes, which {} lacks",
                    gpu.adapter_name()
                )));
            }
            if dm.t > SUBGROUP_MAX_TOKENS {
                return Err(SopError::Invalid(format!(
                    "attention (subgroup) holds at most {SUBGROUP_MAX_TOKENS} tokens in registers, T = {}",
                    dm.t
                )));
            }
            return Ok(());
        }
        if self != AttentionVariant::Unfused {
            return Ok(());
        }
        let limit = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size);
        let bytes = AttentionVariant::scores_bytes(dm);
        if bytes > limit {
            return Err(SopError::Limit {
                op: "attention (unfused)",
                detail: format!("B·H·T² = {}·{}·{}² floats = {bytes} bytes of scores", dm.b, dm.h, dm.t),
                limit,
            });
        }
        Ok(())
    }

    /// The variant for this shape: the override, the CPU rule or the GPU's timed choice, then
    /// `fused` instead of an `unfused` or `subgroup` that does not fit (warned once, with the
    /// reason).
    pub fn for_shape(gpu: &Gpu, dm: &Dims) -> Result<AttentionVariant> {
        let v = match AttentionVariant::from_env()? {
            Some(v) => v,
            None if gpu.is_cpu() => AttentionVariant::cpu_rule(gpu, dm),
            None => AttentionVariant::for_gpu(gpu)?,
        };
        if let Err(e) = v.check_fits(gpu, dm) {
            if !WARNED_FALLBACK.swap(true, Ordering::Relaxed) {
                log::warn!("attention: using fused instead of {}: {e}", v.name());
            }
            return Ok(AttentionVariant::Fused);
        }
        Ok(v)
    }

    /// CPU adapters where subgroups exist (the matmul is then `subgroup_16x4`): `unfused` for
    /// T ≥ `UNFUSED_MIN_TOKENS`, `subgroup` below; `fused` without subgroups.
    pub fn cpu_rule(gpu: &Gpu, dm: &Dims) -> AttentionVariant {
        match (gpu.subgroups, dm.t) {
            (false, _) => AttentionVariant::Fused,
            (true, t) if t >= UNFUSED_MIN_TOKENS => AttentionVariant::Unfused,
            (true, _) => AttentionVariant::Subgroup,
        }
    }

    /// Other adapters: the cached choice, else the autotune's (stored for later runs), fixed
    /// for the device's lifetime.
    fn for_gpu(gpu: &Gpu) -> Result<AttentionVariant> {
        variant::fixed(gpu, || Ok(variant::tuned(gpu)))
    }

    /// What a checkpoint records so that a resume repeats the run bit for bit: the GPU's
    /// timed choice (fixed for the device's lifetime). None on CPU adapters (there a rule of
    /// the shape decides) and under `SOP_ATTENTION` (the user's choice holds on resume too).
    pub fn recorded(gpu: &Gpu) -> Result<Option<AttentionVariant>> {
        if gpu.is_cpu() || AttentionVariant::from_env()?.is_some() {
            return Ok(None);
        }
        AttentionVariant::for_gpu(gpu).map(Some)
    }

    /// Use `v` on this (GPU) device from now on: a resumed run keeps the variant it started
    /// with. False when another is already fixed. CPU adapters follow their rule regardless.
    pub fn pin(gpu: &Gpu, v: AttentionVariant) -> bool {
        variant::pin(gpu, v)
    }
}

impl Variant for AttentionVariant {
    const FAMILY: &'static str = FAMILY;
    const ENV: &'static str = "SOP_ATTENTION";
    const KIND: &'static str = "attention";
    const OP: &'static str = "attention";
    const FALLBACK: Self = AttentionVariant::Fused;
    const TUNE_SHAPE: (usize, usize, usize) = {
        let (b, t, h, dh) = AUTOTUNE_SHAPE;
        (b * h, t, dh)
    };
    fn all() -> &'static [Self] {
        &AttentionVariant::ALL
    }
    fn name(self) -> &'static str {
        AttentionVariant::name(self)
    }
    fn autotune(gpu: &Gpu) -> Result<Vec<(Self, f64)>> {
        autotune(gpu)
    }
}

/// `AUTOTUNE_SHAPE` as the cache records it: (B·H, T, Dh).
pub fn cache_shape() -> (usize, usize, usize) {
    <AttentionVariant as Variant>::TUNE_SHAPE
}

/// Timed forward + backward passes per sample (a single pass would time the wait).
const AUTOTUNE_ITERS: usize = 5;

/// Median milliseconds of one forward + backward of every variant that fits, on
/// `AUTOTUNE_SHAPE`, after a warm-up that builds the pipelines; 3 samples each.
pub fn autotune(gpu: &Gpu) -> Result<Vec<(AttentionVariant, f64)>> {
    let (b, t, h, dh) = AUTOTUNE_SHAPE;
    let d = h * dh;
    let qkv: Vec<f32> = (0..b * t * 3 * d).map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6).collect();
    let dout: Vec<f32> = (0..b * t * d).map(|i| ((i * 104729) % 11) as f32 * 0.1 - 0.5).collect();
    let qkv = gpu.upload_f32(&[b, t, 3 * d], &qkv)?;
    let dout = gpu.upload_f32(&[b, t, d], &dout)?;
    let dm = Dims { b, t, h, d, dh };
    let pass = |v: AttentionVariant| -> Result<()> {
        let (out, lse) = attention_forward_with(gpu, &qkv, h, v)?;
        attention_backward_with(gpu, [&qkv, &out, &lse, &dout], h, v).map(|_| ())
    };
    let fitting = AttentionVariant::ALL.into_iter().filter(|v| v.check_fits(gpu, &dm).is_ok());
    fitting.map(|v| Ok((v, variant::median_ms(gpu, AUTOTUNE_ITERS, || pass(v))?))).collect()
}

/// The variant with the smallest time (`fused` when none was timed).
pub fn fastest(timings: &[(AttentionVariant, f64)]) -> AttentionVariant {
    variant::fastest(timings).0
}
