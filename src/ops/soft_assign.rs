//! SOP soft assignment (shaders/soft_assign.wgsl): p = softmax(logits / τ) · Y.
//!
//! logits (…, M): embeddings against the M support embeddings; Y (M, K): their votes for the
//! K prototypes; p (…, K): each embedding's distribution over the prototypes (rows of Y sum
//! to 1, so p does too). Leading dims of logits are rows R and carry over to p.
//! The forward saves nothing: the backward recomputes the softmax from logits, which costs
//! M exps per row and spares an (R, M) buffer.
//!
//! Three ways to compute it (`LogitsRoute`), all deterministic:
//! - `Tiled16`: the fused kernel on any Y (16 outputs per invocation).
//! - `Matmul`: a = softmax(logits/τ) (ops::softmax), then a·Y by the adapter's matmul; the
//!   backward takes g = dp·Yᵀ by matmul and the fused kernel's second pass. Any Y; stores a
//!   (R, M) in the forward for the length of the call.
//! - `Votes`: SOP's vote matrix (`Votes::Owned`): O(M + K) per row instead of O(M·K), exact in
//!   real arithmetic (the shader's header has the identity), rounding-level different.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel, WG};
use crate::ops::matmul::Matmul;
use crate::ops::softmax::softmax_forward;

pub static SOFT_ASSIGN: Shader = shader!("soft_assign.wgsl");

const SOFT_ASSIGN_FORWARD: Kernel = Kernel { shader: &SOFT_ASSIGN, entry: "soft_assign_forward", wg: WG };
const SOFT_ASSIGN_BACKWARD_G: Kernel = Kernel { shader: &SOFT_ASSIGN, entry: "soft_assign_backward_g", wg: WG };
const SOFT_ASSIGN_BACKWARD: Kernel = Kernel { shader: &SOFT_ASSIGN, entry: "soft_assign_backward", wg: WG };
const SOFT_ASSIGN_VOTES_FORWARD: Kernel = Kernel { shader: &SOFT_ASSIGN, entry: "soft_assign_votes_forward", wg: WG };
const SOFT_ASSIGN_VOTES_BACKWARD: Kernel = Kernel { shader: &SOFT_ASSIGN, entry: "soft_assign_votes_backward", wg: WG };

/// How Y is laid out (what the `Votes` route may assume).
#[derive(Clone, Copy, Debug)]
pub enum Votes<'a> {
    /// Any (M, K) matrix.
    Dense(&'a Tensor),
    /// SOP's vote matrix (prototypes.wgsl): M = K·E, member m belongs to prototype m / E, and
    /// every entry of row m off its owner's column holds the same value.
    Owned { y: &'a Tensor, experts: usize },
}

impl<'a> Votes<'a> {
    pub fn y(&self) -> &'a Tensor {
        match *self {
            Votes::Dense(y) | Votes::Owned { y, .. } => y,
        }
    }
}

/// The computation behind `soft_assign_forward_with` / `soft_assign_backward_with`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsRoute {
    Tiled16,
    Matmul,
    Votes,
}

/// Outputs per invocation in the tiled passes (`TILE` in the shader).
const TILE: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    m: u32,
    k: u32,
    tiles: u32,
    inv_tau: f32,
    e: u32,
    _pad: [u32; 2],
}

struct Dims {
    r: usize,
    m: usize,
    k: usize,
}

fn check(logits: &Tensor, y: &Tensor, tau: f32, dp: Option<&Tensor>) -> Result<Dims> {
    let err = |d: &str| {
        let dp = dp.map(|t| format!(", dp {:?}", t.shape)).unwrap_or_default();
        SopError::shape("soft_assign", format!("logits {:?}, Y {:?}{dp}, tau {tau}: {d}", logits.shape, y.shape))
    };
    if logits.shape.is_empty() || y.shape.len() != 2 {
        return Err(err("logits must be (…, M) and Y (M, K)"));
    }
    let (m, k) = (y.shape[0], y.shape[1]);
    if *logits.shape.last().unwrap_or(&0) != m {
        return Err(err("logits' last dim differs from Y's rows"));
    }
    if m == 0 || k == 0 {
        return Err(err("M and K must be at least 1"));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(err("tau must be positive and finite"));
    }
    if [Some(logits), Some(y), dp].into_iter().flatten().any(|t| t.dtype != DType::F32) {
        return Err(err("all tensors must be f32"));
    }
    let r = logits.numel() / m;
    if let Some(dp) = dp {
        if dp.numel() != r * k || dp.shape.last() != Some(&k) {
            return Err(err("dp must be (…, K) with logits' rows"));
        }
    }
    if [r * m, r * k, m * k, r * m.max(k).div_ceil(TILE) * TILE].iter().any(|&n| n > u32::MAX as usize) {
        return Err(err("more than 2³² elements"));
    }
    Ok(Dims { r, m, k })
}

fn params(d: &Dims, tiles: usize, tau: f32) -> Params {
    Params {
        r: d.r as u32,
        m: d.m as u32,
        k: d.k as u32,
        tiles: tiles as u32,
        inv_tau: (1.0 / tau as f64) as f32,
        e: 1,
        _pad: [0; 2],
    }
}

/// E of an owned Y, checked against its shape (M = K·E).
fn experts_of(votes: Votes, d: &Dims) -> Result<u32> {
    match votes {
        Votes::Owned { experts, .. } if experts >= 1 && d.k * experts == d.m => Ok(experts as u32),
        Votes::Owned { experts, .. } => {
            Err(SopError::shape("soft_assign", format!("owned votes need M = K·E: M {}, K {}, E {experts}", d.m, d.k)))
        }
        Votes::Dense(_) => {
            Err(SopError::Invalid("soft_assign: the votes route needs an owned vote matrix (Votes::Owned)".into()))
        }
    }
}

/// p (…, K) = softmax(logits / τ) · Y for logits (…, M), Y (M, K); τ > 0 (the fused kernel).
pub fn soft_assign_forward(gpu: &Gpu, logits: &Tensor, y: &Tensor, tau: f32) -> Result<Tensor> {
    soft_assign_forward_with(gpu, LogitsRoute::Tiled16, logits, Votes::Dense(y), tau)
}

/// dlogits (…, M) from dp (…, K). With a = softmax(logits / τ) and g_m = Σ_k dp_k Y[m, k]:
/// dlogits_m = (1/τ) · a_m · (g_m − Σ_m' a_m' g_m')  (the softmax Jacobian a_m(δ − a_m')
/// applied to g, times the 1/τ of the scaling). Returns a new tensor; nothing accumulates.
pub fn soft_assign_backward(gpu: &Gpu, logits: &Tensor, y: &Tensor, tau: f32, dp: &Tensor) -> Result<Tensor> {
    soft_assign_backward_with(gpu, LogitsRoute::Tiled16, logits, Votes::Dense(y), tau, dp)
}

/// `soft_assign_forward` by `route` (the `Votes` route needs `Votes::Owned`).
pub fn soft_assign_forward_with(
    gpu: &Gpu,
    route: LogitsRoute,
    logits: &Tensor,
    votes: Votes,
    tau: f32,
) -> Result<Tensor> {
    let y = votes.y();
    let d = check(logits, y, tau, None)?;
    let mut shape = logits.shape.clone();
    *shape.last_mut().expect("checked non-empty") = d.k;
    if route == LogitsRoute::Matmul {
        let a = softmax_forward(gpu, logits, (1.0 / tau as f64) as f32)?;
        let mut p = Matmul::new(&a, y).run(gpu)?;
        p.shape = shape;
        return Ok(p);
    }
    let p = gpu.empty(&shape, DType::F32)?;
    let binds = [Bind::Read(logits), Bind::Read(y), Bind::Read(logits), Bind::Write(&p)];
    if route == LogitsRoute::Votes {
        let prm = Params { e: experts_of(votes, &d)?, ..params(&d, 1, tau) };
        launch(gpu, &SOFT_ASSIGN_VOTES_FORWARD, &prm, &binds, Grid::Items(d.r))?;
        return Ok(p);
    }
    let tiles = d.k.div_ceil(TILE);
    let prm = params(&d, tiles, tau);
    launch(gpu, &SOFT_ASSIGN_FORWARD, &prm, &binds, Grid::Items(d.r * tiles))?;
    Ok(p)
}

/// `soft_assign_backward` by `route` (the `Votes` route needs `Votes::Owned`).
pub fn soft_assign_backward_with(
    gpu: &Gpu,
    route: LogitsRoute,
    logits: &Tensor,
    votes: Votes,
    tau: f32,
    dp: &Tensor,
) -> Result<Tensor> {
    let y = votes.y();
    let d = check(logits, y, tau, Some(dp))?;
    if route == LogitsRoute::Votes {
        let dlogits = gpu.empty(&logits.shape, DType::F32)?;
        let binds = [Bind::Read(logits), Bind::Read(y), Bind::Read(dp), Bind::Write(&dlogits)];
        let prm = Params { e: experts_of(votes, &d)?, ..params(&d, 1, tau) };
        launch(gpu, &SOFT_ASSIGN_VOTES_BACKWARD, &prm, &binds, Grid::Items(d.r))?;
        return Ok(dlogits);
    }
    let dlogits = if route == LogitsRoute::Matmul {
        // g = dp·Yᵀ (R, M) by matmul, turned into dlogits in place by the second pass.
        let mut g = Matmul::new(dp, y).trans_b().run(gpu)?;
        g.shape = logits.shape.clone();
        g
    } else {
        let dlogits = gpu.empty(&logits.shape, DType::F32)?;
        let tiles = d.m.div_ceil(TILE);
        let binds = [Bind::Read(logits), Bind::Read(y), Bind::Read(dp), Bind::Write(&dlogits)];
        launch(gpu, &SOFT_ASSIGN_BACKWARD_G, &params(&d, tiles, tau), &binds, Grid::Items(d.r * tiles))?;
        dlogits
    };
    let binds = [Bind::Read(logits), Bind::Read(y), Bind::Read(dp), Bind::Write(&dlogits)];
    launch(gpu, &SOFT_ASSIGN_BACKWARD, &params(&d, 1, tau), &binds, Grid::Items(d.r))?;
    Ok(dlogits)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(SOFT_ASSIGN, Params, [r, m, k, tiles, inv_tau, e])]
}
