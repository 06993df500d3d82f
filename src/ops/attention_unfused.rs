//! The unfused attention (`AttentionVariant::Unfused`): per (image, head) the scores, the
//! probabilities and the products are whole (T, T) and (T, Dh) matrices, so the products run
//! in the batched matmul (on CPU adapters the tuned `subgroup_16x4`), with the non-matmul
//! steps in shaders/attention_unfused.wgsl. Same results as the fused kernels up to rounding,
//! and the same lse, so it pairs with any other variant's forward or backward.
//!
//! Forward:  q, k, v = split(qkv) (B·H, T, Dh);  S = scale·q·kᵀ (B·H, T, T);
//!           P = softmax_rows(S) in place, lse = m + log l;  O = P·v;  out = merge(O).
//! Backward: P = exp(scale·q·kᵀ − lse) (recomputed, not stored by the forward);
//!           dV = Pᵀ·dO;  dP = dO·vᵀ;  dS = scale·P∘(dP − rowsum(P∘dP)) in place of dP
//!           (rowsum(P∘dP)_i = dO_i·O_i = D_i);  dQ = dS·k;  dK = dSᵀ·q;  dqkv = merge.
//! Memory: one B·H·T² float matrix in the forward, two in the backward (S/P and dP/dS),
//! plus (B·H, T, Dh) copies of q, k, v (and dO, dQ, dK, dV in the backward), all pooled and
//! released when the call returns. At ViT-S shapes (B 64, T 197, H 6) one matrix is 59.6 MB.
//! `AttentionVariant::check_fits` refuses a matrix over one storage binding.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::attention::Dims;
use crate::ops::launch::{launch, launch_with, u32_of, Grid, Kernel, WG};
use crate::ops::matmul::Matmul;

/// Trusted: every access is an in-range index of a bound-checked invocation (see its header).
pub static ATTENTION_UNFUSED: Shader = shader!(trusted "attention_unfused.wgsl");

const HEADS_SPLIT: Kernel = Kernel { shader: &ATTENTION_UNFUSED, entry: "heads_split", wg: WG };
const HEADS_MERGE: Kernel = Kernel { shader: &ATTENTION_UNFUSED, entry: "heads_merge", wg: WG };
const SOFTMAX_LSE: Kernel = Kernel { shader: &ATTENTION_UNFUSED, entry: "attention_softmax_lse", wg: WG };
const PROBS: Kernel = Kernel { shader: &ATTENTION_UNFUSED, entry: "attention_probs", wg: WG };
const DSCORES: Kernel = Kernel { shader: &ATTENTION_UNFUSED, entry: "attention_dscores", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    b: u32,
    t: u32,
    h: u32,
    dh: u32,
    /// Row width of the (B, T, C) side of a split or merge (3D for qkv, D for out / dO).
    c: u32,
    /// First column of that side (0, D or 2D: q, k or v).
    col0: u32,
    /// Rows of the score matrix: B·H·T.
    r: u32,
    scale: f32,
}

fn params(dm: &Dims, c: usize, col0: usize) -> Result<Params> {
    let r = u32_of("attention (unfused)", "B·H·T", dm.b * dm.h * dm.t)?;
    u32_of("attention (unfused)", "B·H·T²", dm.b * dm.h * dm.t * dm.t)?;
    let u = |n: usize| n as u32; // each ≤ B·H·T² (checked above) or a width of qkv
    Ok(Params { b: u(dm.b), t: u(dm.t), h: u(dm.h), dh: u(dm.dh), c: u(c), col0: u(col0), r, scale: dm.scale() })
}

/// Columns col0.. of x (B, T, c) as a new (B·H, T, Dh) tensor.
fn split(gpu: &Gpu, x: &Tensor, dm: &Dims, c: usize, col0: usize) -> Result<Tensor> {
    let y = gpu.empty(&[dm.b * dm.h, dm.t, dm.dh], DType::F32)?;
    let binds = [Bind::Write(x), Bind::Write(&y)];
    launch_with(gpu, &HEADS_SPLIT, &head_width(dm), &params(dm, c, col0)?, &binds, tokens(gpu, dm)?)?;
    Ok(y)
}

/// x (B·H, T, Dh) into columns col0.. of y (B, T, c).
fn merge(gpu: &Gpu, x: &Tensor, y: &Tensor, dm: &Dims, c: usize, col0: usize) -> Result<()> {
    let binds = [Bind::Write(x), Bind::Write(y)];
    launch_with(gpu, &HEADS_MERGE, &head_width(dm), &params(dm, c, col0)?, &binds, tokens(gpu, dm)?)
}

/// The shader's `DH` override: the head width.
fn head_width(dm: &Dims) -> [(&'static str, f64); 1] {
    [("DH", dm.dh as f64)]
}

/// One workgroup per token (b, t): heads_split and heads_merge.
fn tokens(gpu: &Gpu, dm: &Dims) -> Result<Grid> {
    Ok(Grid::Groups(gpu.grid(u32_of("attention (unfused)", "B·T", dm.b * dm.t)?)))
}

/// One invocation per score row of `kernel` over (scores, lse[, g]).
fn rows(gpu: &Gpu, kernel: &Kernel, dm: &Dims, binds: &[Bind]) -> Result<()> {
    launch(gpu, kernel, &params(dm, 0, 0)?, binds, Grid::Items(dm.b * dm.h * dm.t))
}

/// q, k, v of qkv (B, T, 3D), each (B·H, T, Dh).
fn split_qkv(gpu: &Gpu, qkv: &Tensor, dm: &Dims) -> Result<[Tensor; 3]> {
    Ok([
        split(gpu, qkv, dm, 3 * dm.d, 0)?,
        split(gpu, qkv, dm, 3 * dm.d, dm.d)?,
        split(gpu, qkv, dm, 3 * dm.d, 2 * dm.d)?,
    ])
}

/// (out (B, T, D), lse (B, H, T)) of qkv (B, T, 3D); T ≥ 1 and the scores fit (the caller checks).
pub(crate) fn forward(gpu: &Gpu, qkv: &Tensor, dm: Dims) -> Result<(Tensor, Tensor)> {
    let out = gpu.empty(&[dm.b, dm.t, dm.d], DType::F32)?;
    let lse = gpu.empty(&[dm.b, dm.h, dm.t], DType::F32)?;
    if dm.t == 0 || dm.b == 0 {
        return Ok((out, lse));
    }
    let [q, k, v] = split_qkv(gpu, qkv, &dm)?;
    let s = Matmul::new(&q, &k).trans_b().alpha(dm.scale()).run(gpu)?; // (B·H, T, T)
    rows(gpu, &SOFTMAX_LSE, &dm, &[Bind::Write(&s), Bind::Write(&lse)])?;
    let o = Matmul::new(&s, &v).run(gpu)?; // (B·H, T, Dh)
    merge(gpu, &o, &out, &dm, dm.d, 0)?;
    Ok((out, lse))
}

/// dqkv (B, T, 3D) from qkv, the forward's lse and dout (B, T, D).
pub(crate) fn backward(gpu: &Gpu, qkv: &Tensor, lse: &Tensor, dout: &Tensor, dm: Dims) -> Result<Tensor> {
    let dqkv = gpu.empty(&qkv.shape, DType::F32)?;
    if dm.t == 0 || dm.b == 0 {
        return Ok(dqkv);
    }
    let [q, k, v] = split_qkv(gpu, qkv, &dm)?;
    let g = split(gpu, dout, &dm, dm.d, 0)?;
    let p = Matmul::new(&q, &k).trans_b().alpha(dm.scale()).run(gpu)?;
    rows(gpu, &PROBS, &dm, &[Bind::Write(&p), Bind::Write(lse)])?;
    let dv = Matmul::new(&p, &g).trans_a().run(gpu)?;
    let ds = Matmul::new(&g, &v).trans_b().run(gpu)?; // dP, then dS in place
    rows(gpu, &DSCORES, &dm, &[Bind::Write(&p), Bind::Write(lse), Bind::Write(&ds)])?;
    let dq = Matmul::new(&ds, &k).run(gpu)?;
    let dk = Matmul::new(&ds, &q).trans_a().run(gpu)?;
    for (x, col0) in [(&dq, 0), (&dk, dm.d), (&dv, 2 * dm.d)] {
        merge(gpu, x, &dqkv, &dm, 3 * dm.d, col0)?;
    }
    Ok(dqkv)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(ATTENTION_UNFUSED, Params, [b, t, h, dh, c, col0, r, scale])]
}
