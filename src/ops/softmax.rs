//! Row-wise softmax with a scale (shaders/softmax.wgsl): y = softmax(scale · x) over the last
//! dimension of x (…, C), R = numel/C rows. The row max is subtracted before exp.
//!
//! Backward (derivation in the shader): dx = scale · y ⊙ (dy − Σ_j y_j dy_j), from the saved y.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, rows_of, u32_of, Grid, Kernel, WG};

pub static SOFTMAX: Shader = shader!("softmax.wgsl");

const SOFTMAX_FORWARD: Kernel = Kernel { shader: &SOFTMAX, entry: "softmax_forward", wg: WG };
const SOFTMAX_BACKWARD: Kernel = Kernel { shader: &SOFTMAX, entry: "softmax_backward", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    r: u32,
    c: u32,
    scale: f32,
    _pad: u32,
}

fn run(gpu: &Gpu, kernel: &Kernel, like: &Tensor, scale: f32, binds: &[Bind]) -> Result<()> {
    let entry = kernel.entry;
    let (r, c) = rows_of(like);
    if r * c == 0 {
        return Ok(()); // no element to write (a zero-width row has no softmax)
    }
    let params = Params { r: u32_of(entry, "rows", r)?, c: u32_of(entry, "width", c)?, scale, _pad: 0 };
    launch(gpu, kernel, &params, binds, Grid::Items(r))
}

/// y = softmax(scale · x) along the last dimension of x (…, C). Saves y (returned).
pub fn softmax_forward(gpu: &Gpu, x: &Tensor, scale: f32) -> Result<Tensor> {
    check_f32("softmax_forward", &[("x", x)])?;
    if x.shape.is_empty() {
        return Err(SopError::shape("softmax_forward", "x is 0-dimensional; need (…, C)"));
    }
    let y = gpu.empty(&x.shape, DType::F32)?;
    run(gpu, &SOFTMAX_FORWARD, x, scale, &[Bind::Read(x), Bind::Write(&y)])?;
    Ok(y)
}

/// dx = scale · y ⊙ (dy − Σ_j y_j dy_j) per row, from the forward's output y and upstream dy.
pub fn softmax_backward(gpu: &Gpu, y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    check_f32("softmax_backward", &[("y", y), ("dy", dy)])?;
    if y.shape.is_empty() || y.shape != dy.shape {
        return Err(SopError::shape(
            "softmax_backward",
            format!("y {:?} and dy {:?}: need one shape (…, C)", y.shape, dy.shape),
        ));
    }
    let dx = gpu.empty(&y.shape, DType::F32)?;
    run(gpu, &SOFTMAX_BACKWARD, y, scale, &[Bind::Read(y), Bind::Write(&dx), Bind::Read(dy)])?;
    Ok(dx)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(SOFTMAX, Params, [r, c, scale])]
}
