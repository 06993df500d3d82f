//! What the `ibot` objective changes in a training step, beside SOP's: the head's output
//! passes through the prototype layer (`Trainer::head`, `Trainer::teacher_head`), and the prototype layer's gradient
//! is dropped during its frozen first epochs (`Trainer::prototypes_frozen`). The objective
//! itself is `sop::ibot`.

use crate::error::Result;
use crate::gpu::Tensor;
use crate::model::vit::ParamVars;
use crate::sop::ibot;
use crate::tape::{Tape, Var};

use super::config::Objective;
use super::step::Trainer;

impl Trainer<'_> {
    /// tokens (…, D) → the head's unit rows (…, W) for SOP, the prototype logits (…, K) for
    /// `ibot`.
    pub(super) fn head(&self, tape: &mut Tape, p: &ParamVars, tokens: &Var) -> Result<Var> {
        let h = self.model.vit.head(tape, p, tokens)?;
        match self.cfg.objective {
            Objective::Sop => Ok(h),
            Objective::Ibot => ibot::prototype_logits(tape, p, &h),
        }
    }

    /// The teacher's `head`, and its unit [CLS] rows (…, W) before any prototype layer (for
    /// the diagnostics) when they differ from the output's: None for SOP.
    pub(super) fn teacher_head(&self, tape: &mut Tape, p: &ParamVars, tokens: &Var) -> Result<(Var, Option<Tensor>)> {
        let h = self.model.vit.head(tape, p, tokens)?;
        match self.cfg.objective {
            Objective::Sop => Ok((h, None)),
            Objective::Ibot => {
                let z_cls = tape.tokens_split(&h)?.0.value;
                Ok((ibot::prototype_logits(tape, p, &h)?, Some(z_cls)))
            }
        }
    }

    /// iBOT's `cancel_gradients_last_layer`: no gradient (so no AdamW update, no decay) for
    /// the prototype directions during the first `ibot.freeze_last_layer_epochs` epochs.
    /// Whether parameter `i` takes no gradient at `step` for this reason.
    pub(super) fn prototypes_frozen(&self, step: usize, i: usize) -> bool {
        let frozen = self.cfg.ibot.freeze_last_layer_epochs * self.schedule_epoch;
        self.cfg.objective == Objective::Ibot && step < frozen && self.model.student.names[i] == ibot::WEIGHT_V
    }
}
