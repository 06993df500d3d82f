//! Row gather and the ring-buffer row write (shaders/gather.wgsl): SOP reads anchors and
//! support embeddings out of its memory banks with `gather_rows` and appends the newest
//! teacher embeddings with `scatter_rows_ring` (a FIFO that wraps around).
//! Both move raw 32-bit words, so any 4-byte dtype works.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel, WG};

pub static GATHER: Shader = shader!("gather.wgsl");

const GATHER_ROWS: Kernel = Kernel { shader: &GATHER, entry: "gather_rows", wg: WG };
const SCATTER_ROWS_RING: Kernel = Kernel { shader: &GATHER, entry: "scatter_rows_ring", wg: WG };
const SCATTER_ROWS_RING_UNLESS: Kernel = Kernel { shader: &GATHER, entry: "scatter_rows_ring_unless", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    c: u32,
    r: u32,
    start: u32,
}

fn fits_u32(n: usize) -> bool {
    n <= u32::MAX as usize
}

/// dst (R, C) with dst[i] = src[idx[i]] for src (N, C) and idx (R) u32. The indices live on
/// the GPU, so they are not checked here: an index ≥ N reads row N − 1 (the shader clamps).
/// Use `gather_rows_host` when the indices are on the host.
pub fn gather_rows(gpu: &Gpu, src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let err = |d: &str| SopError::shape("gather_rows", format!("src {:?}, idx {:?}: {d}", src.shape, idx.shape));
    if src.shape.len() != 2 {
        return Err(err("src must be (N, C)"));
    }
    if idx.shape.len() != 1 || idx.dtype != DType::U32 {
        return Err(err("idx must be (R) u32"));
    }
    let (n, c, r) = (src.shape[0], src.shape[1], idx.shape[0]);
    if n == 0 && r > 0 {
        return Err(err("cannot gather from an empty src"));
    }
    if !fits_u32(n * c) || !fits_u32(r * c) {
        return Err(err("more than 2³² elements"));
    }
    let dst = gpu.empty(&[r, c], src.dtype)?;
    let prm = Params { n: n as u32, c: c as u32, r: r as u32, start: 0 };
    let binds = [Bind::Read(src), Bind::Read(idx), Bind::Write(&dst)];
    launch(gpu, &GATHER_ROWS, &prm, &binds, Grid::Items(r * c))?;
    Ok(dst)
}

/// `gather_rows` with host indices, each checked to be < N before the upload.
pub fn gather_rows_host(gpu: &Gpu, src: &Tensor, idx: &[u32]) -> Result<Tensor> {
    let n = src.shape.first().copied().unwrap_or(0);
    if let Some((i, &bad)) = idx.iter().enumerate().find(|&(_, &j)| j as usize >= n) {
        return Err(SopError::shape("gather_rows", format!("src {:?}: idx[{i}] = {bad} is out of range", src.shape)));
    }
    let idx = gpu.upload_u32(&[idx.len()], idx)?;
    gather_rows(gpu, src, &idx)
}

/// In place: dst[(start + i) mod N] = src[i] for dst (N, C), src (R, C), R ≤ N (the FIFO
/// memory-bank write, wrapping around). `start` is taken mod N, so a running write pointer
/// may be passed as is.
pub fn scatter_rows_ring(gpu: &Gpu, dst: &Tensor, src: &Tensor, start: usize) -> Result<()> {
    scatter(gpu, dst, src, start, None)
}

/// `scatter_rows_ring`, unless `skip[0]` ≠ 0 (one u32: the step's non-finite flag) when
/// dst is left as it was.
pub fn scatter_rows_ring_unless(gpu: &Gpu, dst: &Tensor, src: &Tensor, start: usize, skip: &Tensor) -> Result<()> {
    scatter(gpu, dst, src, start, Some(skip))
}

fn scatter(gpu: &Gpu, dst: &Tensor, src: &Tensor, start: usize, skip: Option<&Tensor>) -> Result<()> {
    let err = |d: &str| {
        SopError::shape("scatter_rows_ring", format!("dst {:?}, src {:?}, start {start}: {d}", dst.shape, src.shape))
    };
    if dst.shape.len() != 2 || src.shape.len() != 2 || dst.shape[1] != src.shape[1] {
        return Err(err("dst must be (N, C) and src (R, C)"));
    }
    if dst.dtype != src.dtype {
        return Err(err("dst and src must have the same dtype"));
    }
    let (n, c, r) = (dst.shape[0], dst.shape[1], src.shape[0]);
    if r > n {
        return Err(err("more rows than the ring holds (R > N)"));
    }
    if dst.same_buffer(src) {
        return Err(err("dst and src share a buffer"));
    }
    if !fits_u32(n * c) || !fits_u32(2 * n) {
        return Err(err("more than 2³² elements"));
    }
    if r == 0 || c == 0 {
        return Ok(());
    }
    let prm = Params { n: n as u32, c: c as u32, r: r as u32, start: (start % n) as u32 };
    match skip {
        None => launch(
            gpu,
            &SCATTER_ROWS_RING,
            &prm,
            &[Bind::Read(src), Bind::Read(src), Bind::Write(dst)],
            Grid::Items(r * c),
        ),
        Some(s) => {
            if s.numel() != 1 || s.dtype != DType::U32 {
                return Err(err("skip must be one u32"));
            }
            let binds = [Bind::Read(src), Bind::Read(s), Bind::Write(dst)];
            launch(gpu, &SCATTER_ROWS_RING_UNLESS, &prm, &binds, Grid::Items(r * c))
        }
    }
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(GATHER, Params, [n, c, r, start])]
}
