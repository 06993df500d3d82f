//! Pointwise arithmetic (shaders/elementwise.wgsl): `add`, `sub`, `mul`, `scale`,
//! `add_scaled_into` (y += alpha·x, in place), `add_broadcast` (position embedding, biases)
//! and `scale_samples` (drop path). Each function returns a new tensor except
//! `add_scaled_into`; the backward of each is in the comment above it.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{check_f32, launch, u32_of, vec4_items, Grid, Kernel, WG};

pub static ELEMENTWISE: Shader = shader!("elementwise.wgsl");

const ADD: Kernel = Kernel { shader: &ELEMENTWISE, entry: "add", wg: WG };
const SUB: Kernel = Kernel { shader: &ELEMENTWISE, entry: "sub", wg: WG };
const MUL: Kernel = Kernel { shader: &ELEMENTWISE, entry: "mul", wg: WG };
const SCALE: Kernel = Kernel { shader: &ELEMENTWISE, entry: "scale", wg: WG };
const ADD_SCALED_INTO: Kernel = Kernel { shader: &ELEMENTWISE, entry: "add_scaled_into", wg: WG };
const ADD_BROADCAST: Kernel = Kernel { shader: &ELEMENTWISE, entry: "add_broadcast", wg: WG };
const ADD_BROADCAST_UNALIGNED: Kernel = Kernel { shader: &ELEMENTWISE, entry: "add_broadcast_unaligned", wg: WG };
const SCALE_SAMPLES: Kernel = Kernel { shader: &ELEMENTWISE, entry: "scale_samples", wg: WG };
const SCALE_SAMPLES_UNALIGNED: Kernel = Kernel { shader: &ELEMENTWISE, entry: "scale_samples_unaligned", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    m: u32,
    alpha: f32,
    _pad: u32,
}

/// Record `kernel` over out's elements: out[e] = f(a, b, out) as the shader defines it.
fn run(gpu: &Gpu, kernel: &Kernel, a: &Tensor, b: &Tensor, out: &Tensor, m: usize, alpha: f32) -> Result<()> {
    let entry = kernel.entry;
    let n = out.numel();
    let params = Params { n: u32_of(entry, "elements", n)?, m: u32_of(entry, "m", m)?, alpha, _pad: 0 };
    let binds = [Bind::Read(a), Bind::Read(b), Bind::Write(out)];
    launch(gpu, kernel, &params, &binds, Grid::Items(vec4_items(n)))
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    check_f32(op, &[("a", a), ("b", b)])?;
    if a.shape != b.shape {
        return Err(SopError::shape(op, format!("a {:?} and b {:?} differ", a.shape, b.shape)));
    }
    Ok(())
}

fn binary(gpu: &Gpu, kernel: &Kernel, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape(kernel.entry, a, b)?;
    let out = gpu.empty(&a.shape, DType::F32)?;
    run(gpu, kernel, a, b, &out, 1, 1.0)?;
    Ok(out)
}

/// a + b (same shape). Backward: da = dy, db = dy.
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(gpu, &ADD, a, b)
}

/// a − b (same shape). Backward: da = dy, db = −dy (`scale(dy, -1)`).
pub fn sub(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(gpu, &SUB, a, b)
}

/// a ⊙ b (same shape). Backward: da = dy ⊙ b, db = dy ⊙ a (`mul` again).
pub fn mul(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(gpu, &MUL, a, b)
}

/// s · a. Backward: da = s · dy (`scale` again).
pub fn scale(gpu: &Gpu, a: &Tensor, s: f32) -> Result<Tensor> {
    check_f32("scale", &[("a", a)])?;
    let out = gpu.empty(&a.shape, DType::F32)?;
    run(gpu, &SCALE, a, a, &out, 1, s)?;
    Ok(out)
}

/// y += alpha · x in place (same element count; gradient accumulation, residual adds).
/// Backward: dx += alpha · dy, and dy flows on to the old y unchanged.
pub fn add_scaled_into(gpu: &Gpu, y: &Tensor, x: &Tensor, alpha: f32) -> Result<()> {
    check_f32("add_scaled_into", &[("y", y), ("x", x)])?;
    if y.numel() != x.numel() {
        return Err(SopError::shape("add_scaled_into", format!("y {:?} and x {:?} differ in size", y.shape, x.shape)));
    }
    if y.same_buffer(x) {
        // A buffer cannot be bound read-only and writable in one dispatch; y += a·y is a scale.
        return Err(SopError::shape("add_scaled_into", "y and x share one buffer (use scale)"));
    }
    run(gpu, &ADD_SCALED_INTO, x, x, y, 1, alpha)
}

/// y = x + b where b repeats along the leading dims of x: y[i] = x[i] + b[i mod len(b)]
/// (x (B, T, D) + pos (T, D) or (1, T, D); x (…, D) + bias (D)). len(b) must divide numel(x).
/// Backward: dx = dy; db = `sum_rows` of dy reshaped (numel(x) / len(b), len(b)).
pub fn add_broadcast(gpu: &Gpu, x: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_f32("add_broadcast", &[("x", x), ("b", b)])?;
    let (n, m) = (x.numel(), b.numel());
    if m == 0 || n % m != 0 {
        return Err(SopError::shape("add_broadcast", format!("b {:?} does not tile x {:?}", b.shape, x.shape)));
    }
    let out = gpu.empty(&x.shape, DType::F32)?;
    let kernel = if m.is_multiple_of(4) { &ADD_BROADCAST } else { &ADD_BROADCAST_UNALIGNED };
    run(gpu, kernel, x, b, &out, m, 1.0)?;
    Ok(out)
}

/// y[b, …] = s[b] · x[b, …] for x (B, …) and s (B): drop path's per-sample keep mask
/// divided by the keep probability. Backward: dx = `scale_samples(dy, s)`; s is a constant
/// (were it a parameter, ds[b] = Σ dy[b, …] · x[b, …]).
pub fn scale_samples(gpu: &Gpu, x: &Tensor, s: &Tensor) -> Result<Tensor> {
    check_f32("scale_samples", &[("x", x), ("s", s)])?;
    let batch = x.shape.first().copied().unwrap_or(0);
    if x.shape.is_empty() || s.numel() != batch {
        return Err(SopError::shape(
            "scale_samples",
            format!("s {:?} for x {:?}: need one scale per sample", s.shape, x.shape),
        ));
    }
    let out = gpu.empty(&x.shape, DType::F32)?;
    if let Some(per_sample) = x.numel().checked_div(batch) {
        let kernel = if per_sample.is_multiple_of(4) { &SCALE_SAMPLES } else { &SCALE_SAMPLES_UNALIGNED };
        run(gpu, kernel, x, s, &out, per_sample.max(1), 1.0)?;
    }
    Ok(out)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(ELEMENTWISE, Params, [n, m, alpha])]
}
