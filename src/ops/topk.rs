//! Row-wise top-k (shaders/topk.wgsl): for each row of x (R, C), the k largest values
//! (k ≤ 16) and their column indices, sorted descending, ties broken by the lower index.
//! SOP's prototype construction uses it on the anchor-vs-bank similarity matrix.
//!
//! Two passes: per (row, lane) candidates, then a per-row merge. Rows holding NaN give
//! valid column indices in an unspecified order (see the shader header). No backward: the
//! indices are discrete, and SOP reads the similarities again through `gather_rows`.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel, WG};

pub static TOPK: Shader = shader!("topk.wgsl");

const TOPK_FORWARD_CANDIDATES: Kernel = Kernel { shader: &TOPK, entry: "topk_forward_candidates", wg: WG };
const TOPK_FORWARD: Kernel = Kernel { shader: &TOPK, entry: "topk_forward", wg: WG };

/// Largest k the kernel keeps in its private sorted list (`KMAX` in the shader).
pub const TOPK_MAX_K: usize = 16;

/// Columns each lane of the first pass scans (about; the last lanes may get one fewer).
const COLUMNS_PER_LANE: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    c: u32,
    k: u32,
    lanes: u32,
}

/// (values (R, k) f32, indices (R, k) u32) of the k largest entries of each row of x (R, C),
/// in descending order; equal values are listed by increasing column.
pub fn topk_forward(gpu: &Gpu, x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let err = |d: String| SopError::shape("topk", format!("x {:?}, k = {k}: {d}", x.shape));
    if x.shape.len() != 2 {
        return Err(err("x must be (R, C)".into()));
    }
    if x.dtype != DType::F32 {
        return Err(err("x must be f32".into()));
    }
    let (r, c) = (x.shape[0], x.shape[1]);
    if k == 0 || k > TOPK_MAX_K {
        return Err(err(format!("k must be in 1..={TOPK_MAX_K}")));
    }
    if c < k {
        return Err(err("a row has fewer than k columns".into()));
    }
    let lanes = c.div_ceil(COLUMNS_PER_LANE);
    let too_big = |n: usize| n > u32::MAX as usize;
    if too_big(r * c) || too_big(r * lanes * k) {
        return Err(err("more than 2³² elements".into()));
    }
    let values = gpu.empty(&[r, k], DType::F32)?;
    let indices = gpu.empty(&[r, k], DType::U32)?;
    if r == 0 {
        return Ok((values, indices));
    }
    let cand_v = gpu.empty(&[r, lanes, k], DType::F32)?;
    let cand_i = gpu.empty(&[r, lanes, k], DType::U32)?;
    let params = Params { r: r as u32, c: c as u32, k: k as u32, lanes: lanes as u32 };
    let binds =
        [Bind::Read(x), Bind::Write(&cand_v), Bind::Write(&cand_i), Bind::Write(&values), Bind::Write(&indices)];
    launch(gpu, &TOPK_FORWARD_CANDIDATES, &params, &binds, Grid::Items(r * lanes))?;
    launch(gpu, &TOPK_FORWARD, &params, &binds, Grid::Items(r))?;
    Ok((values, indices))
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(TOPK, Params, [r, c, k, lanes])]
}
