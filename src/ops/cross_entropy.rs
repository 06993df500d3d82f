//! Weighted cross-entropy between distributions (shaders/cross_entropy.wgsl):
//! loss = Σ_r w_r · Σ_k −q[r, k] · log p[r, k], with q the teacher distribution and p the
//! student's mixture probability (SOP takes the log of the mixed distribution, not a
//! log-softmax), both (…, K); w has one weight per row. The weights express the averages:
//! SOP-MIM uses w = mask / (count_masked · B) per patch row (count at least 1), the [CLS]
//! loss 1 / (B · pairs · tasks).
//!
//! log(0) is guarded by clamping p at 1e-30 (forward and backward). The sum is a fixed tree
//! of per-row sums and chunks of 64, so the loss is deterministic run to run.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel, WG};

pub static CROSS_ENTROPY: Shader = shader!("cross_entropy.wgsl");

const CROSS_ENTROPY_FORWARD_ROWS: Kernel =
    Kernel { shader: &CROSS_ENTROPY, entry: "cross_entropy_forward_rows", wg: WG };
const CROSS_ENTROPY_FORWARD_SUM: Kernel = Kernel { shader: &CROSS_ENTROPY, entry: "cross_entropy_forward_sum", wg: WG };
const CROSS_ENTROPY_FORWARD_TOTAL: Kernel =
    Kernel { shader: &CROSS_ENTROPY, entry: "cross_entropy_forward_total", wg: CHUNK as u32 };
const CROSS_ENTROPY_BACKWARD: Kernel = Kernel { shader: &CROSS_ENTROPY, entry: "cross_entropy_backward", wg: WG };

/// Entries one invocation of `cross_entropy_forward_sum` adds (`CHUNK` in the shader).
const CHUNK: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    k: u32,
    n: u32,
    _p0: u32,
    dloss: f32,
    _pad: [u32; 3],
}

/// (R, K) after checking q and p are the same (…, K) f32 shape and w has R f32 entries.
fn check(q: &Tensor, p: &Tensor, w: &Tensor) -> Result<(usize, usize)> {
    let err =
        |d: &str| SopError::shape("cross_entropy", format!("q {:?}, p {:?}, w {:?}: {d}", q.shape, p.shape, w.shape));
    if q.shape != p.shape || q.shape.is_empty() {
        return Err(err("q and p must have the same shape (…, K)"));
    }
    if [q, p, w].iter().any(|t| t.dtype != DType::F32) {
        return Err(err("all tensors must be f32"));
    }
    let k = q.shape[q.shape.len() - 1];
    let r = q.numel().checked_div(k).unwrap_or(0);
    if w.numel() != r {
        return Err(err("w needs one weight per row"));
    }
    if q.numel() > u32::MAX as usize {
        return Err(err("more than 2³² elements"));
    }
    Ok((r, k))
}

/// loss (1) = Σ_r w_r Σ_k −q log max(p, 1e-30).
pub fn cross_entropy_forward(gpu: &Gpu, q: &Tensor, p: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (r, k) = check(q, p, w)?;
    if r == 0 {
        return gpu.zeros(&[1], DType::F32);
    }
    let mut prm = Params { r: r as u32, k: k as u32, n: 0, _p0: 0, dloss: 0.0, _pad: [0; 3] };
    let mut src = gpu.empty(&[r], DType::F32)?;
    {
        let binds = [Bind::Read(q), Bind::Read(p), Bind::Read(w), Bind::Write(&src), Bind::Write(&src)];
        launch(gpu, &CROSS_ENTROPY_FORWARD_ROWS, &prm, &binds, Grid::Items(r))?;
    }
    if r <= CHUNK * CHUNK {
        // Both stages in one workgroup, the same bits.
        let dst = gpu.empty(&[1], DType::F32)?;
        prm.n = r as u32;
        let binds = [Bind::Read(q), Bind::Read(p), Bind::Read(w), Bind::Write(&src), Bind::Write(&dst)];
        launch(gpu, &CROSS_ENTROPY_FORWARD_TOTAL, &prm, &binds, Grid::Groups([1, 1, 1]))?;
        return Ok(dst);
    }
    // Sum chunks of 64 until one value is left (at least once, so R = 1 also lands in a
    // fresh (1) tensor).
    let mut n = r;
    loop {
        let m = n.div_ceil(CHUNK);
        let dst = gpu.empty(&[m], DType::F32)?;
        prm.n = n as u32;
        let binds = [Bind::Read(q), Bind::Read(p), Bind::Read(w), Bind::Write(&src), Bind::Write(&dst)];
        launch(gpu, &CROSS_ENTROPY_FORWARD_SUM, &prm, &binds, Grid::Items(m))?;
        src = dst;
        n = m;
        if n == 1 {
            return Ok(src);
        }
    }
}

/// dp (…, K) = −dloss · w_r · q / max(p, 1e-30): the derivative of w_r · (−q log p) times the
/// upstream gradient of the loss. Returns a new tensor; nothing accumulates.
pub fn cross_entropy_backward(gpu: &Gpu, q: &Tensor, p: &Tensor, w: &Tensor, dloss: f32) -> Result<Tensor> {
    let (r, k) = check(q, p, w)?;
    let dp = gpu.empty(&p.shape, DType::F32)?;
    let prm = Params { r: r as u32, k: k as u32, n: 0, _p0: 0, dloss, _pad: [0; 3] };
    let binds = [Bind::Read(q), Bind::Read(p), Bind::Read(w), Bind::Write(&dp), Bind::Write(&dp)];
    launch(gpu, &CROSS_ENTROPY_BACKWARD, &prm, &binds, Grid::Items(r * k))?;
    Ok(dp)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(CROSS_ENTROPY, Params, [r, k, n, dloss])]
}
