//! Pixel and token plumbing (shaders/tokens.wgsl): patchify (im2col for the stride-P patch
//! embedding) and joining/splitting the [CLS] token. Pure copies, so every backward is the
//! inverse copy (a shared [CLS] parameter's gradient is then a sum over the batch).

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel};

pub static TOKENS: Shader = shader!("tokens.wgsl");

const PATCHIFY_FORWARD: Kernel = Kernel { shader: &TOKENS, entry: "patchify_forward", wg: WG };
const PATCHIFY_BACKWARD: Kernel = Kernel { shader: &TOKENS, entry: "patchify_backward", wg: WG };
const TOKENS_JOIN: Kernel = Kernel { shader: &TOKENS, entry: "tokens_join", wg: WG };
const TOKENS_SPLIT: Kernel = Kernel { shader: &TOKENS, entry: "tokens_split", wg: WG };
/// Invocations per workgroup of every tokens.wgsl entry (its `override WG` default).
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    b: u32,
    c: u32,
    s: u32,
    p: u32,
    g: u32,
    n: u32,
    d: u32,
    flags: u32,
}

fn run(gpu: &Gpu, kernel: &Kernel, params: Params, binds: &[Bind], n: usize) -> Result<()> {
    launch(gpu, kernel, &params, binds, Grid::Items(n))
}

fn image_dims(images: &Tensor, patch: usize) -> Result<(usize, usize, usize, usize)> {
    let s = &images.shape;
    if s.len() != 4 || s[2] != s[3] || patch == 0 || s[2] < patch {
        return Err(SopError::shape("patchify", format!("images {s:?} with patch {patch}: want (B, C, S, S), S >= P")));
    }
    Ok((s[0], s[1], s[2], s[2] / patch))
}

/// Params of the patchify pair for images (B, C, S, S) cut into G × G patches of P.
fn patch_params(b: usize, c: usize, s: usize, patch: usize, g: usize) -> Params {
    Params {
        b: b as u32,
        c: c as u32,
        s: s as u32,
        p: patch as u32,
        g: g as u32,
        n: (g * g) as u32,
        ..Default::default()
    }
}

/// images (B, C, S, S) -> patches (B·N, C·P·P), N = (S/P)².
pub fn patchify_forward(gpu: &Gpu, images: &Tensor, patch: usize) -> Result<Tensor> {
    let (b, c, s, g) = image_dims(images, patch)?;
    let out = gpu.empty(&[b * g * g, c * patch * patch], DType::F32)?;
    let params = patch_params(b, c, s, patch, g);
    run(
        gpu,
        &PATCHIFY_FORWARD,
        params,
        &[Bind::Read(images), Bind::Read(images), Bind::Write(&out), Bind::Write(&out)],
        out.numel(),
    )?;
    Ok(out)
}

/// dpatches (B·N, C·P·P) -> dimages (B, C, S, S) (zeros beyond the patch grid).
pub fn patchify_backward(gpu: &Gpu, dpatches: &Tensor, image_shape: &[usize], patch: usize) -> Result<Tensor> {
    let dimg = gpu.empty(image_shape, DType::F32)?;
    let (b, c, s, g) = image_dims(&dimg, patch)?;
    if dpatches.shape != [b * g * g, c * patch * patch] {
        return Err(SopError::shape(
            "patchify_backward",
            format!("dpatches {:?} for images {image_shape:?}", dpatches.shape),
        ));
    }
    let params = patch_params(b, c, s, patch, g);
    run(
        gpu,
        &PATCHIFY_BACKWARD,
        params,
        &[Bind::Read(dpatches), Bind::Read(dpatches), Bind::Write(&dimg), Bind::Write(&dimg)],
        dimg.numel(),
    )?;
    Ok(dimg)
}

/// out (B, 1+N, D) = [cls; x] with x (B, N, D) and cls either shared (D) / (1, 1, D) or per sample (B, D).
pub fn tokens_join(gpu: &Gpu, cls: &Tensor, x: &Tensor) -> Result<Tensor> {
    let s = &x.shape;
    if s.len() != 3 {
        return Err(SopError::shape("tokens_join", format!("x {s:?}: want (B, N, D)")));
    }
    let (b, n, d) = (s[0], s[1], s[2]);
    // With B = 1 both readings coincide.
    let shared = cls.numel() == d;
    if !(cls.numel() == d || cls.numel() == b * d) {
        return Err(SopError::shape("tokens_join", format!("cls {:?} for x {s:?}", cls.shape)));
    }
    let out = gpu.empty(&[b, n + 1, d], DType::F32)?;
    let params = Params { b: b as u32, n: n as u32, d: d as u32, flags: shared as u32, ..Default::default() };
    run(
        gpu,
        &TOKENS_JOIN,
        params,
        &[Bind::Read(x), Bind::Read(cls), Bind::Write(&out), Bind::Write(&out)],
        out.numel(),
    )?;
    Ok(out)
}

/// x (B, 1+N, D) -> (cls (B, D), rest (B, N, D)).
pub fn tokens_split(gpu: &Gpu, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = &x.shape;
    if s.len() != 3 || s[1] < 1 {
        return Err(SopError::shape("tokens_split", format!("x {s:?}: want (B, 1+N, D)")));
    }
    let (b, n, d) = (s[0], s[1] - 1, s[2]);
    let cls = gpu.empty(&[b, d], DType::F32)?;
    let rest = gpu.empty(&[b, n, d], DType::F32)?;
    let params = Params { b: b as u32, n: n as u32, d: d as u32, ..Default::default() };
    run(gpu, &TOKENS_SPLIT, params, &[Bind::Read(x), Bind::Read(x), Bind::Write(&rest), Bind::Write(&cls)], x.numel())?;
    Ok((cls, rest))
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(TOKENS, Params, [b, c, s, p, g, n, d, flags])]
}
