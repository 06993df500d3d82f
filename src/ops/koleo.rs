//! The KoLeo regulariser (shaders/koleo.wgsl; Sablayrolles et al. 2019, DINOv2's
//! `KoLeoLoss`): on groups of B consecutive rows of x (R, C), R = G·B,
//!   L = −(1/B) Σ_i ln(‖x_i − x_nn(i)‖ + eps),
//! nn(i) the row of i's group with the largest dot product with x_i (j ≠ i). It pushes each
//! row away from its nearest neighbour: a spreading term on the student's [CLS] embeddings
//! (SOP.md "Losses": w·KoLeo on the student [CLS] of each global view, one group per view).
//!
//! Backward (derivation in the shader), with nn held fixed and a_k = 1/(d_k (d_k + eps)):
//!   dx_i = −(s/B) [ a_i (x_i − x_nn(i)) − Σ_{k: nn(k) = i} a_k (x_k − x_i) ],  s = dL_total/dL.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, u32_of, Grid, Kernel, WG};

pub static KOLEO: Shader = shader!("koleo.wgsl");

const KOLEO_NEIGHBOURS: Kernel = Kernel { shader: &KOLEO, entry: "koleo_neighbours", wg: WG };
const KOLEO_LOSS: Kernel = Kernel { shader: &KOLEO, entry: "koleo_loss", wg: WG };
const KOLEO_BACKWARD: Kernel = Kernel { shader: &KOLEO, entry: "koleo_backward", wg: WG };

/// DINOv2's eps inside the logarithm.
pub const KOLEO_EPS: f32 = 1e-8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    c: u32,
    b: u32,
    eps: f32,
    scale: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

/// What the forward leaves for the backward: each row's neighbour (R, u32) and distance (R).
pub struct KoleoSaved {
    pub nn: Tensor,
    pub dist: Tensor,
}

fn params(op: &'static str, x: &Tensor, group: usize, eps: f32, scale: f32) -> Result<Params> {
    check_f32(op, &[("x", x)])?;
    if x.shape.len() != 2 || group < 2 || !x.shape[0].is_multiple_of(group) {
        return Err(SopError::shape(op, format!("x {:?}: need (G·B, C) with groups of B = {group} ≥ 2 rows", x.shape)));
    }
    if eps.is_nan() || eps < 0.0 || !scale.is_finite() {
        return Err(SopError::shape(op, format!("eps {eps} must be ≥ 0 and scale {scale} finite")));
    }
    let (r, c) = (x.shape[0], x.shape[1]);
    u32_of(op, "elements", r * c)?;
    Ok(Params { r: r as u32, c: c as u32, b: group as u32, eps, scale, _p0: 0, _p1: 0, _p2: 0 })
}

/// L (1) for x (G·B, C) in groups of `group` rows, and the neighbours and distances.
pub fn koleo_forward(gpu: &Gpu, x: &Tensor, group: usize, eps: f32) -> Result<(Tensor, KoleoSaved)> {
    let p = params("koleo_forward", x, group, eps, 1.0)?;
    let r = x.shape[0];
    let nn = gpu.empty(&[r], DType::U32)?;
    let dist = gpu.empty(&[r], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    launch(gpu, &KOLEO_NEIGHBOURS, &p, &[Bind::Read(x), Bind::Write(&nn), Bind::Write(&dist)], Grid::Items(r))?;
    let binds = [Bind::Read(x), Bind::Write(&nn), Bind::Write(&dist), Bind::Write(&loss)];
    launch(gpu, &KOLEO_LOSS, &p, &binds, Grid::Groups([1, 1, 1]))?;
    Ok((loss, KoleoSaved { nn, dist }))
}

/// dx (G·B, C) = `scale` · ∂L/∂x, from the forward's x, groups, eps and saved neighbours.
pub fn koleo_backward(gpu: &Gpu, x: &Tensor, saved: &KoleoSaved, group: usize, eps: f32, scale: f32) -> Result<Tensor> {
    let op = "koleo_backward";
    let p = params(op, x, group, eps, scale)?;
    let r = x.shape[0];
    if saved.nn.shape != [r] || saved.nn.dtype != DType::U32 || saved.dist.shape != [r] {
        return Err(SopError::shape(
            op,
            format!("nn {:?}, dist {:?}: need {r} neighbours (u32) and distances", saved.nn.shape, saved.dist.shape),
        ));
    }
    let dx = gpu.empty(&x.shape, DType::F32)?;
    // nn and dist are writable bindings of the shader (the forward writes them); only read here.
    let binds = [Bind::Read(x), Bind::Write(&saved.nn), Bind::Write(&saved.dist), Bind::Write(&dx)];
    launch(gpu, &KOLEO_BACKWARD, &p, &binds, Grid::Items(x.numel()))?;
    Ok(dx)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(KOLEO, Params, [r, c, b, eps, scale])]
}
