//! The finiteness check of up to four tensors in one dispatch (shaders/finite.wgsl): a word
//! that reads as the f32 +0.0 when every element is finite and as a NaN otherwise, so it
//! joins the scalars `clip_scales` checks and the host reads with the step's metrics.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, u32_of, Grid, Kernel, WG};

pub static FINITE: Shader = shader!("finite.wgsl");

const FLAG_NON_FINITE: Kernel = Kernel { shader: &FINITE, entry: "flag_non_finite", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n0: u32,
    n1: u32,
    n2: u32,
    n3: u32,
}

/// A (1) tensor: +0.0 if every element of `xs` (1 to 4 f32 tensors) is finite, else a NaN.
pub fn finite_check(gpu: &Gpu, xs: &[&Tensor]) -> Result<Tensor> {
    if xs.is_empty() || xs.len() > 4 || xs.iter().any(|x| x.dtype != DType::F32) {
        let shapes: Vec<_> = xs.iter().map(|x| (&x.shape, x.dtype)).collect();
        return Err(SopError::shape("finite_check", format!("{shapes:?}: 1 to 4 f32 tensors")));
    }
    let flag = gpu.zeros(&[1], DType::F32)?;
    let n = |i: usize| xs.get(i).map_or(Ok(0), |x| u32_of("finite_check", "elements", x.numel()));
    let prm = Params { n0: n(0)?, n1: n(1)?, n2: n(2)?, n3: n(3)? };
    let total = xs.iter().map(|x| x.numel()).sum::<usize>();
    u32_of("finite_check", "elements", total)?;
    let x = |i: usize| Bind::Read(xs.get(i).unwrap_or(&xs[0]));
    let binds = [x(0), x(1), x(2), x(3), Bind::Write(&flag)];
    launch(gpu, &FLAG_NON_FINITE, &prm, &binds, Grid::Items(total))?;
    Ok(flag)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(FINITE, Params, [n0, n1, n2, n3])]
}
