//! LayerNorm over the last dimension (shaders/layernorm.wgsl), PyTorch semantics (biased
//! variance, eps inside the square root): every pre-norm of the ViT blocks and the final norm.
//!
//! Shapes: x (…, D) is R = numel/D rows of D; γ, β (D); the saved statistics μ, rstd (R).
//! Forward: y = (x − μ) · rstd · γ + β, rstd = 1/√(σ² + eps).
//! Backward (derivation in the shader): with x̂ = (x − μ)·rstd and g = dy·γ,
//!   dx = rstd · (g − mean_j g − x̂ · mean_j(g·x̂)),  dγ = Σ_rows dy·x̂,  dβ = Σ_rows dy.
//! All three overwrite (new tensors); the caller accumulates parameter gradients itself.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, rows_of, u32_of, Grid, Kernel, WG};
use crate::ops::reduce::sum_rows;

pub static LAYERNORM: Shader = shader!("layernorm.wgsl");

const LAYERNORM_FORWARD: Kernel = Kernel { shader: &LAYERNORM, entry: "layernorm_forward", wg: WG };
const LAYERNORM_FORWARD_UNALIGNED: Kernel = Kernel { shader: &LAYERNORM, entry: "layernorm_forward_unaligned", wg: WG };
const LAYERNORM_BACKWARD: Kernel = Kernel { shader: &LAYERNORM, entry: "layernorm_backward", wg: WG };
const LAYERNORM_BACKWARD_UNALIGNED: Kernel =
    Kernel { shader: &LAYERNORM, entry: "layernorm_backward_unaligned", wg: WG };
const LAYERNORM_BACKWARD_PARAMS_JOINT: Kernel =
    Kernel { shader: &LAYERNORM, entry: "layernorm_backward_params_joint", wg: WG };
const LAYERNORM_BACKWARD_PARAMS_UNALIGNED: Kernel =
    Kernel { shader: &LAYERNORM, entry: "layernorm_backward_params_unaligned", wg: WG };

/// Rows per partial sum of dγ, dβ: enough invocations to fill a GPU at ViT shapes
/// (R = 12,608, D = 384 gives 197 chunks × 96 vec4 columns), few enough chunks to sum quickly.
const PARAM_CHUNK: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    d: u32,
    eps: f32,
    chunk: u32,
    /// 1: the dx entry points add their result onto the gradient bound at slot 8.
    acc: u32,
    _pad: [u32; 3],
}

/// The entry point for this width, and its invocation count for `r` rows: one per row with
/// vec4 access when D % 4 == 0, else one per group of 4 rows (see the shader's header).
fn row_entry(aligned: &'static Kernel, unaligned: &'static Kernel, r: usize, d: usize) -> (&'static Kernel, usize) {
    if d.is_multiple_of(4) {
        (aligned, r)
    } else {
        (unaligned, r.div_ceil(4))
    }
}

fn params(op: &'static str, r: usize, d: usize, eps: f32) -> Result<Params> {
    Ok(Params {
        r: u32_of(op, "rows", r)?,
        d: u32_of(op, "width", d)?,
        eps,
        chunk: PARAM_CHUNK as u32,
        acc: 0,
        _pad: [0; 3],
    })
}

/// (R, D) of x, checking γ (and β) have D elements.
fn dims(op: &'static str, x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>) -> Result<(usize, usize)> {
    let (r, d) = rows_of(x);
    if x.shape.is_empty() || d == 0 {
        return Err(SopError::shape(op, format!("x {:?}: need a last dimension of at least 1", x.shape)));
    }
    for (name, t) in [("gamma", Some(gamma)), ("beta", beta)] {
        if let Some(t) = t {
            if t.numel() != d {
                return Err(SopError::shape(
                    op,
                    format!("{name} {:?} for x {:?}: need {d} elements", t.shape, x.shape),
                ));
            }
        }
    }
    Ok((r, d))
}

/// LayerNorm of every row of x (…, D): returns (y (…, D), mean (R), rstd (R)).
pub fn layernorm_forward(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_f32("layernorm_forward", &[("x", x), ("gamma", gamma), ("beta", beta)])?;
    if eps.is_nan() || eps < 0.0 {
        return Err(SopError::shape("layernorm_forward", format!("eps {eps} must be ≥ 0")));
    }
    let (r, d) = dims("layernorm_forward", x, gamma, Some(beta))?;
    let y = gpu.empty(&x.shape, DType::F32)?;
    let mean = gpu.empty(&[r], DType::F32)?;
    let rstd = gpu.empty(&[r], DType::F32)?;
    let (kernel, invocations) = row_entry(&LAYERNORM_FORWARD, &LAYERNORM_FORWARD_UNALIGNED, r, d);
    launch(
        gpu,
        kernel,
        &params(kernel.entry, r, d, eps)?,
        &[Bind::Read(x), Bind::Read(gamma), Bind::Read(beta), Bind::Write(&mean), Bind::Write(&rstd), Bind::Write(&y)],
        Grid::Items(invocations),
    )?;
    Ok((y, mean, rstd))
}

/// Gradients of LayerNorm from the upstream dy (…, D) and the forward's saved mean, rstd (R):
/// returns (dx (…, D), dgamma (D), dbeta (D)). dγ, dβ are summed over rows in a fixed order
/// (chunks of 64 rows, then `sum_rows`).
pub fn layernorm_backward(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    layernorm_backward_onto(gpu, dy, x, gamma, mean, rstd, None)
}

/// `layernorm_backward` whose dx is `prev + dx` when `prev` (the gradient x already holds,
/// shaped like x) is given: the bits of `add(prev, dx)` in the same dispatch. `prev` is only
/// read; dx is a new tensor.
pub fn layernorm_backward_onto(
    gpu: &Gpu,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    prev: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layernorm_backward";
    check_f32(op, &[("dy", dy), ("x", x), ("gamma", gamma), ("mean", mean), ("rstd", rstd)])?;
    if let Some(prev) = prev {
        check_f32(op, &[("prev", prev)])?;
        if prev.numel() != x.numel() {
            return Err(SopError::shape(op, format!("prev {:?} and x {:?} differ", prev.shape, x.shape)));
        }
    }
    let (r, d) = dims(op, x, gamma, None)?;
    if dy.shape != x.shape {
        return Err(SopError::shape(op, format!("dy {:?} and x {:?} differ", dy.shape, x.shape)));
    }
    if mean.numel() != r || rstd.numel() != r {
        return Err(SopError::shape(op, format!("mean {:?}, rstd {:?} for {r} rows", mean.shape, rstd.shape)));
    }
    let p = Params { acc: prev.is_some() as u32, ..params(op, r, d, 0.0)? };
    let dx = gpu.empty(&x.shape, DType::F32)?;
    // mean and rstd are writable bindings of the shader (the forward writes them); read here.
    let (kernel, invocations) = row_entry(&LAYERNORM_BACKWARD, &LAYERNORM_BACKWARD_UNALIGNED, r, d);
    launch(
        gpu,
        kernel,
        &p,
        &[
            Bind::Read(x),
            Bind::Read(gamma),
            Bind::Read(gamma),
            Bind::Write(mean),
            Bind::Write(rstd),
            Bind::Write(&dx),
            Bind::Read(dy),
            // Slot 8 is read_write in the shader; the dx entry points only read it.
            Bind::Write(prev.unwrap_or(&dx)),
        ],
        Grid::Items(invocations),
    )?;
    if r == 0 {
        return Ok((dx, gpu.zeros(&[d], DType::F32)?, gpu.zeros(&[d], DType::F32)?));
    }
    let nchunks = r.div_ceil(PARAM_CHUNK);
    // D % 4 == 0: dγ and dβ partials side by side, (nchunks, 2D), summed by one `sum_rows`;
    // else dγ and dβ partials (nchunks, D) apart, one invocation per vec4 unit of each.
    let aligned = d.is_multiple_of(4);
    let (part, part2) = if aligned {
        (gpu.empty(&[nchunks, 2 * d], DType::F32)?, None)
    } else {
        (gpu.empty(&[nchunks, d], DType::F32)?, Some(gpu.empty(&[nchunks, d], DType::F32)?))
    };
    let mut binds = vec![
        Bind::Read(x),
        Bind::Read(gamma),
        Bind::Read(gamma),
        Bind::Write(mean),
        Bind::Write(rstd),
        Bind::Write(&part),
        Bind::Read(dy),
    ];
    binds.extend(part2.as_ref().map(Bind::Write));
    let kernel = if aligned { &LAYERNORM_BACKWARD_PARAMS_JOINT } else { &LAYERNORM_BACKWARD_PARAMS_UNALIGNED };
    launch(gpu, kernel, &p, &binds, Grid::Items((nchunks * d).div_ceil(4)))?;
    let sum = |t: &Tensor, len: usize| if nchunks == 1 { t.reshape(&[len]) } else { sum_rows(gpu, t) };
    let (dgamma, dbeta) = match &part2 {
        Some(part2) => (sum(&part, d)?, sum(part2, d)?),
        None => {
            let both = sum(&part, 2 * d)?;
            let (dgamma, dbeta) = (gpu.empty(&[d], DType::F32)?, gpu.empty(&[d], DType::F32)?);
            gpu.copy_region(&both, 0, &dgamma, 0, d)?;
            gpu.copy_region(&both, d, &dbeta, 0, d)?;
            (dgamma, dbeta)
        }
    };
    Ok((dx, dgamma, dbeta))
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(LAYERNORM, Params, [r, d, eps, chunk, acc])]
}
