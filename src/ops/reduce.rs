//! Deterministic sums (shaders/reduce.wgsl): `sum` and `sum_squares` of a whole tensor
//! (loss totals, gradient norms) and `sum_rows`, the column sums of a (R, C) matrix (bias
//! gradients, the backward of `add_broadcast`); `SquaresPlan`, the sums of squares of every
//! tensor of a flat set in a few dispatches (the gradients' norms). Every sum runs in a fixed order that depends
//! only on the shape (stages of partial sums, no atomics), so results repeat bit for bit.
//!
//! Backward (the callers apply these; no kernel of their own):
//!   s = Σ x        → dx = ds (broadcast)
//!   s = Σ x²       → dx = 2 · ds · x (`scale`)
//!   c = sum_rows(x) → dx[r, j] = dc[j] (`add_broadcast` onto zeros)

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, FlatLayout, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, u32_of, Grid, Kernel, WG};

pub static REDUCE: Shader = shader!("reduce.wgsl");

const SUM_ROWS: Kernel = Kernel { shader: &REDUCE, entry: "sum_rows", wg: WG };
const SUM_ROWS_UNALIGNED: Kernel = Kernel { shader: &REDUCE, entry: "sum_rows_unaligned", wg: WG };
const SUM_ROWS_FUSED: Kernel = Kernel { shader: &REDUCE, entry: "sum_rows_fused", wg: WG };
const SUM_ROWS_FUSED_UNALIGNED: Kernel = Kernel { shader: &REDUCE, entry: "sum_rows_fused_unaligned", wg: WG };
const SUM: Kernel = Kernel { shader: &REDUCE, entry: "sum", wg: WG };
const SUM_SEGMENTS: Kernel = Kernel { shader: &REDUCE, entry: "sum_segments", wg: WG };

/// Rows per partial sum in `sum_rows`: (R, C) becomes (ceil(R/64), C) per stage.
pub const ROWS_PER_CHUNK: usize = 64;
/// vec4 units per partial sum in `sum` / `sum_squares`: n elements become
/// ceil(ceil(n/4)/256) partial sums per stage (each of ≤ 1024 elements).
pub const UNITS_PER_PARTIAL: usize = 256;

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

fn dispatch(gpu: &Gpu, kernel: &Kernel, x: &Tensor, out: &Tensor, p: Params, invocations: usize) -> Result<()> {
    launch(gpu, kernel, &p, &[Bind::Read(x), Bind::Write(out)], Grid::Items(invocations))
}

/// One `sum_rows` stage: x (rows, cols) -> (ceil(rows/64), cols) partial column sums.
fn rows_stage(gpu: &Gpu, x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let nchunks = rows.div_ceil(ROWS_PER_CHUNK);
    let out = gpu.empty(&[nchunks, cols], DType::F32)?;
    let p = Params {
        n: u32_of("sum_rows", "elements", rows * cols)?,
        cols: u32_of("sum_rows", "cols", cols)?,
        rows: u32_of("sum_rows", "rows", rows)?,
        chunk: ROWS_PER_CHUNK as u32,
        nchunks: u32_of("sum_rows", "chunks", nchunks)?,
        square: 0,
        _pad: [0; 2],
    };
    if cols.is_multiple_of(4) {
        dispatch(gpu, &SUM_ROWS, x, &out, p, nchunks * cols / 4)?;
    } else {
        dispatch(gpu, &SUM_ROWS_UNALIGNED, x, &out, p, nchunks * cols)?;
    }
    Ok(out)
}

/// Column sums of x seen as (R, C) with C its last dim (any leading dims are rows): (C).
pub fn sum_rows(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    check_f32("sum_rows", &[("x", x)])?;
    let Some(&c) = x.shape.last() else {
        return Err(SopError::shape("sum_rows", "x is 0-dimensional; need (R, C)"));
    };
    let r = x.numel().checked_div(c).unwrap_or(0);
    if r == 0 || c == 0 {
        return gpu.zeros(&[c], DType::F32);
    }
    let nchunks = r.div_ceil(ROWS_PER_CHUNK);
    if nchunks <= WG as usize {
        // Both stages in one dispatch, the same bits (`sum_rows_fused`).
        let out = gpu.empty(&[c], DType::F32)?;
        let p = Params {
            n: u32_of("sum_rows", "elements", r * c)?,
            cols: u32_of("sum_rows", "cols", c)?,
            rows: r as u32,
            chunk: ROWS_PER_CHUNK as u32,
            nchunks: nchunks as u32,
            square: 0,
            _pad: [0; 2],
        };
        let (kernel, groups) =
            if c.is_multiple_of(4) { (&SUM_ROWS_FUSED, c / 4) } else { (&SUM_ROWS_FUSED_UNALIGNED, c) };
        let groups = gpu.grid(u32_of("sum_rows", "workgroups", groups)?);
        launch(gpu, kernel, &p, &[Bind::Read(x), Bind::Write(&out)], Grid::Groups(groups))?;
        return Ok(out);
    }
    let mut partial = rows_stage(gpu, x, r, c)?;
    while partial.shape[0] > 1 {
        partial = rows_stage(gpu, &partial, partial.shape[0], c)?;
    }
    partial.reshape(&[c])
}

/// One `sum` stage: n elements -> ceil(ceil(n/4)/256) partial sums.
fn total_stage(gpu: &Gpu, x: &Tensor, n: usize, square: bool) -> Result<Tensor> {
    let units = n.div_ceil(4);
    let cols = units.div_ceil(UNITS_PER_PARTIAL);
    let out = gpu.empty(&[cols], DType::F32)?;
    let p = Params {
        n: u32_of("sum", "elements", n)?,
        cols: cols as u32,
        rows: units.div_ceil(cols) as u32,
        chunk: 0,
        nchunks: 1,
        square: square as u32,
        _pad: [0; 2],
    };
    dispatch(gpu, &SUM, x, &out, p, cols)?;
    Ok(out)
}

fn total(gpu: &Gpu, op: &'static str, x: &Tensor, square: bool) -> Result<Tensor> {
    check_f32(op, &[("x", x)])?;
    let n = x.numel();
    if n == 0 {
        return gpu.zeros(&[1], DType::F32);
    }
    let mut partial = total_stage(gpu, x, n, square)?;
    while partial.numel() > 1 {
        partial = total_stage(gpu, &partial, partial.numel(), false)?;
    }
    Ok(partial)
}

/// Σ x over every element: (1).
pub fn sum(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    total(gpu, "sum", x, false)
}

/// Σ x² over every element: (1) (the squared L2 norm, for gradient clipping).
pub fn sum_squares(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    total(gpu, "sum_squares", x, true)
}

/// `sum`'s stage shape for n elements: (cols, rows) = partial sums and vec4 units per partial.
fn stage_shape(n: usize) -> (usize, usize) {
    let units = n.div_ceil(4);
    let cols = units.div_ceil(UNITS_PER_PARTIAL).max(1);
    (cols, units.div_ceil(cols))
}

/// Σ x² of every tensor of a flat set at once (`sum_segments`): the same stages as
/// `sum_squares` on each tensor alone, so the same bits, in as many dispatches as the
/// largest tensor needs stages (2 below 2¹⁸ elements). Built once per layout; its stage
/// tables and partial buffers are kept, so a step allocates nothing.
pub struct SquaresPlan {
    stages: Vec<SquaresStage>,
    /// The result: (T) sums of squares, in layout order.
    pub out: Tensor,
}

struct SquaresStage {
    segs: Tensor,
    out: Tensor,
    params: Params,
    invocations: usize,
}

impl SquaresPlan {
    pub fn new(gpu: &Gpu, layout: &FlatLayout) -> Result<SquaresPlan> {
        let t = layout.len();
        if t == 0 {
            return Err(SopError::shape("sum_squares_each", "no tensors"));
        }
        // Per tensor: (base in vec4 units, elements) of the next stage's input.
        let mut inputs: Vec<(usize, usize)> = (0..t).map(|i| (layout.offsets[i] / 4, layout.numel(i))).collect();
        let mut stages = Vec::new();
        loop {
            let last = inputs.iter().all(|&(_, n)| stage_shape(n).0 == 1);
            let (mut words, mut first, mut out_len) = (Vec::with_capacity(6 * t), 0usize, 0usize);
            let mut next = Vec::with_capacity(t);
            for (i, &(base, n)) in inputs.iter().enumerate() {
                let (cols, rows) = stage_shape(n);
                // Partials start on a vec4 unit so the next stage reads them as vec4s; the
                // last stage writes the T results side by side.
                let out_at = if last { i } else { out_len.div_ceil(4) * 4 };
                let w = [base, n, cols, rows, out_at, first];
                for v in w {
                    words.push(u32_of("sum_squares_each", "table entry", v)?);
                }
                next.push((out_at / 4, cols));
                first += cols;
                out_len = out_at + cols;
            }
            let params = Params {
                n: 0,
                cols: u32_of("sum_squares_each", "invocations", first)?,
                rows: 0,
                chunk: 0,
                nchunks: t as u32,
                square: stages.is_empty() as u32,
                _pad: [0; 2],
            };
            let out = gpu.zeros(&[out_len.max(1)], DType::F32)?;
            stages.push(SquaresStage {
                segs: gpu.upload_u32(&[words.len()], &words)?,
                out,
                params,
                invocations: first,
            });
            inputs = next;
            if last {
                break;
            }
        }
        let out = stages.last().expect("one stage").out.clone();
        Ok(SquaresPlan { stages, out })
    }

    /// Record the stages on `flat` (the set's flat buffer); the sums land in `self.out`.
    pub fn run(&self, gpu: &Gpu, flat: &Tensor) -> Result<()> {
        let mut x = flat;
        for s in &self.stages {
            let binds = [Bind::Read(x), Bind::Write(&s.out), Bind::Read(&s.segs)];
            launch(gpu, &SUM_SEGMENTS, &s.params, &binds, Grid::Items(s.invocations))?;
            x = &s.out;
        }
        Ok(())
    }
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(REDUCE, Params, [n, cols, rows, chunk, nchunks, square])]
}
