//! Data-parallel training in the run (`crate::dist`; README "Several GPUs"): what each rank
//! does differently and the points where the ranks exchange.
//!
//! - start: the ranks agree on the configuration (their per-rank batch, accumulation, seed
//!   and rank count), a resume with another rank count keeps the global batch (reshards) or
//!   is refused, and rank 0 broadcasts parameters, optimiser state and banks;
//! - each step: the gradients (and the loss words) averaged over ranks (`mean_over_ranks`),
//!   and the banks take every rank's teacher rows in rank order (`gather_bank_rows`);
//! - every `CHECK_EVERY` steps and at each checkpoint the ranks compare a checksum of
//!   parameters and banks (`verify_same`);
//! - rank 0 alone writes the run folder (`save_folder`), metrics and pictures, and runs the
//!   k-NN.

use std::path::{Path, PathBuf};

use crate::dist::{self, device, layout::Shard};
use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};

use super::config::{Objective, TrainConfig};
use super::step::{BankRows, Trainer};

/// Steps between two comparisons of the ranks' parameters and banks.
pub(super) const CHECK_EVERY: usize = 50;

/// Set (to anything) to make every rank save its checkpoint, ranks > 0 in `rank-R/` of the
/// run folder: what the test that every rank holds the same bits reads.
pub const SAVE_EVERY_RANK: &str = "SOP_SAVE_EVERY_RANK";

/// This rank's shard of micro-batches of `batch` images per rank.
pub(super) fn shard(batch: usize) -> Shard {
    let d = dist::world();
    Shard { rank: d.rank(), ranks: d.size(), batch }
}

/// Whether this rank writes the run's metrics, pictures and k-NN (rank 0).
pub(super) fn is_root() -> bool {
    dist::world().is_root()
}

/// Where this rank saves a checkpoint: rank 0 in the run folder, others nowhere (or in
/// `rank-R/` with `SOP_SAVE_EVERY_RANK`).
pub(super) fn save_folder(out: &Path) -> Option<PathBuf> {
    let d = dist::world();
    if d.is_root() {
        Some(out.to_path_buf())
    } else {
        std::env::var_os(SAVE_EVERY_RANK).map(|_| out.join(format!("rank-{}", d.rank())))
    }
}

/// Before any work: the ranks' configurations agree (rank 0's seed is everyone's), `ibot`,
/// KoLeo and the [CLS] centring run on one rank only, and a resumed run of `saved_ranks` ranks keeps its global batch:
/// its per-rank batch becomes global / (ranks · accumulate), or the resume is refused.
pub(super) fn agree(cfg: &mut TrainConfig, saved_ranks: Option<usize>) -> Result<()> {
    let d = dist::world();
    let ranks = d.size();
    if ranks > 1 && cfg.objective == Objective::Ibot {
        return Err(SopError::Invalid(format!(
            "--objective ibot runs on one rank only (its centres are not yet averaged over ranks); {ranks} were started"
        )));
    }
    if ranks > 1 && (cfg.sop.koleo_weight > 0.0 || cfg.sop.center_teacher_cls) {
        return Err(SopError::Invalid(format!(
            "sop.koleo_weight > 0 and sop.center_teacher_cls run on one rank only (each is computed over the \
             process's own batch, so {ranks} ranks would not train as one process of the whole batch)"
        )));
    }
    if let Some(saved) = saved_ranks.filter(|&s| s != ranks) {
        let accum = cfg.optim.accumulate;
        let global = saved * cfg.data.batch_size * accum;
        if !global.is_multiple_of(ranks * accum) {
            return Err(SopError::Invalid(format!(
                "{}: the run used {saved} ranks of batch {} (global batch {global}, accumulate {accum}); \
                 {ranks} ranks cannot split {global} images into equal batches, so the resume is refused \
                 (resume with a rank count that divides {})",
                cfg.run.out.display(),
                cfg.data.batch_size,
                global / accum
            )));
        }
        let b = global / (ranks * accum);
        eprintln!(
            "resuming a run of {saved} ranks on {ranks}: batch {} per rank becomes {b}, the global batch stays {global}",
            cfg.data.batch_size
        );
        cfg.data.batch_size = b;
    }
    if !d.is_distributed() {
        return Ok(());
    }
    let seed = u64::from_le_bytes(d.broadcast(cfg.run.seed.to_le_bytes().to_vec())?[..8].try_into().expect("8 bytes"));
    cfg.run.seed = seed;
    let c = cfg;
    d.check_same(
        "batch size, accumulation, steps and epochs",
        &[
            c.data.batch_size as u64,
            c.optim.accumulate as u64,
            c.optim.steps.map_or(u64::MAX, |s| s as u64),
            c.optim.epochs as u64,
        ],
    )?;
    if d.is_root() {
        eprintln!(
            "data parallel: {ranks} ranks of batch {} (global batch {} x accumulate {})",
            c.data.batch_size,
            ranks * c.data.batch_size,
            c.optim.accumulate
        );
    }
    Ok(())
}

/// Every rank's gradients (the flat buffer) and loss words (`checks`, one tensor per
/// micro-batch) replaced by their mean over the ranks: the sum a batch of every rank's
/// images would give, since each rank's losses are means over its own images.
pub(super) fn mean_over_ranks(gpu: &Gpu, grads: &Tensor, checks: &[Tensor]) -> Result<()> {
    let d = dist::world();
    if !d.is_distributed() {
        return Ok(());
    }
    let mut all: Vec<&Tensor> = vec![grads];
    all.extend(checks);
    device::mean_in_place(gpu, d, &all)
}

impl Trainer<'_> {
    /// The teacher rows every rank leaves for the banks, in rank order (the order one rank
    /// with the whole global micro-batch has them in).
    pub(super) fn gather_bank_rows(&self, rows: BankRows) -> Result<BankRows> {
        let d = dist::world();
        if !d.is_distributed() {
            return Ok(rows);
        }
        Ok(BankRows {
            cls: device::all_gather_rows(self.gpu, d, &rows.cls)?,
            patch: device::all_gather_rows(self.gpu, d, &rows.patch)?,
            sources: device::all_gather_i64(d, &rows.sources)?,
        })
    }

    /// The tensors every rank must hold bit for bit: student, teacher, AdamW's moments and
    /// both banks.
    fn replicated(&self) -> Vec<&Tensor> {
        let [m, v] = self.opt.moments_flat();
        vec![&self.model.student.flat, &self.model.teacher.flat, m, v, &self.cls_bank.vectors, &self.patch_bank.vectors]
    }

    /// Rank 0's parameters, optimiser state and banks on every rank (at the start and on
    /// resume).
    pub(super) fn broadcast_state(&mut self) -> Result<()> {
        let d = dist::world();
        if !d.is_distributed() {
            return Ok(());
        }
        if d.is_root() {
            let n = self.model.student.flat.numel();
            eprintln!(
                "data parallel: {n} gradient values ({:.1} MB in f32) averaged per step, in {} buckets",
                4.0 * n as f64 / 1e6,
                n.div_ceil(device::BUCKET)
            );
        }
        device::broadcast_tensors(self.gpu, d, &self.replicated())?;
        let mut host: Vec<i64> = vec![self.cls_bank.ptr as i64, self.patch_bank.ptr as i64, self.opt.step as i64];
        host.extend(&self.cls_bank.sources);
        host.extend(&self.patch_bank.sources);
        let root: Vec<i64> = bytemuck::pod_collect_to_vec(&d.broadcast(bytemuck::cast_slice(&host).to_vec())?);
        let (nc, np) = (self.cls_bank.sources.len(), self.patch_bank.sources.len());
        if root.len() != 3 + nc + np {
            return Err(SopError::Invalid("rank 0's banks are not the size of this rank's".into()));
        }
        (self.cls_bank.ptr, self.patch_bank.ptr, self.opt.step) = (root[0] as usize, root[1] as usize, root[2] as u32);
        self.cls_bank.sources = root[3..3 + nc].to_vec();
        self.patch_bank.sources = root[3 + nc..].to_vec();
        self.verify_same(None)
    }

    /// Stops with an error naming `step` (done steps) if the ranks' parameters, optimiser
    /// state or banks differ.
    pub(super) fn verify_same(&self, step: Option<usize>) -> Result<()> {
        let d = dist::world();
        if !d.is_distributed() {
            return Ok(());
        }
        let mut words = vec![device::checksum(self.gpu, &self.replicated())?];
        words.extend([self.cls_bank.ptr as u64, self.patch_bank.ptr as u64, self.opt.step as u64]);
        let what = match step {
            Some(s) => {
                format!("parameters, optimiser state or banks after step {s} (checksum, bank pointers, AdamW step)")
            }
            None => "parameters, optimiser state or banks at the start".to_string(),
        };
        d.check_same(&what, &words)
    }
}
