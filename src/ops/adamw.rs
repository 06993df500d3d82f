//! AdamW (shaders/adamw.wgsl): one in-place step on one parameter tensor with its moment
//! buffers, PyTorch `torch.optim.AdamW` semantics (decoupled weight decay, bias-corrected
//! moments, eps outside the square root). Gradient clipping enters as `grad_scale`
//! (e.g. min(1, max_norm / ‖g‖), computed by the caller). `adamw_multi` steps every
//! tensor of a flat set (`gpu::flat`) in one dispatch, its factors read from a buffer.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, FlatLayout, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, u32_of, Grid, Kernel, WG};

pub static ADAMW: Shader = shader!("adamw.wgsl");

const ADAMW_STEP: Kernel = Kernel { shader: &ADAMW, entry: "adamw_step", wg: WG };
const ADAMW_MULTI: Kernel = Kernel { shader: &ADAMW, entry: "adamw_multi", wg: WG };

/// Hyper-parameters of one step. `step` counts from 1 (the first update), as PyTorch's.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u32,
    pub grad_scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    grad_scale: f32,
    n_tensors: u32,
    _pad: u32,
}

impl AdamWStep {
    /// The shader's constants, each computed in f64 and rounded once:
    /// step_size = lr / (1 − β1^t), inv_sqrt_bc2 = 1 / sqrt(1 − β2^t), decay = 1 − lr·wd.
    fn params(&self, n: usize) -> Params {
        let (lr, b1, b2) = (self.lr as f64, self.beta1 as f64, self.beta2 as f64);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        Params {
            n: n as u32,
            decay: (1.0 - lr * self.weight_decay as f64) as f32,
            beta1: self.beta1,
            beta2: self.beta2,
            one_minus_beta1: (1.0 - b1) as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            step_size: (lr / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: self.eps,
            grad_scale: self.grad_scale,
            n_tensors: 0,
            _pad: 0,
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        let finite = [self.lr, self.beta1, self.beta2, self.eps, self.weight_decay, self.grad_scale]
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err("hyper-parameters must be finite".into());
        }
        if self.step == 0 || self.step > i32::MAX as u32 {
            return Err("step counts from 1".into());
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err("betas must be in [0, 1)".into());
        }
        if self.eps <= 0.0 || self.lr < 0.0 || self.weight_decay < 0.0 {
            return Err("eps must be positive, lr and weight_decay non-negative".into());
        }
        Ok(())
    }
}

/// One AdamW step, in place on `param`, `m` and `v` (all the shape of `param`, f32):
///   g = grad·grad_scale; param ← param·(1 − lr·wd); m ← β1 m + (1−β1) g;
///   v ← β2 v + (1−β2) g²; param ← param − lr·(m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + eps).
pub fn adamw_step(gpu: &Gpu, param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, hp: &AdamWStep) -> Result<()> {
    let err = |d: String| {
        SopError::shape(
            "adamw",
            format!("param {:?}, grad {:?}, m {:?}, v {:?}: {d}", param.shape, grad.shape, m.shape, v.shape),
        )
    };
    let all = [param, grad, m, v];
    if all.iter().any(|t| t.shape != param.shape || t.dtype != DType::F32) {
        return Err(err("param, grad, m and v must be f32 of one shape".into()));
    }
    for (i, a) in all.iter().enumerate() {
        if all[i + 1..].iter().any(|b| a.same_buffer(b)) {
            return Err(err("param, grad, m and v must be distinct buffers".into()));
        }
    }
    hp.check().map_err(|d| err(format!("{d} ({hp:?})")))?;
    let n = param.numel();
    if n > u32::MAX as usize {
        return Err(err("more than 2³² elements".into()));
    }
    let prm = hp.params(n);
    let binds = [Bind::Read(grad), Bind::Write(param), Bind::Write(m), Bind::Write(v)];
    launch(gpu, &ADAMW_STEP, &prm, &binds, Grid::Items(n))
}

/// Per-tensor flags of `adamw_multi`'s table.
pub const TAKES_DECAY: u32 = 1;
pub const HAS_GRAD: u32 = 2;

/// The table `adamw_multi` reads: [offset, numel, flags] per tensor of `layout`, flags
/// `TAKES_DECAY` and `HAS_GRAD` (a tensor without a gradient this step is left alone).
pub fn multi_table(layout: &FlatLayout, decay: &[bool], has_grad: &[bool]) -> Result<Vec<u32>> {
    let mut t = Vec::with_capacity(3 * layout.len());
    for i in 0..layout.len() {
        let flags = if decay[i] { TAKES_DECAY } else { 0 } | if has_grad[i] { HAS_GRAD } else { 0 };
        t.extend([u32_of("adamw", "offset", layout.offsets[i])?, u32_of("adamw", "numel", layout.numel(i))?, flags]);
    }
    Ok(t)
}

/// `adamw_step` on every tensor of a flat set in one dispatch: `param`, `grad`, `m`, `v` are
/// flat buffers of one layout (`gpu::flat`), `table` its `multi_table`, `scale` one gradient
/// factor per tensor (clipping; `hp.grad_scale` is not used) and nothing changes while
/// `skip[0]` ≠ 0. Per element the same arithmetic as `adamw_step`, so the same bits.
#[allow(clippy::too_many_arguments)]
pub fn adamw_multi(
    gpu: &Gpu,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    table: &Tensor,
    scale: &Tensor,
    skip: &Tensor,
    hp: &AdamWStep,
) -> Result<()> {
    let n_tensors = scale.numel();
    let err = |d: String| {
        SopError::shape(
            "adamw_multi",
            format!(
                "param {:?}, table {:?}, scale {:?}, skip {:?}: {d}",
                param.shape, table.shape, scale.shape, skip.shape
            ),
        )
    };
    let all = [param, grad, m, v];
    if all.iter().any(|t| t.shape != param.shape || t.dtype != DType::F32) {
        return Err(err("param, grad, m and v must be flat f32 buffers of one shape".into()));
    }
    for (i, a) in all.iter().enumerate() {
        if all[i + 1..].iter().any(|b| a.same_buffer(b)) {
            return Err(err("param, grad, m and v must be distinct buffers".into()));
        }
    }
    if n_tensors == 0 || table.numel() != 3 * n_tensors || table.dtype != DType::U32 || scale.dtype != DType::F32 {
        return Err(err("table must hold 3 u32 and scale one f32 per tensor".into()));
    }
    if skip.numel() != 1 || skip.dtype != DType::U32 {
        return Err(err("skip must be one u32".into()));
    }
    hp.check().map_err(|d| err(format!("{d} ({hp:?})")))?;
    let n = param.numel();
    u32_of("adamw_multi", "elements", n)?;
    let prm = Params { n_tensors: u32_of("adamw_multi", "tensors", n_tensors)?, ..hp.params(n) };
    let binds = [
        Bind::Read(grad),
        Bind::Write(param),
        Bind::Write(m),
        Bind::Write(v),
        Bind::Read(table),
        Bind::Read(scale),
        Bind::Read(skip),
    ];
    launch(gpu, &ADAMW_MULTI, &prm, &binds, Grid::Items(n))
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(
        ADAMW,
        Params,
        [n, decay, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, inv_sqrt_bc2, eps, grad_scale, n_tensors]
    )]
}
