//! GELU, exact erf form (shaders/gelu.wgsl): y = x · Φ(x), Φ(x) = 0.5 · (1 + erf(x/√2)),
//! the activation of the ViT MLP and the projection head. The erf approximation and its
//! measured accuracy are described in the shader's header.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, u32_of, vec4_items, Grid, Kernel, WG};

pub static GELU: Shader = shader!("gelu_math.wgsl" + "gelu.wgsl");

const GELU_FORWARD: Kernel = Kernel { shader: &GELU, entry: "gelu_forward", wg: WG };
const GELU_BACKWARD: Kernel = Kernel { shader: &GELU, entry: "gelu_backward", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

fn params(op: &'static str, n: usize) -> Result<Params> {
    Ok(Params { n: u32_of(op, "elements", n)?, _pad: [0; 3] })
}

/// y = x · Φ(x), any shape. Saves nothing: the backward needs only x.
pub fn gelu_forward(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    check_f32("gelu_forward", &[("x", x)])?;
    let y = gpu.empty(&x.shape, DType::F32)?;
    let n = x.numel();
    launch(
        gpu,
        &GELU_FORWARD,
        &params("gelu_forward", n)?,
        &[Bind::Read(x), Bind::Write(&y)],
        Grid::Items(vec4_items(n)),
    )?;
    Ok(y)
}

/// dx = dy · (Φ(x) + x · φ(x)), φ the standard normal density (the derivative of x·Φ(x)).
pub fn gelu_backward(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_f32("gelu_backward", &[("x", x), ("dy", dy)])?;
    if x.shape != dy.shape {
        return Err(SopError::shape("gelu_backward", format!("x {:?} and dy {:?} differ", x.shape, dy.shape)));
    }
    let dx = gpu.empty(&x.shape, DType::F32)?;
    let n = x.numel();
    launch(
        gpu,
        &GELU_BACKWARD,
        &params("gelu_backward", n)?,
        &[Bind::Read(x), Bind::Write(&dx), Bind::Read(dy)],
        Grid::Items(vec4_items(n)),
    )?;
    Ok(dx)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(GELU, Params, [n])]
}
