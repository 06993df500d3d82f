//! AdamW over all parameters with gradient clipping, on the GPU.
//!
//! Clipping (docs/METHOD.md "Optimisation"): `per_tensor` scales each tensor's gradient by
//! min(1, clip/(‖g‖ + 1e-6)) as the authors' `clip_gradients` does; `global` uses one norm
//! over all gradients. Weight decay applies only to parameters with `decay` (2+ dims).
//! The step itself is the `adamw` kernel: decoupled decay, bias-corrected moments.

use crate::error::{Result, SopError};
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::adamw::{adamw_step, AdamWStep};
use crate::ops::reduce::sum_squares;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipMode {
    PerTensor,
    Global,
}

pub struct AdamW {
    /// First and second moments, one pair per parameter.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Whether each parameter takes weight decay.
    pub decay: Vec<bool>,
    /// Optimiser steps taken so far (bias correction uses step + 1).
    pub step: u32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

/// What one step did, for the metrics.
/// Each gradient's sum of squares as a (1) tensor (None where there is no gradient).
pub fn grad_squares(gpu: &Gpu, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    grads.iter().map(|g| g.as_ref().map(|g| sum_squares(gpu, g)).transpose()).collect()
}

pub struct StepReport {
    /// Gradient norm before clipping (global, over all tensors).
    pub grad_norm: f64,
}

impl AdamW {
    pub fn new(gpu: &Gpu, params: &[Tensor], decay: Vec<bool>) -> Result<AdamW> {
        let zeros = |t: &Tensor| gpu.zeros(&t.shape, DType::F32);
        Ok(AdamW {
            m: params.iter().map(zeros).collect::<Result<_>>()?,
            v: params.iter().map(zeros).collect::<Result<_>>()?,
            decay,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
    }

    /// One step over every parameter with its gradient (None = no gradient this step),
    /// reading the gradients' norms back itself (one wait).
    pub fn step(
        &mut self,
        gpu: &Gpu,
        params: &[Tensor],
        grads: &[Option<Tensor>],
        lr: f32,
        weight_decay: f32,
        clip: Option<(f32, ClipMode)>,
    ) -> Result<StepReport> {
        let sq = grad_squares(gpu, grads)?;
        let present: Vec<&Tensor> = sq.iter().flatten().collect();
        let mut words = gpu.read_words(&present)?.into_iter();
        let sq_host: Vec<Option<f32>> =
            sq.iter().map(|s| s.as_ref().and_then(|_| words.next()).map(|w| f32::from_bits(w[0]))).collect();
        self.apply(gpu, params, grads, &sq_host, lr, weight_decay, clip)
    }

    /// The step, given each gradient's sum of squares as read back (None = no gradient):
    /// a training step reads them with its other scalars, in one wait.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        gpu: &Gpu,
        params: &[Tensor],
        grads: &[Option<Tensor>],
        sq: &[Option<f32>],
        lr: f32,
        weight_decay: f32,
        clip: Option<(f32, ClipMode)>,
    ) -> Result<StepReport> {
        let norms: Vec<f64> = sq.iter().map(|s| s.map_or(0.0, |v| (v as f64).sqrt())).collect();
        let global = norms.iter().map(|n| n * n).sum::<f64>().sqrt();
        if !global.is_finite() {
            // Nothing is updated: the parameters stay as they were before this step.
            return Err(SopError::Invalid(format!("the gradients are not finite (norm {global})")));
        }
        self.step += 1;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let grad_scale = match clip {
                Some((c, ClipMode::PerTensor)) => (c as f64 / (norms[i] + 1e-6)).min(1.0),
                Some((c, ClipMode::Global)) => (c as f64 / (global + 1e-6)).min(1.0),
                None => 1.0,
            } as f32;
            let hp = AdamWStep {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: if self.decay[i] { weight_decay } else { 0.0 },
                step: self.step,
                grad_scale,
            };
            adamw_step(gpu, p, g, &self.m[i], &self.v[i], &hp)?;
        }
        Ok(StepReport { grad_norm: global })
    }
}
