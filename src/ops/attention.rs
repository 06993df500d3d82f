//! Multi-head self-attention softmax(scale·Q·Kᵀ)·V for every head, forward and backward, in
//! three variants with one interface (`AttentionVariant`, chosen per adapter and shape in
//! src/ops/attention_variant.rs):
//! - `fused` (shaders/attention.wgsl): one invocation per row, online softmax, no (T, T)
//!   matrix stored, no barriers;
//! - `flash2` (shaders/attention_flash.wgsl): FlashAttention-2 tiling for GPUs, a block of
//!   rows per workgroup, key/value (or query) tiles through workgroup memory, a dQ pass and a
//!   dK/dV pass without atomics;
//! - `unfused` (src/ops/attention_unfused.rs): the batched matmul plus row-softmax kernels,
//!   storing B·H·T² floats (fast on CPU adapters, where the matmul is the tuned kernel);
//! - `subgroup` (shaders/attention_subgroup.wgsl): short sequences (T ≤ 64) on adapters with
//!   subgroups, a block of up to 24 query (or key) rows per group of 8 lanes (T = 17: the
//!   backward's whole head), values shared by subgroup shuffles, whole score rows in registers (the
//!   default model's T = 17 on CPU adapters).
//!
//! Every variant saves the same lse, so any backward follows any forward.
//!
//! Layout (timm / iBOT ViT): qkv (B, T, 3·D) viewed as (B, T, 3, H, Dh); out (B, T, D) with
//! head h in channels h·Dh..(h+1)·Dh; lse (B, H, T). scale = Dh^-1/2. Dh ≤ 64.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch_with, Grid, Kernel, WG};

pub use crate::ops::attention_variant::AttentionVariant;

// Trusted: every access is guarded by the shaders themselves (clamped rows, d < DH ≤ MAX_DH
// with DH checked here, tile slots < BK·MAX_DH); kernels-tests compares both builds.
pub static ATTENTION: Shader = shader!(trusted "attention_common.wgsl" + "attention.wgsl");
pub static ATTENTION_FLASH: Shader = shader!(trusted "attention_common.wgsl" + "attention_flash.wgsl");
// Trusted: every load clamps its row (t ≤ T − 1, head ≤ B·H − 1) and channel (≤ DH − 1), every
// store is guarded, and the private arrays are indexed below TC ≤ 8, EC ≤ 8, RB ≤ 24 and
// RM ≤ 3 (T ≤ 64 and DH ≤ 64 checked here, RB from `row_blocks`). Needs subgroups (a
// separate module, built only where they exist).
pub static ATTENTION_SUBGROUP: Shader = shader!(trusted "attention_common.wgsl" + "attention_subgroup.wgsl");

const ATTENTION_FORWARD: Kernel = Kernel { shader: &ATTENTION, entry: "attention_forward", wg: WG };
const ATTENTION_BACKWARD_DQ: Kernel = Kernel { shader: &ATTENTION, entry: "attention_backward_dq", wg: WG };
const ATTENTION_BACKWARD_DKV: Kernel = Kernel { shader: &ATTENTION, entry: "attention_backward_dkv", wg: WG };
const ATTENTION_CLS_PROBS: Kernel = Kernel { shader: &ATTENTION, entry: "attention_cls_probs", wg: WG };
const FLASH_FORWARD: Kernel = Kernel { shader: &ATTENTION_FLASH, entry: "attention_flash_forward", wg: WG };
const FLASH_BACKWARD_DQ: Kernel = Kernel { shader: &ATTENTION_FLASH, entry: "attention_flash_backward_dq", wg: WG };
const FLASH_BACKWARD_DKV: Kernel = Kernel { shader: &ATTENTION_FLASH, entry: "attention_flash_backward_dkv", wg: WG };
/// The `subgroup` kernels' workgroup: one group of 8 lanes.
const SUBGROUP_WG: u32 = 8;
const SUBGROUP_FORWARD: Kernel =
    Kernel { shader: &ATTENTION_SUBGROUP, entry: "attention_subgroup_forward", wg: SUBGROUP_WG };
const SUBGROUP_BACKWARD_DQ: Kernel =
    Kernel { shader: &ATTENTION_SUBGROUP, entry: "attention_subgroup_backward_dq", wg: SUBGROUP_WG };
const SUBGROUP_BACKWARD_DKV: Kernel =
    Kernel { shader: &ATTENTION_SUBGROUP, entry: "attention_subgroup_backward_dkv", wg: SUBGROUP_WG };

/// Longest sequence the `subgroup` variant holds in its registers (`8·MAX_TC` in the shader).
pub const SUBGROUP_MAX_TOKENS: usize = 64;

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
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub d: usize,
    pub dh: usize,
}

impl Dims {
    /// The score scale Dh^-1/2.
    pub fn scale(&self) -> f32 {
        (self.dh as f32).powf(-0.5)
    }
}

pub(crate) fn dims(op: &'static str, qkv: &Tensor, heads: usize) -> Result<Dims> {
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
    /// One workgroup of 8 lanes per block of rows of every head (shaders/attention_subgroup.wgsl,
    /// `row_blocks` with this many accumulators): workgroups grid of B·H·blocks.
    Groups(usize),
}

/// The `subgroup` variant's row blocks of a head of T ≥ 1 rows for a kernel that may hold
/// `accumulators` score accumulators per lane and score matrix: (rows per block RB, blocks
/// NB). A block holds RB·ceil(T / 8) of them (RB at least 8, at most 24: 3 rows per lane);
/// the T rows are split into as few blocks as that allows, evenly (T = 17, backward: one
/// block of 17 rows, not 3 of 8 with 7 rows of padding; T = 64: 8 blocks of 8).
fn row_blocks(t: usize, accumulators: usize) -> (usize, usize) {
    let max_rb = (accumulators / t.div_ceil(8).max(1)).clamp(8, 24);
    let nb = t.div_ceil(max_rb).max(1);
    (t.div_ceil(nb).max(1), nb)
}

/// `row_blocks`' accumulators for the backward passes: on lavapipe (benches/RESULTS.md,
/// 2026-12-01, T = 17) one block of 17 rows beat 2 blocks of 9 and 3 of 8: a lane's loads
/// per channel d grow with blocks × (rows / 8 + columns / 8), and the loads are what costs.
const SUBGROUP_BACKWARD_ACCUMULATORS: usize = 64;
/// The forward's (it also holds RB·ceil(Dh / 8) output accumulators per lane): at T = 17,
/// 2 blocks of 9 rows ran about 6% faster than one of 17 and 13% faster than 3 of 6.
const SUBGROUP_FORWARD_ACCUMULATORS: usize = 32;

fn dispatch(gpu: &Gpu, kernel: &Kernel, dm: Dims, layout: Layout, binds: &[Bind]) -> Result<()> {
    let too_big =
        || SopError::shape(kernel.entry, format!("B·H = {}·{} or T = {} does not fit in u32", dm.b, dm.h, dm.t));
    let heads = u32::try_from(dm.b * dm.h).map_err(|_| too_big())?;
    let t = u32::try_from(dm.t).map_err(|_| too_big())?;
    let params =
        Params { b: dm.b as u32, t, h: dm.h as u32, d: dm.d as u32, bh: heads, scale: dm.scale(), _pad: [0; 2] };
    let groups = match layout {
        Layout::Rows => {
            let [y, z, _] = gpu.grid(heads);
            [t.div_ceil(WG), y, z]
        }
        Layout::Heads => gpu.grid(heads.div_ceil(WG)),
        Layout::Groups(accumulators) => {
            let (_, nb) = row_blocks(dm.t, accumulators);
            gpu.grid(heads.checked_mul(nb as u32).ok_or_else(too_big)?)
        }
    };
    let constants = [("WG", WG as f64), ("DH", dm.dh as f64)];
    if let Layout::Groups(accumulators) = layout {
        let (rb, nb) = row_blocks(dm.t, accumulators);
        let all = [
            ("WG", f64::from(SUBGROUP_WG)),
            constants[1],
            ("TC", dm.t.div_ceil(8) as f64),
            ("EC", dm.dh.div_ceil(8) as f64),
            ("RB", rb as f64),
            ("RM", rb.div_ceil(8) as f64),
            ("NB", nb as f64),
        ];
        return launch_with(gpu, kernel, &all, &params, binds, Grid::Groups(groups));
    }
    launch_with(gpu, kernel, &constants, &params, binds, Grid::Groups(groups))
}

/// out = softmax(scale·q·kᵀ)·v per head: qkv (B, T, 3D) -> (out (B, T, D), lse (B, H, T)),
/// lse_i = log Σ_j exp(scale·q_i·k_j), saved for `attention_backward`. The variant is the
/// adapter's (`AttentionVariant::for_shape`).
pub fn attention_forward(gpu: &Gpu, qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    let dm = dims("attention_forward", qkv, heads)?;
    forward_with(gpu, qkv, dm, AttentionVariant::for_shape(gpu, &dm)?)
}

/// `attention_forward` with a given variant (`unfused` errs where it does not fit).
pub fn attention_forward_with(
    gpu: &Gpu,
    qkv: &Tensor,
    heads: usize,
    variant: AttentionVariant,
) -> Result<(Tensor, Tensor)> {
    let dm = dims("attention_forward", qkv, heads)?;
    variant.check_fits(gpu, &dm)?;
    forward_with(gpu, qkv, dm, variant)
}

fn forward_with(gpu: &Gpu, qkv: &Tensor, dm: Dims, variant: AttentionVariant) -> Result<(Tensor, Tensor)> {
    let (kernel, layout) = match variant {
        AttentionVariant::Fused => (&ATTENTION_FORWARD, Layout::Rows),
        AttentionVariant::Flash2 => (&FLASH_FORWARD, Layout::Rows),
        AttentionVariant::Subgroup => (&SUBGROUP_FORWARD, Layout::Groups(SUBGROUP_FORWARD_ACCUMULATORS)),
        AttentionVariant::Unfused => return crate::ops::attention_unfused::forward(gpu, qkv, dm),
    };
    let out = gpu.empty(&[dm.b, dm.t, dm.d], DType::F32)?;
    let lse = gpu.empty(&[dm.b, dm.h, dm.t], DType::F32)?;
    if dm.t == 0 {
        return Ok((out, lse)); // nothing to attend (the kernels assume T ≥ 1)
    }
    let binds = [Bind::Read(qkv), Bind::Write(&out), Bind::Write(&lse)];
    dispatch(gpu, kernel, dm, layout, &binds)?;
    Ok((out, lse))
}

/// Gradient of `attention_forward` w.r.t. qkv (a new (B, T, 3D) tensor, every element written).
///
/// With s_ij = scale·q_i·k_j, P_ij = softmax_j(s_ij), O_i = Σ_j P_ij v_j and upstream dO:
///   dV_j = Σ_i P_ij dO_i,  dP_ij = dO_i·v_j,
///   dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik) = P_ij (dP_ij − D_i) with D_i = dO_i·O_i,
///   dQ_i = scale Σ_j dS_ij k_j,  dK_j = scale Σ_i dS_ij q_i,
/// where P_ij = exp(s_ij − lse_i) is recomputed from the saved lse. Fused and flash2: two
/// dispatches, dQ (per query row, looping over keys, also writing D) then dK and dV (per key
/// row, looping over queries). No atomics: each gradient element is one invocation's
/// fixed-order sum. The variant is the adapter's, as in the forward.
pub fn attention_backward(
    gpu: &Gpu,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let dm = check_backward(qkv, out, lse, dout, heads)?;
    backward_with(gpu, [qkv, out, lse, dout], dm, AttentionVariant::for_shape(gpu, &dm)?)
}

/// `attention_backward` with a given variant (`unfused` errs where it does not fit).
pub fn attention_backward_with(
    gpu: &Gpu,
    [qkv, out, lse, dout]: [&Tensor; 4],
    heads: usize,
    variant: AttentionVariant,
) -> Result<Tensor> {
    let dm = check_backward(qkv, out, lse, dout, heads)?;
    variant.check_fits(gpu, &dm)?;
    backward_with(gpu, [qkv, out, lse, dout], dm, variant)
}

fn check_backward(qkv: &Tensor, out: &Tensor, lse: &Tensor, dout: &Tensor, heads: usize) -> Result<Dims> {
    const OP: &str = "attention_backward";
    let dm = dims(OP, qkv, heads)?;
    expect(OP, "out", out, &[dm.b, dm.t, dm.d])?;
    expect(OP, "dout", dout, &[dm.b, dm.t, dm.d])?;
    expect(OP, "lse", lse, &[dm.b, dm.h, dm.t])?;
    Ok(dm)
}

fn backward_with(
    gpu: &Gpu,
    [qkv, out, lse, dout]: [&Tensor; 4],
    dm: Dims,
    variant: AttentionVariant,
) -> Result<Tensor> {
    let (dq, dkv, layout) = match variant {
        AttentionVariant::Fused => (&ATTENTION_BACKWARD_DQ, &ATTENTION_BACKWARD_DKV, Layout::Rows),
        AttentionVariant::Flash2 => (&FLASH_BACKWARD_DQ, &FLASH_BACKWARD_DKV, Layout::Rows),
        AttentionVariant::Subgroup => {
            (&SUBGROUP_BACKWARD_DQ, &SUBGROUP_BACKWARD_DKV, Layout::Groups(SUBGROUP_BACKWARD_ACCUMULATORS))
        }
        AttentionVariant::Unfused => return crate::ops::attention_unfused::backward(gpu, qkv, lse, dout, dm),
    };
    let delta = gpu.empty(&[dm.b, dm.h, dm.t], DType::F32)?;
    let dqkv = gpu.empty(&qkv.shape, DType::F32)?;
    if dm.t == 0 {
        return Ok(dqkv);
    }
    // `out` and `lse` are only read here, but the shaders declare them read_write (the
    // forward writes them through the same bindings), so they are bound as writable.
    let binds = [
        Bind::Read(qkv),
        Bind::Write(out),
        Bind::Write(lse),
        Bind::Read(dout),
        Bind::Write(&delta),
        Bind::Write(&dqkv),
    ];
    dispatch(gpu, dq, dm, layout, &binds)?;
    dispatch(gpu, dkv, dm, layout, &binds)?;
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
    vec![
        params_layout!(ATTENTION, Params, [b, t, h, d, bh, scale]),
        params_layout!(ATTENTION_FLASH, Params, [b, t, h, d, bh, scale]),
        params_layout!(ATTENTION_SUBGROUP, Params, [b, t, h, d, bh, scale]),
    ]
}
