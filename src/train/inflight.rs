//! Steps whose metrics are on their way back. Each recorded step's scalar buffer is read
//! asynchronously (`gpu::readback`); `InFlight::settle` writes the lines of those that came
//! back, in step order, so `metrics.jsonl` lags a step or two but the device never waits
//! for the host. A step whose values were not finite stops the run when its line would be
//! written (the device already left the weights, the EMA and the banks as they were).
//!
//! The host blocks in exactly two ways, both here: `Until::Paced` waits for the oldest
//! step once more than `MAX_IN_FLIGHT` are queued (the later ones keep the device busy:
//! counted as pace waits), and `Until::Drained` waits for all of them: before a checkpoint
//! is written (so a non-finite step is found before its weights could be saved), before a
//! k-NN evaluation, and at the end of the run.

use std::collections::VecDeque;

use crate::error::Result;
use crate::gpu::readback::{AsyncRead, Wait};
use crate::gpu::{CounterSnapshot, Gpu, MemoryStats};

use super::run::{memory_fields, step_line, MetricsLog};
use super::scalars::StepScalars;
use super::step::StepMetrics;

/// Steps recorded ahead of the oldest whose metrics have not come back.
pub(super) const MAX_IN_FLIGHT: usize = 3;

/// A step as recorded: its host-side values, its scalars' meaning and their read.
pub(super) struct Recorded {
    /// The step, from 0.
    pub step: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub teacher_temp: f64,
    pub momentum: f64,
    pub scalars: StepScalars,
    pub read: AsyncRead,
}

/// What the loop knows of a step besides its metrics.
pub(super) struct Timing {
    pub epoch: usize,
    pub images: usize,
    pub skipped: usize,
    /// Seconds since the previous step was recorded (the host's pace).
    pub secs: f64,
    pub counters: CounterSnapshot,
    /// The device memory held when the step was recorded.
    pub memory: MemoryStats,
    /// Seconds of the step the host spent waiting on the other ranks (data parallel; 0 alone).
    pub comm_secs: f64,
}

/// How long `settle` may block (it always writes the lines of the steps already back).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Until at most `MAX_IN_FLIGHT` steps are in flight.
    Paced,
    /// Until none is.
    Drained,
}

/// A step (from 0) whose values were not finite, and why.
pub(super) struct Stop {
    pub step: usize,
    pub reason: String,
}

#[derive(Default)]
pub(super) struct InFlight {
    queue: VecDeque<(Recorded, Timing)>,
    /// The loss of the last line written.
    pub last_loss: Option<f64>,
}

impl InFlight {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn push(&mut self, rec: Recorded, timing: Timing) {
        self.queue.push_back((rec, timing));
    }

    /// Write the lines of the steps that are back (waiting as `until` allows), oldest first;
    /// `on_line` sees each. Returns the first step that was not finite (the rest are dropped).
    pub(super) fn settle(
        &mut self,
        gpu: &Gpu,
        log: &mut MetricsLog,
        until: Until,
        mut on_line: impl FnMut(usize, &StepMetrics),
    ) -> Result<Option<Stop>> {
        loop {
            let behind = self.queue.len() > MAX_IN_FLIGHT;
            let Some((rec, _)) = self.queue.front_mut() else { break };
            let words = match until {
                Until::Drained => None,
                Until::Paced if behind => None,
                _ => match rec.read.try_take(gpu)? {
                    Some(w) => Some(w),
                    None => break,
                },
            };
            let (rec, t) = self.queue.pop_front().expect("a front entry");
            let words = match words {
                Some(w) => w,
                None => rec.read.wait(gpu, if until == Until::Drained { Wait::Drain } else { Wait::Pace })?,
            };
            let d = match rec.scalars.finish(&words) {
                Ok(d) => d,
                Err(reason) => {
                    self.queue.clear();
                    return Ok(Some(Stop { step: rec.step, reason }));
                }
            };
            let m = StepMetrics {
                loss: d.loss,
                loss_cls: d.loss_cls,
                loss_mim: d.loss_mim,
                lr: rec.lr,
                weight_decay: rec.weight_decay,
                teacher_temp: rec.teacher_temp,
                momentum: rec.momentum,
                grad_norm: d.grad_norm,
                agreement_cls: d.agreement_cls,
                extras: d.extras,
            };
            let images_per_sec = t.images as f64 / t.secs;
            let line = step_line(rec.step + 1, t.epoch, &m, images_per_sec, t.skipped, t.secs, &t.counters);
            let mut line = memory_fields(line, &t.memory);
            if t.comm_secs > 0.0 {
                line["comm_ms"] = (t.comm_secs * 1e3).into();
            }
            log.write(line)?;
            self.last_loss = Some(m.loss);
            on_line(rec.step + 1, &m);
        }
        Ok(None)
    }
}
