//! Fused multi-head self-attention (shaders/attention.wgsl): softmax(scale·Q·Kᵀ)·V for every
//! head in one kernel, with the online (flash-attention) softmax, so no (T, T) matrix is ever
//! stored; the backward recomputes the probabilities from the saved log-sum-exp.
//!
//! Layout (timm / iBOT ViT): qkv (B, T, 3·D) viewed as (B, T, 3, H, Dh); out (B, T, D) with
//! head h in channels h·Dh..(h+1)·Dh; lse (B, H, T). scale = Dh^-1/2. Dh ≤ 64.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch_with, Grid, Kernel, WG};

pub static ATTENTION: Shader = shader!("attention.wgsl");

const ATTENTION_FORWARD: Kernel = Kernel { shader: &ATTENTION, entry: "attention_forward", wg: WG };
const ATTENTION_BACKWARD_DQ: Kernel = Kernel { shader: &ATTENTION, entry: "attention_backward_dq", wg: WG };
const ATTENTION_BACKWARD_DKV: Kernel = Kernel { shader: &ATTENTION, entry: "attention_backward_dkv", wg: WG };
const ATTENTION_CLS_PROBS: Kernel = Kernel { shader: &ATTENTION, entry: "attention_cls_probs", wg: WG };

/// Widest head the kernels hold in their private arrays (`MAX_DH` in the shader).
pub const MAX_HEAD_DIM: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    b: u32,
    t: u32,
    h: u32,
    d: u32,
    bh: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// B, T, H, D and Dh of a qkv tensor split into `heads` heads.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
    dh: usize,
}

fn dims(op: &'static str, qkv: &Tensor, heads: usize) -> Result<Dims> {
    let s = &qkv.shape;
    if s.len() != 3 || !s[2].is_multiple_of(3) {
        return Err(SopError::shape(op, format!("qkv {s:?} must be (B, T, 3·D)")));
    }
    if qkv.dtype != DType::F32 {
        return Err(SopError::shape(op, format!("qkv must be f32, got {:?}", qkv.dtype)));
    }
    let (b, t, d) = (s[0], s[1], s[2] / 3);
    if heads == 0 || d % heads != 0 {
        return Err(SopError::shape(op, format!("width D = {d} (qkv {s:?}) is not divisible by {heads} heads")));
    }
    let dh = d / heads;
    if dh == 0 || dh > MAX_HEAD_DIM {
        return Err(SopError::shape(
            op,
            format!("head width D/H = {d}/{heads} = {dh}; the fused kernel supports 1..={MAX_HEAD_DIM}"),
        ));
    }
    Ok(Dims { b, t, h: heads, d, dh })
}

fn expect(op: &'static str, name: &str, x: &Tensor, shape: &[usize]) -> Result<()> {
    if x.shape != shape || x.dtype != DType::F32 {
        return Err(SopError::shape(op, format!("{name} is {:?} {:?}, expected {shape:?} F32", x.shape, x.dtype)));
    }
    Ok(())
}

/// How an entry point's invocations map to work (see the shader header).
#[derive(Clone, Copy)]
enum Layout {
    /// One invocation per row t of every head bh: workgroups (ceil(T / WG), grid of B·H).
    Rows,
    /// One invocation per head bh: workgroups grid of ceil(B·H / WG).
    Heads,
}

fn dispatch(gpu: &Gpu, kernel: &Kernel, dm: Dims, layout: Layout, binds: &[Bind]) -> Result<()> {
    let too_big =
        || SopError::shape(kernel.entry, format!("B·H = {}·{} or T = {} does not fit in u32", dm.b, dm.h, dm.t));
    let heads = u32::try_from(dm.b * dm.h).map_err(|_| too_big())?;
    let t = u32::try_from(dm.t).map_err(|_| too_big())?;
    let params = Params {
        b: dm.b as u32,
        t,
        h: dm.h as u32,
        d: dm.d as u32,
        bh: heads,
        scale: (dm.dh as f32).powf(-0.5),
        _pad: [0; 2],
    };
    let groups = match layout {
        Layout::Rows => {
            let [y, z, _] = gpu.grid(heads);
            [t.div_ceil(WG), y, z]
        }
        Layout::Heads => gpu.grid(heads.div_ceil(WG)),
    };
    let constants = [("WG", WG as f64), ("DH", dm.dh as f64)];
    launch_with(gpu, kernel, &constants, &params, binds, Grid::Groups(groups))
}

/// out = softmax(scale·q·kᵀ)·v per head: qkv (B, T, 3D) -> (out (B, T, D), lse (B, H, T)),
/// lse_i = log Σ_j exp(scale·q_i·k_j), saved for `attention_backward`.
pub fn attention_forward(gpu: &Gpu, qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    let dm = dims("attention_forward", qkv, heads)?;
    let out = gpu.empty(&[dm.b, dm.t, dm.d], DType::F32)?;
    let lse = gpu.empty(&[dm.b, dm.h, dm.t], DType::F32)?;
    let binds = [Bind::Read(qkv), Bind::Write(&out), Bind::Write(&lse)];
    dispatch(gpu, &ATTENTION_FORWARD, dm, Layout::Rows, &binds)?;
    Ok((out, lse))
}

/// Gradient of `attention_forward` w.r.t. qkv (a new (B, T, 3D) tensor, every element written).
///
/// With s_ij = scale·q_i·k_j, P_ij = softmax_j(s_ij), O_i = Σ_j P_ij v_j and upstream dO:
///   dV_j = Σ_i P_ij dO_i,  dP_ij = dO_i·v_j,
///   dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik) = P_ij (dP_ij − D_i) with D_i = dO_i·O_i,
///   dQ_i = scale Σ_j dS_ij k_j,  dK_j = scale Σ_i dS_ij q_i,
/// where P_ij = exp(s_ij − lse_i) is recomputed from the saved lse. Three dispatches: D (one
/// invocation per query row), dQ (per query row, looping over keys), dK and dV (per key row,
/// looping over queries). No atomics: each gradient element is one invocation's fixed-order sum.
pub fn attention_backward(
    gpu: &Gpu,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    const OP: &str = "attention_backward";
    let dm = dims(OP, qkv, heads)?;
    expect(OP, "out", out, &[dm.b, dm.t, dm.d])?;
    expect(OP, "dout", dout, &[dm.b, dm.t, dm.d])?;
    expect(OP, "lse", lse, &[dm.b, dm.h, dm.t])?;
    let delta = gpu.empty(&[dm.b, dm.h, dm.t], DType::F32)?;
    let dqkv = gpu.empty(&qkv.shape, DType::F32)?;
    // `out` and `lse` are only read here, but the shader declares them read_write (the
    // forward writes them through the same bindings), so they are bound as writable.
    let binds = [
        Bind::Read(qkv),
        Bind::Write(out),
        Bind::Write(lse),
        Bind::Read(dout),
        Bind::Write(&delta),
        Bind::Write(&dqkv),
    ];
    dispatch(gpu, &ATTENTION_BACKWARD_DQ, dm, Layout::Rows, &binds)?;
    dispatch(gpu, &ATTENTION_BACKWARD_DKV, dm, Layout::Rows, &binds)?;
    Ok(dqkv)
}

/// The attention row of query 0 ([CLS]) per head: (B, H, T), P[b, h, j] = softmax_j(scale·q_0·k_j).
/// Each row sums to 1. For attention-map pictures; not differentiated.
pub fn attention_cls_probs(gpu: &Gpu, qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let dm = dims("attention_cls_probs", qkv, heads)?;
    let probs = gpu.empty(&[dm.b, dm.h, dm.t], DType::F32)?;
    if dm.t == 0 {
        return Ok(probs); // no keys: nothing to normalise (the kernel assumes T ≥ 1)
    }
    let binds = [Bind::Read(qkv), Bind::Write(&probs)];
    dispatch(gpu, &ATTENTION_CLS_PROBS, dm, Layout::Heads, &binds)?;
    Ok(probs)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(ATTENTION, Params, [b, t, h, d, bh, scale])]
}
