//! The one launch path of every op: a `Kernel` constant names a WGSL entry point (shader
//! file, entry, workgroup size), `launch` records it with its params, bindings and a
//! `Grid`; plus the argument checks the ops share.
//!
//! Shaders use `@workgroup_size(WG)` with `override WG: u32 = 64u;` (256 in tokens.wgsl;
//! the matmul files tile their own way) and recover their workgroup index as
//! `wid.x + wid.y * nwg.x`, bound-checking what it addresses, so any count up to
//! `MAX_INVOCATIONS` fits the 65,535-workgroups-per-dimension limit. Pointwise kernels
//! (elementwise, gelu) give each invocation `PER` vec4 units (see their headers).

use crate::error::{Result, SopError};
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};

/// One WGSL entry point: its shader file, its name, and its invocations per workgroup
/// (what `Grid::Items` divides by; the shader's `override WG` default).
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub wg: u32,
}

/// The workgroups of one launch.
pub enum Grid {
    /// One invocation per item: ceil(items / wg) workgroups as an (x, y, 1) grid.
    Items(usize),
    /// These workgroup counts, as the kernel's header lays them out.
    Groups([u32; 3]),
}

/// Record `kernel` with its params (a `#[repr(C)]` mirror of the shader's `Params`),
/// storage bindings in binding order from 1, and grid.
pub fn launch<P: bytemuck::Pod>(gpu: &Gpu, kernel: &Kernel, params: &P, binds: &[Bind], grid: Grid) -> Result<()> {
    launch_with(gpu, kernel, &[], params, binds, grid)
}

/// `launch` with pipeline-overridable constants (e.g. a head width or a tile shape).
pub fn launch_with<P: bytemuck::Pod>(
    gpu: &Gpu,
    kernel: &Kernel,
    constants: &[(&'static str, f64)],
    params: &P,
    binds: &[Bind],
    grid: Grid,
) -> Result<()> {
    let groups = match grid {
        Grid::Items(n) => {
            if n > MAX_INVOCATIONS {
                return Err(SopError::Limit {
                    op: kernel.entry,
                    detail: format!("{n} invocations"),
                    limit: MAX_INVOCATIONS as u64,
                });
            }
            gpu.grid((n as u32).div_ceil(kernel.wg))
        }
        Grid::Groups(g) => g,
    };
    gpu.dispatch(kernel.shader, kernel.entry, constants, bytemuck::bytes_of(params), binds, groups)
}

/// Invocations per workgroup: the shaders' `override WG` default (never overridden).
pub const WG: u32 = 64;

/// vec4 units per invocation in the pointwise kernels: their `const PER`.
pub const PER: usize = 16;

/// The most invocations one dispatch may have: indices stay far from u32 overflow.
pub const MAX_INVOCATIONS: usize = 1 << 31;

/// Invocations of a pointwise kernel over `n` f32 elements: ceil(n/4) vec4 units, `PER` per
/// invocation.
pub fn vec4_items(n: usize) -> usize {
    n.div_ceil(4).div_ceil(PER)
}

/// Every tensor must hold f32.
pub fn check_f32(op: &'static str, tensors: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in tensors {
        if t.dtype != DType::F32 {
            return Err(SopError::shape(op, format!("{name} {:?} is {:?}, expected F32", t.shape, t.dtype)));
        }
    }
    Ok(())
}

/// (rows, width) of a tensor seen as rows of its last dimension: (…, C) -> (R, C).
/// A 0-dimensional tensor is one row of one element.
pub fn rows_of(t: &Tensor) -> (usize, usize) {
    let c = t.shape.last().copied().unwrap_or(1);
    let r = t.shape[..t.shape.len().saturating_sub(1)].iter().product();
    (r, c)
}

/// `n` as the u32 a `Params` field holds.
pub fn u32_of(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| SopError::Limit { op, detail: format!("{what} = {n}"), limit: u32::MAX as u64 })
}
