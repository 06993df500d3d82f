//! Deterministic sums (shaders/reduce.wgsl): `sum` and `sum_squares` of a whole tensor
//! (loss totals, gradient norms) and `sum_rows`, the column sums of a (R, C) matrix (bias
//! gradients, the backward of `add_broadcast`). Every sum runs in a fixed order that depends
//! only on the shape (stages of partial sums, no atomics), so results repeat bit for bit.
//!
//! Backward (the callers apply these; no kernel of their own):
//!   s = Σ x        → dx = ds (broadcast)
//!   s = Σ x²       → dx = 2 · ds · x (`scale`)
//!   c = sum_rows(x) → dx[r, j] = dc[j] (`add_broadcast` onto zeros)

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, groups, u32_of};

pub static REDUCE: Shader = shader!("reduce.wgsl");

/// Rows per partial sum in `sum_rows`: (R, C) becomes (ceil(R/64), C) per stage.
pub const ROWS_PER_CHUNK: usize = 64;
/// Elements per partial sum in `sum` / `sum_squares`: n becomes ceil(n/256) per stage.
pub const ELEMENTS_PER_PARTIAL: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    cols: u32,
    rows: u32,
    chunk: u32,
    nchunks: u32,
    square: u32,
    _pad: [u32; 2],
}

/// One stage: x (n elements as (rows, cols), last row possibly short) -> (nchunks, cols)
/// partial column sums over chunks of `chunk` rows.
fn stage(gpu: &Gpu, x: &Tensor, cols: usize, chunk: usize, square: bool) -> Result<Tensor> {
    let n = x.numel();
    let rows = n.div_ceil(cols);
    let nchunks = rows.div_ceil(chunk);
    let out = gpu.empty(&[nchunks, cols], DType::F32)?;
    let params = Params {
        n: u32_of("sum_rows", "elements", n)?,
        cols: u32_of("sum_rows", "cols", cols)?,
        rows: u32_of("sum_rows", "rows", rows)?,
        chunk: u32_of("sum_rows", "chunk", chunk)?,
        nchunks: u32_of("sum_rows", "chunks", nchunks)?,
        square: square as u32,
        _pad: [0; 2],
    };
    gpu.dispatch(
        &REDUCE,
        "sum_rows",
        &[],
        bytemuck::bytes_of(&params),
        &[Bind::Read(x), Bind::Write(&out)],
        groups(gpu, "sum_rows", nchunks * cols)?,
    )?;
    Ok(out)
}

/// Column sums of x seen as (R, C) with C its last dim (any leading dims are rows): (C).
pub fn sum_rows(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    check_f32("sum_rows", &[("x", x)])?;
    let Some(&c) = x.shape.last() else {
        return Err(SopError::shape("sum_rows", "x is 0-dimensional; need (R, C)"));
    };
    let r = if c == 0 { 0 } else { x.numel() / c };
    if r == 0 || c == 0 {
        return gpu.zeros(&[c], DType::F32);
    }
    let mut partial = stage(gpu, x, c, ROWS_PER_CHUNK, false)?;
    while partial.shape[0] > 1 {
        partial = stage(gpu, &partial, c, ROWS_PER_CHUNK, false)?;
    }
    partial.reshape(&[c])
}

fn total(gpu: &Gpu, op: &'static str, x: &Tensor, square: bool) -> Result<Tensor> {
    check_f32(op, &[("x", x)])?;
    let n = x.numel();
    if n == 0 {
        return gpu.zeros(&[1], DType::F32);
    }
    let mut partial = stage(gpu, x, n.div_ceil(ELEMENTS_PER_PARTIAL), ELEMENTS_PER_PARTIAL, square)?;
    while partial.numel() > 1 {
        partial = stage(gpu, &partial, partial.numel().div_ceil(ELEMENTS_PER_PARTIAL), ELEMENTS_PER_PARTIAL, false)?;
    }
    partial.reshape(&[1])
}

/// Σ x over every element: (1).
pub fn sum(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    total(gpu, "sum", x, false)
}

/// Σ x² over every element: (1) (the squared L2 norm, for gradient clipping).
pub fn sum_squares(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    total(gpu, "sum_squares", x, true)
}
