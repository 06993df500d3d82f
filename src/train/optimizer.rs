//! AdamW over all parameters with gradient clipping, on the GPU, without reading anything
//! back.
//!
//! Clipping (docs/METHOD.md "Optimisation"): `per_tensor` scales each tensor's gradient by
//! min(1, clip/(‖g‖ + 1e-6)) as the authors' `clip_gradients` does; `global` uses one norm
//! over all gradients. Weight decay applies only to parameters with `decay` (2+ dims).
//!
//! Parameters, gradients and both moments are flat buffers of one layout (`gpu::flat`), so
//! a step is a few dispatches whatever the number of tensors: the gradients are copied into
//! the flat gradient buffer (`gather_grads`), their sums of squares come from
//! `SquaresPlan` (the bits `sum_squares` gives each alone), `clip_scales` turns them into
//! factors and raises the step's non-finite flag, and `adamw_multi` updates every tensor
//! unless the flag is set.

use crate::error::{Result, SopError};
use crate::gpu::{DType, FlatLayout, FlatTensors, Gpu, Tensor};
use crate::model::vit::Weights;
use crate::ops::adamw::{adamw_multi, multi_table, AdamWStep};
use crate::ops::clip::{clip_scales, ClipRule};
use crate::ops::reduce::SquaresPlan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipMode {
    PerTensor,
    Global,
}

/// The device rule for `clip` (threshold and mode; None = off).
pub fn clip_rule(clip: Option<(f32, ClipMode)>) -> ClipRule {
    match clip {
        None => ClipRule::None,
        Some((c, ClipMode::PerTensor)) => ClipRule::PerTensor(c),
        Some((c, ClipMode::Global)) => ClipRule::Global(c),
    }
}

pub struct AdamW {
    /// First and second moments, one pair per parameter (views of `moments`).
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    moments: [FlatTensors; 2],
    /// The step's gradients, gathered into one flat buffer of the parameters' layout.
    grads: FlatTensors,
    layout: FlatLayout,
    /// Whether each parameter takes weight decay.
    pub decay: Vec<bool>,
    /// `adamw_multi`'s table and which tensors it last said had a gradient.
    table: Tensor,
    has_grad: Vec<bool>,
    squares: SquaresPlan,
    /// One clipping factor per tensor (`clip_scales`).
    scales: Tensor,
    /// Optimiser steps taken so far (bias correction uses step + 1).
    pub step: u32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

/// Norms of gradients from their sums of squares as read back: each tensor's norm in f64
/// and the global one over them (None = no gradient, norm 0).
pub fn global_norm(sq: &[f32]) -> f64 {
    sq.iter().map(|&s| (s as f64).sqrt()).map(|n| n * n).sum::<f64>().sqrt()
}

impl AdamW {
    /// Zero moments for `params` (their flat layout) and `decay` per tensor.
    pub fn new(gpu: &Gpu, params: &Weights, decay: Vec<bool>) -> Result<AdamW> {
        let layout = params.layout.clone();
        if decay.len() != layout.len() {
            return Err(SopError::Invalid(format!("{} decay flags for {} parameters", decay.len(), layout.len())));
        }
        let (m, v) = (gpu.flat_zeros(&layout)?, gpu.flat_zeros(&layout)?);
        let has_grad = vec![true; layout.len()];
        let table = multi_table(&layout, &decay, &has_grad)?;
        Ok(AdamW {
            m: m.views.clone(),
            v: v.views.clone(),
            moments: [m, v],
            grads: gpu.flat_zeros(&layout)?,
            table: gpu.upload_u32(&[table.len()], &table)?,
            has_grad,
            squares: SquaresPlan::new(gpu, &layout)?,
            scales: gpu.zeros(&[layout.len()], DType::F32)?,
            layout,
            decay,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
    }

    /// Copy the step's gradients (None = none this step: its slot is zeroed and the tensor
    /// left alone) into the flat gradient buffer and record their sums of squares; returns
    /// the (T) tensor they land in (overwritten by the next step's).
    pub fn gather_grads(&mut self, gpu: &Gpu, grads: &[Option<Tensor>]) -> Result<&Tensor> {
        self.copy_grads(gpu, grads)?;
        self.sum_squares(gpu)
    }

    /// The first half of `gather_grads`: the gradients copied into the flat gradient buffer,
    /// which is returned (data-parallel training averages it over the ranks in between).
    pub fn copy_grads(&mut self, gpu: &Gpu, grads: &[Option<Tensor>]) -> Result<&Tensor> {
        if grads.len() != self.layout.len() {
            return Err(SopError::Invalid(format!("{} gradients for {} parameters", grads.len(), self.layout.len())));
        }
        self.note_has_grad(gpu, grads.iter().map(Option::is_some).collect())?;
        for (i, g) in grads.iter().enumerate() {
            self.copy_grad(gpu, i, g.as_ref())?;
        }
        Ok(&self.grads.flat)
    }

    /// Parameter `i`'s gradient copied into its slot of the flat gradient buffer (None: the
    /// slot zeroed); data-parallel training does this as the backward finishes each one.
    pub fn copy_grad(&self, gpu: &Gpu, i: usize, g: Option<&Tensor>) -> Result<()> {
        let slot = &self.grads.views[i];
        match g {
            Some(g) if g.shape == slot.shape => gpu.copy(g, slot),
            Some(g) => Err(SopError::shape("adamw", format!("gradient {:?} for parameter {:?}", g.shape, slot.shape))),
            None => gpu
                .with_encoder(|enc| enc.clear_buffer(slot.buffer(), slot.offset(), Some(slot.bytes().div_ceil(4) * 4))),
        }
    }

    /// Which parameters have a gradient this step (the others are left alone by `apply`).
    pub fn note_has_grad(&mut self, gpu: &Gpu, has_grad: Vec<bool>) -> Result<()> {
        if has_grad != self.has_grad {
            gpu.write_u32(&self.table, &multi_table(&self.layout, &self.decay, &has_grad)?)?;
            self.has_grad = has_grad;
        }
        Ok(())
    }

    /// The flat gradient buffer (`copy_grad` writes it).
    pub fn grads_flat(&self) -> &Tensor {
        &self.grads.flat
    }

    /// The second half of `gather_grads`: the flat gradients' sums of squares, the (T)
    /// tensor returned.
    pub fn sum_squares(&mut self, gpu: &Gpu) -> Result<&Tensor> {
        self.squares.run(gpu, &self.grads.flat)?;
        Ok(&self.squares.out)
    }

    /// The flat first and second moments (rank 0 broadcasts them to every rank).
    pub fn moments_flat(&self) -> [&Tensor; 2] {
        [&self.moments[0].flat, &self.moments[1].flat]
    }

    /// The step on the device after `gather_grads`: clipping factors from the sums of
    /// squares, `flag` raised if they or the first `n_checks` words of `checks` are not
    /// finite, then AdamW on every parameter with a gradient unless `flag` is set.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        gpu: &Gpu,
        params: &Weights,
        lr: f32,
        weight_decay: f32,
        clip: Option<(f32, ClipMode)>,
        checks: (&Tensor, usize),
        flag: &Tensor,
    ) -> Result<()> {
        if params.layout != self.layout {
            return Err(SopError::Invalid("AdamW: the parameters' layout is not the optimiser's".into()));
        }
        clip_scales(gpu, &self.squares.out, checks.0, checks.1, flag, &self.scales, clip_rule(clip))?;
        self.step += 1;
        let hp = AdamWStep {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay,
            step: self.step,
            grad_scale: 1.0,
        };
        let [m, v] = &self.moments;
        adamw_multi(gpu, &params.flat, &self.grads.flat, &m.flat, &v.flat, &self.table, &self.scales, flag, &hp)
    }

    /// One whole step that reads the gradients' norm back (one wait; for tests and tools, not
    /// training): `gather_grads`, `apply`, and the global norm before clipping. A non-finite
    /// gradient is an error and changes nothing.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        params: &Weights,
        grads: &[Option<Tensor>],
        lr: f32,
        weight_decay: f32,
        clip: Option<(f32, ClipMode)>,
    ) -> Result<f64> {
        let sq = self.gather_grads(gpu, grads)?.clone();
        let flag = gpu.zeros(&[1], DType::U32)?;
        self.apply(gpu, params, lr, weight_decay, clip, (&sq, 0), &flag)?;
        let global = global_norm(&gpu.read_f32(&sq)?);
        if !global.is_finite() {
            return Err(SopError::Invalid(format!("the gradients are not finite (norm {global})")));
        }
        Ok(global)
    }
}
