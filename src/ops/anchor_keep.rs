//! The 1/CV anchor keep (`AnchorSampling::InverseCv`, docs/METHOD.md "Building the
//! prototypes", step 4) on the device (shaders/anchor_keep.wgsl): each anchor's weight 1/CV
//! of its SE similarities, then P′ = P/2 weighted draws without replacement from the host's
//! uniforms, so a step with this option reads nothing back. No backward: the keep list is
//! discrete.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, u32_of, Grid, Kernel};

pub static ANCHOR_KEEP: Shader = shader!("anchor_keep.wgsl");

const ANCHOR_KEEP_INVERSE_CV: Kernel = Kernel { shader: &ANCHOR_KEEP, entry: "anchor_keep_inverse_cv", wg: 256 };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    p: u32,
    k: u32,
    kept: u32,
    _p0: u32,
    pool_factor: f32,
    _pad: [u32; 3],
}

/// The kept anchors and the weights they were drawn with.
pub struct AnchorKeep {
    /// (P′) u32 anchors kept, in draw order.
    pub keep: Tensor,
    /// (P) f32 weight 1/CV of each anchor (all 1 when none is positive).
    pub weights: Tensor,
}

/// Keep `draws.len()` of the P anchors whose SE similarities are `sims` (P, k), k = E − 1,
/// drawn one by one without replacement with weight 1/CV, CV = std/mean · (1 + 1/(4·pool)),
/// `draws` (P′) f32 uniforms in [0, 1) (one per draw, from the host's RNG).
pub fn anchor_keep_inverse_cv(gpu: &Gpu, sims: &Tensor, draws: &Tensor, pool: usize) -> Result<AnchorKeep> {
    const OP: &str = "anchor_keep_inverse_cv";
    let (p, kept) = (sims.shape.first().copied().unwrap_or(0), draws.numel());
    if sims.shape.len() != 2 || sims.dtype != DType::F32 || draws.dtype != DType::F32 || draws.shape.len() != 1 {
        let detail = format!("sims {:?} {:?}, draws {:?} {:?}", sims.shape, sims.dtype, draws.shape, draws.dtype);
        return Err(SopError::shape(OP, format!("{detail}: want (P, k) and (P') f32")));
    }
    if sims.shape[1] == 0 || kept == 0 || kept > p || pool == 0 {
        let detail = format!("sims {:?}, {kept} draws, pool {pool}", sims.shape);
        return Err(SopError::shape(OP, format!("{detail}: need k >= 1, 1 <= P' <= P and a pool")));
    }
    let prm = Params {
        p: u32_of(OP, "P", p)?,
        k: u32_of(OP, "k", sims.shape[1])?,
        kept: u32_of(OP, "P'", kept)?,
        _p0: 0,
        pool_factor: (1.0 + 1.0 / (4.0 * pool as f64)) as f32,
        _pad: [0; 3],
    };
    let weights = gpu.empty(&[p], DType::F32)?;
    let work = gpu.empty(&[p], DType::F32)?;
    let keep = gpu.empty(&[kept], DType::U32)?;
    let binds = [Bind::Read(sims), Bind::Read(draws), Bind::Write(&weights), Bind::Write(&work), Bind::Write(&keep)];
    launch(gpu, &ANCHOR_KEEP_INVERSE_CV, &prm, &binds, Grid::Groups([1, 1, 1]))?;
    Ok(AnchorKeep { keep, weights })
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(ANCHOR_KEEP, Params, [p, k, kept, pool_factor])]
}
