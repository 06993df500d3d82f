//! The whole SOP assignment p = softmax(u·Dᵀ/τ)·Y fused in the FlashAttention style
//! (shaders/soft_assign_flash.wgsl): blocks of 8 rows per workgroup, D in tiles of 64
//! members, online softmax, no (R, M) logits buffer; the backward recomputes the logits from
//! the saved logsumexp and writes du with no atomics.
//!
//! u (…, W) embeddings, D (M, W) support embeddings, Y (M, K) votes (any Y); p (…, K).
//! Memory: the forward saves lse (R) f32, 4 bytes a row, instead of the (R, M) logits.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, u32_of, Grid, Kernel};

pub static SOFT_ASSIGN_FLASH: Shader = shader!(trusted "soft_assign_flash.wgsl");

/// Rows per workgroup (`BR` in the shader); each workgroup has 64 invocations.
const BR: usize = 8;
const FLASH_FORWARD: Kernel = Kernel { shader: &SOFT_ASSIGN_FLASH, entry: "soft_assign_flash_forward", wg: 64 };
const FLASH_BACKWARD: Kernel = Kernel { shader: &SOFT_ASSIGN_FLASH, entry: "soft_assign_flash_backward", wg: 64 };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    m: u32,
    k: u32,
    w: u32,
    inv_tau: f32,
    _pad: [u32; 3],
}

/// What the forward keeps for the backward.
pub struct FlashSaved {
    /// (R) f32: logsumexp_m(u·D_m / τ) of each row.
    pub lse: Tensor,
}

fn check(op: &'static str, u: &Tensor, d: &Tensor, y: &Tensor, tau: f32) -> Result<Params> {
    check_f32(op, &[("u", u), ("D", d), ("Y", y)])?;
    let err = |what: &str| SopError::shape(op, format!("u {:?}, D {:?}, Y {:?}: {what}", u.shape, d.shape, y.shape));
    if u.shape.is_empty() || d.shape.len() != 2 || y.shape.len() != 2 {
        return Err(err("u must be (…, W), D (M, W) and Y (M, K)"));
    }
    let (m, w, k) = (d.shape[0], d.shape[1], y.shape[1]);
    if u.shape.last() != Some(&w) || y.shape[0] != m {
        return Err(err("widths differ"));
    }
    if m == 0 || k == 0 || w == 0 {
        return Err(err("M, K and W must be at least 1"));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(SopError::shape(op, format!("tau {tau} must be positive and finite")));
    }
    let r = u.numel() / w;
    for (what, n) in [("R·W", r * w), ("R·K", r * k), ("M·W", m * w), ("M·K", m * k), ("R", r.div_ceil(BR) * BR)] {
        u32_of(op, what, n)?;
    }
    Ok(Params { r: r as u32, m: m as u32, k: k as u32, w: w as u32, inv_tau: (1.0 / tau as f64) as f32, _pad: [0; 3] })
}

/// p (…, K) and the saved logsumexp, from u (…, W), D (M, W), Y (M, K), τ > 0.
pub fn flash_forward(gpu: &Gpu, u: &Tensor, d: &Tensor, y: &Tensor, tau: f32) -> Result<(Tensor, FlashSaved)> {
    let prm = check("soft_assign_flash_forward", u, d, y, tau)?;
    let mut shape = u.shape.clone();
    *shape.last_mut().expect("checked non-empty") = prm.k as usize;
    let p = gpu.empty(&shape, DType::F32)?;
    let lse = gpu.empty(&[prm.r as usize], DType::F32)?;
    let binds =
        [Bind::Read(u), Bind::Read(d), Bind::Read(y), Bind::Read(u), Bind::Read(u), Bind::Write(&lse), Bind::Write(&p)];
    launch(gpu, &FLASH_FORWARD, &prm, &binds, Grid::Groups(gpu.grid((prm.r as usize).div_ceil(BR) as u32)))?;
    Ok((p, FlashSaved { lse }))
}

/// du (…, W) from dp (…, K), the forward's p and saved logsumexp: dlogits_m = (1/τ)·a_m·(g_m − ḡ)
/// with g_m = Σ_k dp_k Y[m, k] and ḡ = dp·p, then du = dlogits·D (see the shader's header).
#[allow(clippy::too_many_arguments)]
pub fn flash_backward(
    gpu: &Gpu,
    u: &Tensor,
    d: &Tensor,
    y: &Tensor,
    tau: f32,
    p: &Tensor,
    saved: &FlashSaved,
    dp: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "soft_assign_flash_backward";
    let prm = check(OP, u, d, y, tau)?;
    check_f32(OP, &[("p", p), ("dp", dp)])?;
    let (r, k) = (prm.r as usize, prm.k as usize);
    if p.numel() != r * k || dp.numel() != r * k || saved.lse.numel() != r {
        let what = format!("p {:?}, dp {:?}, lse {:?} for R {r}, K {k}", p.shape, dp.shape, saved.lse.shape);
        return Err(SopError::shape(OP, what));
    }
    let du = gpu.empty(&u.shape, DType::F32)?;
    let binds = [
        Bind::Read(u),
        Bind::Read(d),
        Bind::Read(y),
        Bind::Read(dp),
        Bind::Read(p),
        Bind::Write(&saved.lse),
        Bind::Write(&du),
    ];
    launch(gpu, &FLASH_BACKWARD, &prm, &binds, Grid::Groups(gpu.grid(r.div_ceil(BR) as u32)))?;
    Ok(du)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(SOFT_ASSIGN_FLASH, Params, [r, m, k, w, inv_tau])]
}
