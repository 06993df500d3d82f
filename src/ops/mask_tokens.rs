//! iBOT/SOP mask-token substitution (shaders/mask_tokens.wgsl): after the patch embedding,
//! every masked patch's embedding is replaced by the learned mask token.
//! x, y (B, T, D) (any (…, D) whose rows match the mask), mask (B, T) u32 with 1 = masked
//! (any nonzero counts as masked), token (D).

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel, WG};

pub static MASK_TOKENS: Shader = shader!("mask_tokens.wgsl");

const MASK_TOKENS_FORWARD: Kernel = Kernel { shader: &MASK_TOKENS, entry: "mask_tokens_forward", wg: WG };
const MASK_TOKENS_BACKWARD_PARTIAL: Kernel =
    Kernel { shader: &MASK_TOKENS, entry: "mask_tokens_backward_partial", wg: WG };
const MASK_TOKENS_BACKWARD: Kernel = Kernel { shader: &MASK_TOKENS, entry: "mask_tokens_backward", wg: WG };

/// Rows per partial sum of dtoken (`CHUNK` in the shader).
const CHUNK: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    rows: u32,
    d: u32,
    chunks: u32,
    _p0: u32,
}

/// (rows, D) after checking x (…, D) f32, mask with one u32 per row, and token (D) when given.
fn check(x: &Tensor, mask: &Tensor, token: Option<&Tensor>) -> Result<(usize, usize)> {
    let err = |d: &str| {
        let tok = token.map(|t| format!(", token {:?}", t.shape)).unwrap_or_default();
        SopError::shape("mask_tokens", format!("x {:?}, mask {:?}{tok}: {d}", x.shape, mask.shape))
    };
    if x.shape.len() < 2 || x.dtype != DType::F32 {
        return Err(err("x must be f32 (B, T, D)"));
    }
    let d = x.shape[x.shape.len() - 1];
    let rows = x.shape[..x.shape.len() - 1].iter().product::<usize>();
    if mask.dtype != DType::U32 || mask.numel() != rows || mask.shape[..] != x.shape[..x.shape.len() - 1] {
        return Err(err("mask must be u32 with x's leading shape (B, T)"));
    }
    if let Some(t) = token {
        if t.dtype != DType::F32 || t.numel() != d {
            return Err(err("token must be f32 (D)"));
        }
    }
    if x.numel() > u32::MAX as usize {
        return Err(err("more than 2³² elements"));
    }
    Ok((rows, d))
}

/// y (B, T, D): token where mask[b, t] != 0, else x[b, t].
pub fn mask_tokens_forward(gpu: &Gpu, x: &Tensor, mask: &Tensor, token: &Tensor) -> Result<Tensor> {
    let (rows, d) = check(x, mask, Some(token))?;
    let y = gpu.empty(&x.shape, DType::F32)?;
    let prm = Params { rows: rows as u32, d: d as u32, chunks: 0, _p0: 0 };
    let binds = [Bind::Read(x), Bind::Read(mask), Bind::Read(token), Bind::Write(&y)];
    launch(gpu, &MASK_TOKENS_FORWARD, &prm, &binds, Grid::Items(rows * d))?;
    Ok(y)
}

/// (dx (B, T, D), dtoken (D)): dx = dy where not masked, 0 where masked; dtoken = Σ over the
/// masked (b, t) of dy[b, t] (the token was used once per masked row). New tensors,
/// nothing accumulates; dtoken's sum has a fixed order, so it is deterministic.
pub fn mask_tokens_backward(gpu: &Gpu, dy: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let (rows, d) = check(dy, mask, None)?;
    let dx = gpu.empty(&dy.shape, DType::F32)?;
    if rows == 0 {
        return Ok((dx, gpu.zeros(&[d], DType::F32)?));
    }
    let dtoken = gpu.empty(&[d], DType::F32)?;
    let chunks = rows.div_ceil(CHUNK);
    let part = gpu.empty(&[chunks, d], DType::F32)?;
    let prm = Params { rows: rows as u32, d: d as u32, chunks: chunks as u32, _p0: 0 };
    let binds =
        [Bind::Read(dy), Bind::Read(mask), Bind::Read(dy), Bind::Write(&dx), Bind::Write(&part), Bind::Write(&dtoken)];
    launch(gpu, &MASK_TOKENS_BACKWARD_PARTIAL, &prm, &binds[..5], Grid::Items(chunks * d))?;
    launch(gpu, &MASK_TOKENS_BACKWARD, &prm, &binds, Grid::Items(d))?;
    Ok((dx, dtoken))
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(MASK_TOKENS, Params, [rows, d, chunks])]
}
