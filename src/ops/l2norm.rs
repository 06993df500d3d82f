//! L2 normalisation over the last dimension (shaders/l2norm.wgsl), PyTorch F.normalize
//! semantics: y = x / max(‖x‖₂, eps) for every row of x (…, C): the SOP head's output
//! (eps 1e-6) and the bank vectors.
//!
//! Backward (derivation in the shader), with n = ‖x‖ saved by the forward:
//!   n > eps:  dx = (dy − y · (y·dy)) / n
//!   n ≤ eps:  dx = dy / eps (the denominator is the constant eps).

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, rows_of, u32_of, Grid, Kernel, WG};

pub static L2NORM: Shader = shader!("l2norm.wgsl");

const L2NORM_FORWARD: Kernel = Kernel { shader: &L2NORM, entry: "l2norm_forward", wg: WG };
const L2NORM_BACKWARD: Kernel = Kernel { shader: &L2NORM, entry: "l2norm_backward", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

fn params(op: &'static str, x: &Tensor, eps: f32) -> Result<(Params, usize)> {
    if x.shape.is_empty() {
        return Err(SopError::shape(op, "x is 0-dimensional; need (…, C)"));
    }
    if eps.is_nan() || eps < 0.0 {
        return Err(SopError::shape(op, format!("eps {eps} must be ≥ 0")));
    }
    let (r, c) = rows_of(x);
    Ok((Params { r: u32_of(op, "rows", r)?, c: u32_of(op, "width", c)?, eps, _pad: 0 }, r))
}

/// y = x / max(‖x‖, eps) per row of x (…, C): returns (y (…, C), norm (R)), norm unclamped.
pub fn l2norm_forward(gpu: &Gpu, x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    check_f32("l2norm_forward", &[("x", x)])?;
    let (p, r) = params("l2norm_forward", x, eps)?;
    let y = gpu.empty(&x.shape, DType::F32)?;
    let norm = gpu.empty(&[r], DType::F32)?;
    launch(gpu, &L2NORM_FORWARD, &p, &[Bind::Read(x), Bind::Write(&y), Bind::Write(&norm)], Grid::Items(r))?;
    Ok((y, norm))
}

/// dx from upstream dy (…, C), the input x and the forward's norm (R), with the forward's eps.
pub fn l2norm_backward(gpu: &Gpu, dy: &Tensor, x: &Tensor, norm: &Tensor, eps: f32) -> Result<Tensor> {
    let op = "l2norm_backward";
    check_f32(op, &[("dy", dy), ("x", x), ("norm", norm)])?;
    let (p, r) = params(op, x, eps)?;
    if dy.shape != x.shape || norm.numel() != r {
        return Err(SopError::shape(
            op,
            format!("dy {:?}, x {:?}, norm {:?}: need dy = x and {r} norms", dy.shape, x.shape, norm.shape),
        ));
    }
    let dx = gpu.empty(&x.shape, DType::F32)?;
    // norm is a writable binding of the shader (the forward writes it); only read here.
    launch(
        gpu,
        &L2NORM_BACKWARD,
        &p,
        &[Bind::Read(x), Bind::Write(&dx), Bind::Write(norm), Bind::Read(dy)],
        Grid::Items(r),
    )?;
    Ok(dx)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(L2NORM, Params, [r, c, eps])]
}
