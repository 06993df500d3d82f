//! What a step leaves on the device for its line of `metrics.jsonl`, and how the line is
//! made from it once it comes back (asynchronously: `inflight`).
//!
//! During a step every scalar it logs stays on the device; at the end `StepScalars::gather`
//! copies them side by side into one small u32 buffer (copies, no kernels), which is read
//! back without a wait. `Slot`s say where each tensor's words sit.
//!
//! To log a new per-step metric: in `Trainer::step`, compute it as a device tensor and call
//! `scalars.extra("name", &tensor, |words| value)` (the closure turns the tensor's 32-bit
//! words into the f64 written under "name"; `extras` makes several values from several
//! tensors). That is the only place to touch. A name added once per micro-batch is logged
//! as the mean over the micro-batches.

use crate::error::Result;
use crate::gpu::{DType, Gpu, Tensor};
use crate::sop::objective::ObjectiveScalars;

use super::optimizer::global_norm;

/// Where one tensor's words sit in a step's scalar buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    at: usize,
    len: usize,
}

impl Slot {
    fn of<'a>(&self, words: &'a [u32]) -> &'a [u32] {
        &words[self.at..self.at + self.len]
    }
    fn f32(&self, words: &[u32]) -> f32 {
        f32::from_bits(words[self.at])
    }
}

/// Metrics beyond the core ones: how their tensors' words become their values.
type Decode = Box<dyn Fn(&[&[u32]]) -> Vec<f64>>;

/// The scalars of one micro-batch's objective: its task losses (one word each), its
/// embeddings' finiteness word (`ops::finite`) and the two arg-max vectors.
struct MicroSlots {
    n_cls: usize,
    n_mim: usize,
    losses: Slot,
    embed_check: Slot,
    agreement: [Slot; 2],
}

/// The device tensors a step logs, in order, with what each means.
#[derive(Default)]
pub(super) struct StepScalars {
    parts: Vec<Tensor>,
    len: usize,
    micro: Vec<MicroSlots>,
    grad_sq: Option<Slot>,
    flag: Option<Slot>,
    extras: Vec<(Vec<&'static str>, Vec<Slot>, Decode)>,
}

impl StepScalars {
    fn push(&mut self, t: &Tensor) -> Slot {
        let slot = Slot { at: self.len, len: t.numel() };
        self.len += t.numel();
        self.parts.push(t.clone());
        slot
    }

    /// One micro-batch's objective scalars; `checks` holds its task losses then its
    /// embeddings' finiteness word (the words `clip_scales` checks).
    pub(super) fn micro(&mut self, n_cls: usize, n_mim: usize, checks: &Tensor, agreement: [&Tensor; 2]) {
        let c = self.push(checks);
        let losses = Slot { at: c.at, len: n_cls + n_mim };
        let embed_check = Slot { at: c.at + n_cls + n_mim, len: 1 };
        let agreement = [self.push(agreement[0]), self.push(agreement[1])];
        self.micro.push(MicroSlots { n_cls, n_mim, losses, embed_check, agreement });
    }

    /// Each gradient's Σ g² (T) and the step's non-finite flag (1, u32).
    pub(super) fn optimiser(&mut self, grad_sq: &Tensor, flag: &Tensor) {
        self.grad_sq = Some(self.push(grad_sq));
        self.flag = Some(self.push(flag));
    }

    /// A metric written under `name`, `value` made from `t`'s words when they come back.
    pub(super) fn extra(&mut self, name: &'static str, t: &Tensor, value: impl Fn(&[u32]) -> f64 + 'static) {
        self.extras(&[name], &[t], move |w| vec![value(w[0])]);
    }

    /// Metrics written under `names`, made together from the words of `tensors` (one slice
    /// each, in order) when they come back.
    pub(super) fn extras(
        &mut self,
        names: &[&'static str],
        tensors: &[&Tensor],
        values: impl Fn(&[&[u32]]) -> Vec<f64> + 'static,
    ) {
        let slots = tensors.iter().map(|t| self.push(t)).collect();
        self.extras.push((names.to_vec(), slots, Box::new(values)));
    }

    /// Copy every part into one new u32 buffer (in command order); the parts may be dropped.
    pub(super) fn gather(&mut self, gpu: &Gpu) -> Result<Tensor> {
        let all = gpu.empty(&[self.len.max(1)], DType::U32)?;
        let mut at = 0;
        for t in self.parts.drain(..) {
            gpu.copy_region(&t, 0, &all, at, t.numel())?;
            at += t.numel();
        }
        Ok(all)
    }

    /// The metrics from the gathered words, or why the run must stop: a loss or an
    /// embedding that is not finite (the first micro-batch with one), then gradients that
    /// are not, then the device's flag (the same checks, made before AdamW ran).
    pub(super) fn finish(&self, words: &[u32]) -> std::result::Result<DeviceMetrics, String> {
        let n = self.micro.len() as f64;
        let mut m = DeviceMetrics::default();
        for s in &self.micro {
            let mut parts: Vec<Vec<u32>> = s.losses.of(words).iter().map(|&w| vec![w]).collect();
            parts.extend(s.agreement.iter().map(|a| a.of(words).to_vec()));
            let out = ObjectiveScalars::from_words(s.n_cls, s.n_mim, &parts);
            // A NaN can hide inside clamped logs, so the embeddings are checked as well
            // (`finite_check`: +0.0, or a NaN if any of the four holds a non-finite value).
            let embeddings_finite = s.embed_check.f32(words).is_finite();
            if !out.loss.is_finite() || !embeddings_finite {
                let note = if embeddings_finite { "" } else { ", non-finite embeddings" };
                return Err(format!("the loss is not finite (cls {}, mim {}{note})", out.loss_cls, out.loss_mim));
            }
            m.loss += out.loss as f64 / n;
            m.loss_cls += out.loss_cls as f64 / n;
            m.loss_mim += out.loss_mim as f64 / n;
            m.agreement_cls += out.agreement_cls as f64 / n;
        }
        let sq: Vec<f32> = self.grad_sq.map_or(&[][..], |s| s.of(words)).iter().map(|&w| f32::from_bits(w)).collect();
        m.grad_norm = global_norm(&sq);
        if !m.grad_norm.is_finite() {
            return Err(format!("the gradients are not finite (norm {})", m.grad_norm));
        }
        if self.flag.is_some_and(|f| f.of(words)[0] != 0) {
            return Err("a value of the step is not finite (the device's check)".into());
        }
        // Each name's mean over the times it was added (once per micro-batch, or once).
        let mut sums: Vec<(&'static str, f64, f64)> = Vec::new();
        for (names, slots, values) in &self.extras {
            let parts: Vec<&[u32]> = slots.iter().map(|s| s.of(words)).collect();
            for (name, v) in names.iter().zip(values(&parts)) {
                match sums.iter_mut().find(|e| e.0 == *name) {
                    Some(e) => (e.1, e.2) = (e.1 + v, e.2 + 1.0),
                    None => sums.push((name, v, 1.0)),
                }
            }
        }
        m.extras = sums.into_iter().map(|(name, sum, n)| (name, sum / n)).collect();
        Ok(m)
    }
}

/// What a step computed on the device, as logged.
#[derive(Default, Debug, Clone)]
pub(super) struct DeviceMetrics {
    pub loss: f64,
    pub loss_cls: f64,
    pub loss_mim: f64,
    pub grad_norm: f64,
    pub agreement_cls: f64,
    /// The `extra` metrics, in the order they were added.
    pub extras: Vec<(&'static str, f64)>,
}
