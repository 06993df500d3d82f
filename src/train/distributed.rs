//! Data-parallel training in the run (`crate::dist`; README "Several GPUs"): what each rank
//! does differently and the points where the ranks exchange.
//!
//! - start: the ranks agree on the configuration (their per-rank batch, accumulation, seed
//!   and rank count), a resume with another rank count keeps the global batch (reshards) or
//!   is refused, and rank 0 broadcasts parameters, optimiser state and banks;
//! - each step: the batch means the step needs now (iBOT's centres, the [CLS] centring:
//!   `mean_now`) and KoLeo's rows (`gather_views`), the gradients averaged over ranks,
//!   bucket by bucket as the last backward finishes them (`overlapped_mean`,
//!   `slot_written`), then the loss words (`mean_over_ranks`),
//!   and the banks take every rank's teacher rows in rank order (`gather_bank_rows`);
//! - every `CHECK_EVERY` steps and at each checkpoint the ranks compare a checksum of
//!   parameters and banks (`verify_same`);
//! - rank 0 alone writes the run folder (`save_folder`), metrics and pictures, and runs the
//!   k-NN.

use std::path::{Path, PathBuf};

use crate::dist::device::{self, OverlappedMean};
use crate::dist::{self, layout::Shard};
use crate::error::{Result, SopError};
use crate::gpu::{FlatLayout, Gpu, Tensor};

use super::config::TrainConfig;
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

/// Before any work: the ranks' configurations agree (rank 0's seed is everyone's), the banks
/// hold a step of every rank's rows, and a resumed run of `saved_ranks` ranks keeps its
/// global batch: its per-rank batch becomes global / (ranks · accumulate), or the resume is
/// refused.
pub(super) fn agree(cfg: &mut TrainConfig, saved_ranks: Option<usize>) -> Result<()> {
    let d = dist::world();
    let ranks = d.size();
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
        dist::eprint_line(&format!(
            "resuming a run of {saved} ranks on {ranks}: batch {} per rank becomes {b}, the global batch stays {global}",
            cfg.data.batch_size
        ));
        cfg.data.batch_size = b;
    }
    // `validate` checked one rank's rows per step; the banks take every rank's.
    let rows = ranks * cfg.data.batch_size * cfg.optim.accumulate;
    let smallest = cfg.sop.cls_bank_size.min(cfg.sop.patch_bank_size);
    if ranks > 1 && rows > smallest {
        return Err(SopError::Invalid(format!(
            "{ranks} ranks x batch {} x accumulate {} write {rows} rows into each bank per step, more than the \
             banks hold (sop.cls_bank_size {}, sop.patch_bank_size {}): use fewer ranks, a smaller batch or \
             larger banks",
            cfg.data.batch_size, cfg.optim.accumulate, cfg.sop.cls_bank_size, cfg.sop.patch_bank_size
        )));
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

/// Set to 0 to start the gradients' exchange after the whole backward (the comparison the
/// tests make: the bits are the same), rather than bucket by bucket during it.
pub const OVERLAP_ENV: &str = "SOP_GRAD_OVERLAP";

/// The gradients' mean over ranks started during the last micro-batch's backward, bucket by
/// bucket (`device::OverlappedMean`); None with one rank or `SOP_GRAD_OVERLAP=0`.
pub(super) fn overlapped_mean(grads: &Tensor, layout: &FlatLayout) -> Result<Option<OverlappedMean>> {
    if !dist::world().is_distributed() || !overlap_wanted(std::env::var(OVERLAP_ENV).ok().as_deref())? {
        return Ok(None);
    }
    Ok(Some(OverlappedMean::new(grads, layout, device::bucket_elements()?)?))
}

/// `SOP_GRAD_OVERLAP`: unset or "1" overlaps, "0" does not; any other value is refused
/// rather than read as either.
fn overlap_wanted(value: Option<&str>) -> Result<bool> {
    match value.map(str::trim) {
        None | Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(v) => Err(SopError::Invalid(format!("{OVERLAP_ENV}={v:?}: expected 0 or 1"))),
    }
}

/// Parameter `i`'s gradient slot is recorded: the buckets it completes start their exchange.
pub(super) fn slot_written(gpu: &Gpu, overlapped: Option<&mut OverlappedMean>, i: usize) -> Result<()> {
    match overlapped {
        Some(o) => o.slot_written(gpu, dist::world(), i),
        None => Ok(()),
    }
}

/// Every rank's gradients (the flat buffer; already under way when `overlapped`) and loss
/// words (`checks`, one tensor per micro-batch) replaced by their mean over the ranks: the
/// sum a batch of every rank's images would give, since each rank's losses are means over
/// its own images.
pub(super) fn mean_over_ranks(
    gpu: &Gpu,
    grads: &Tensor,
    overlapped: Option<OverlappedMean>,
    checks: &[Tensor],
) -> Result<()> {
    let d = dist::world();
    if !d.is_distributed() {
        return Ok(());
    }
    match overlapped {
        Some(o) => o.finish(gpu, d)?,
        None => {
            // The device's backward is compute, not communication.
            gpu.sync()?;
            device::mean_in_place(gpu, d, &[grads])?
        }
    }
    mean_now(gpu, &checks.iter().collect::<Vec<_>>())
}

/// Each tensor replaced by its mean over the ranks now (the host waits for it): a batch mean
/// this step still needs (iBOT's centres, the [CLS] centring), the global batch's since every
/// rank's is over as many rows. Nothing with one rank.
pub(super) fn mean_now(gpu: &Gpu, tensors: &[&Tensor]) -> Result<()> {
    let d = dist::world();
    if !d.is_distributed() {
        return Ok(());
    }
    device::mean_in_place(gpu, d, tensors)
}

/// t (V·B, W), this rank's rows of `views` views, as the global batch's (V·R·B, W): view
/// v's rows of rank 0, of rank 1, …, then view v + 1's (the rows one rank of the whole
/// batch has). `t` itself with one rank.
pub(super) fn gather_views(gpu: &Gpu, t: &Tensor, views: usize) -> Result<Tensor> {
    let d = dist::world();
    if !d.is_distributed() {
        return Ok(t.clone());
    }
    let all = device::all_gather_rows(gpu, d, t)?;
    let b = t.shape[0] / views;
    let starts: Vec<usize> = (0..views).flat_map(|v| (0..d.size()).map(move |r| (r * views + v) * b)).collect();
    let parts = starts.iter().map(|&at| gpu.slice_rows(&all, at, b)).collect::<Result<Vec<_>>>()?;
    gpu.concat_rows(&parts.iter().collect::<Vec<_>>())
}

/// This rank's rows of `gather_views`' layout (V·R·B, W): (V·B, W), view-major.
pub(super) fn own_views(gpu: &Gpu, t: &Tensor, views: usize) -> Result<Tensor> {
    let d = dist::world();
    if !d.is_distributed() {
        return Ok(t.clone());
    }
    let b = t.shape[0] / (views * d.size());
    let parts = (0..views).map(|v| gpu.slice_rows(t, (v * d.size() + d.rank()) * b, b)).collect::<Result<Vec<_>>>()?;
    gpu.concat_rows(&parts.iter().collect::<Vec<_>>())
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

    /// The tensors every rank must hold bit for bit: student, teacher, AdamW's moments, both
    /// banks and iBOT's centres.
    fn replicated(&self) -> Vec<&Tensor> {
        let [m, v] = self.opt.moments_flat();
        let mut all = vec![
            &self.model.student.flat,
            &self.model.teacher.flat,
            m,
            v,
            &self.cls_bank.vectors,
            &self.patch_bank.vectors,
        ];
        all.extend(self.centers.iter().flat_map(|c| [&c.cls, &c.patch]));
        all
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
                n.div_ceil(device::bucket_elements()?)
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

#[cfg(test)]
mod tests {
    use super::overlap_wanted;

    #[test]
    fn grad_overlap_takes_0_or_1_and_refuses_anything_else() {
        assert!(overlap_wanted(None).unwrap());
        assert!(overlap_wanted(Some("1")).unwrap());
        assert!(!overlap_wanted(Some(" 0 ")).unwrap());
        let e = overlap_wanted(Some("off")).unwrap_err().to_string();
        assert!(e.contains("SOP_GRAD_OVERLAP=\"off\"") && e.contains("0 or 1"), "{e}");
    }
}
