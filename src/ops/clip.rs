//! Gradient-clipping factors and the step's non-finite flag on the device (shaders/clip.wgsl):
//! from each gradient's Σ g² and the step's checked scalars, one factor per tensor and a
//! sticky u32 flag that the optimiser, the EMA and the bank writes obey
//! (`adamw_multi`, `ema_update_unless`, `scatter_rows_ring_unless`).

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel};

pub static CLIP: Shader = shader!("clip.wgsl");

const CLIP_SCALES: Kernel = Kernel { shader: &CLIP, entry: "clip_scales", wg: 1 };

/// How the factors are made (docs/METHOD.md "Optimisation").
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClipRule {
    None,
    /// min(1, c / (‖g_t‖ + 1e-6)) per tensor.
    PerTensor(f32),
    /// min(1, c / (‖g‖ + 1e-6)) with one norm over all tensors.
    Global(f32),
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n_tensors: u32,
    n_checks: u32,
    mode: u32,
    clip: f32,
}

/// scale (T) ← the factors of `rule` from sq (T); flag (1, u32) ← 1 if any of sq or of the
/// first `n_checks` words of `checks` (f32 bits) is NaN or ±Inf (else left as it was).
pub fn clip_scales(
    gpu: &Gpu,
    sq: &Tensor,
    checks: &Tensor,
    n_checks: usize,
    flag: &Tensor,
    scale: &Tensor,
    rule: ClipRule,
) -> Result<()> {
    let t = sq.numel();
    let err = |d: &str| {
        SopError::shape(
            "clip_scales",
            format!(
                "sq {:?}, checks {:?} ({n_checks}), flag {:?}, scale {:?}: {d}",
                sq.shape, checks.shape, flag.shape, scale.shape
            ),
        )
    };
    if sq.dtype != DType::F32 || scale.dtype != DType::F32 || scale.numel() != t || t == 0 {
        return Err(err("sq and scale must be f32 of one non-zero length"));
    }
    if flag.dtype != DType::U32 || flag.numel() != 1 || n_checks > checks.numel() || checks.numel() == 0 {
        return Err(err("flag must be one u32 and checks hold at least n_checks words"));
    }
    let (mode, clip) = match rule {
        ClipRule::None => (0, 0.0),
        ClipRule::PerTensor(c) => (1, c),
        ClipRule::Global(c) => (2, c),
    };
    if !(clip.is_finite() && clip >= 0.0) {
        return Err(err("the clip threshold must be finite and non-negative"));
    }
    let prm = Params { n_tensors: t as u32, n_checks: n_checks as u32, mode, clip };
    let binds = [Bind::Read(sq), Bind::Read(checks), Bind::Write(flag), Bind::Write(scale)];
    launch(gpu, &CLIP_SCALES, &prm, &binds, Grid::Groups([1, 1, 1]))
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(CLIP, Params, [n_tensors, n_checks, mode, clip])]
}
