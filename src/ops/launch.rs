//! Dispatch sizes and argument checks shared by the pointwise and row-wise kernels
//! (elementwise, gelu, reduce, layernorm, softmax, l2norm).
//!
//! Those shaders use `@workgroup_size(WG)` with `override WG: u32 = 64u;` and recover their
//! workgroup index as `wid.x + wid.y * nwg.x`, bound-checking what it addresses, so any
//! count up to `MAX_INVOCATIONS` fits the 65,535-workgroups-per-dimension limit. Pointwise
//! kernels (elementwise, gelu) give each invocation `PER` vec4 units (see their headers).

use crate::error::{Result, SopError};
use crate::gpu::{DType, Gpu, Tensor};

/// Invocations per workgroup: the shaders' `override WG` default (never overridden).
pub const WG: u32 = 64;

/// vec4 units per invocation in the pointwise kernels: their `const PER`.
pub const PER: usize = 16;

/// The most invocations one dispatch may have: indices stay far from u32 overflow.
pub const MAX_INVOCATIONS: usize = 1 << 31;

/// Workgroup counts for `invocations` invocations of `WG` each, as a (x, y, 1) grid.
pub fn groups(gpu: &Gpu, op: &'static str, invocations: usize) -> Result<[u32; 3]> {
    if invocations > MAX_INVOCATIONS {
        return Err(SopError::Limit { op, detail: format!("{invocations} invocations"), limit: MAX_INVOCATIONS as u64 });
    }
    Ok(gpu.grid((invocations as u32).div_ceil(WG)))
}

/// Workgroups for a pointwise kernel over `n` f32 elements: ceil(n/4) vec4 units, `PER` per
/// invocation.
pub fn groups_vec4(gpu: &Gpu, op: &'static str, n: usize) -> Result<[u32; 3]> {
    groups(gpu, op, n.div_ceil(4).div_ceil(PER))
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
