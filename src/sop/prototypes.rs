//! Self-organizing prototypes for one task (docs/METHOD.md "Building the prototypes").
//! Shape letters as in src/lib.rs: N_b bank rows, P anchors, E members per prototype, P′
//! prototypes kept, M = P′·E member rows, W bank width; j indexes prototypes, r member rows.
//!
//! Given the bank and this task's draws (a permutation whose first P entries are the
//! anchors, and when E > 1 the indices of the P/2 anchors kept), every step runs on the
//! device; the host uploads the permutation and the keep list and waits for nothing:
//!   sims (P, N_b−P) = anchors · poolᵀ        gather_rows, matmul
//!   SEs = top-(E−1) of each row              topk (values and pool positions stay on the
//!                                            device; ties → lower pool position)
//!   member rows (M) and weights (M)          prototypes.wgsl: prototype_members
//!     prototype j = [anchor, SE_1 … SE_E−1] of kept anchor keep[j], weights [1 − s, sim_1 …]
//!   Y (M, P′), f32                           prototypes.wgsl: prototype_votes
//!     Y[r, j(r)] = w_r, Y[r, j′≠j(r)] = (1 − w_r)/(P′ − 1), each row divided by its sum
//!   D (M, W), M = P′·E, prototype-major      gather_rows of the member rows
//! The keep list comes from the task's RNG (`sample_keep`): the default
//! `AnchorSampling::Uniform` draws it on the host without looking at the similarities;
//! `AnchorSampling::InverseCv` uploads the same uniforms and draws on the device with the
//! 1/CV weights of the SE similarities (`ops::anchor_keep`): neither reads anything back.
//! `Neighbours::sims_host`, `Neighbours::rows_host` and `Prototypes::member_rows`
//! give the rest to whoever asks (`sop prototypes`, the bench's validation), at a blocking
//! read each.

use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::anchor_keep::anchor_keep_inverse_cv;
use crate::ops::gather::gather_rows;
use crate::ops::matmul::Matmul;
use crate::ops::prototypes::prototype_members_votes;
use crate::ops::topk::topk_forward;
use crate::sop::bank::Bank;

/// Per-bank prototype parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrototypeConfig {
    /// P: anchors drawn per task.
    pub anchors: usize,
    /// E: members per prototype, anchor included.
    pub experts: usize,
    /// Independent tasks per step (`tasks`; no letter, T is tokens).
    pub tasks: usize,
}

pub struct Prototypes {
    /// (M, W) member vectors, prototype-major.
    pub members: Tensor,
    /// (M, P′) row-stochastic vote matrix.
    pub votes: Tensor,
    /// (M) u32 bank row of each member, on the device (`sop prototypes` reads it back).
    pub member_rows: Tensor,
    /// Every anchor's SEs, before subsampling (`se_sims_host` reads their similarities).
    pub neighbours: Neighbours,
    /// Number of prototypes kept (P′).
    pub kept: usize,
}

impl Prototypes {
    /// (P, E−1) similarities of each anchor's SEs, before subsampling: a blocking read.
    pub fn se_sims_host(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.neighbours.sims_host(gpu)
    }
}

/// The permutation and every anchor's SEs (before subsampling), on the device.
pub struct Neighbours {
    /// (N_b) u32 the task's permutation: anchors perm[..P], pool perm[P..].
    pub perm: Tensor,
    /// (P, E−1) f32 similarities of each anchor's SEs to it, nearest first; None when E = 1.
    pub sims: Option<Tensor>,
    /// (P, E−1) u32 pool positions of the SEs (bank row perm[P + i]); None when E = 1.
    pub pool_idx: Option<Tensor>,
    /// P.
    pub anchors: usize,
}

impl Neighbours {
    /// (P, E−1) SE similarities on the host (empty when E = 1): a blocking read.
    pub fn sims_host(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.sims.as_ref().map_or(Ok(Vec::new()), |t| gpu.read_f32(t))
    }

    /// (P, E−1) bank rows of the SEs on the host (empty when E = 1): two blocking reads.
    pub fn rows_host(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        let Some(idx) = &self.pool_idx else { return Ok(Vec::new()) };
        let perm = gpu.read_u32(&self.perm)?;
        Ok(gpu.read_u32(idx)?.iter().map(|&i| perm[self.anchors + i as usize]).collect())
    }
}

/// Top-(E−1) pool neighbours of each anchor, computed and kept on the GPU (no blocking read).
pub fn neighbours(gpu: &Gpu, bank: &Bank, perm: &[u32], cfg: &PrototypeConfig) -> Result<Neighbours> {
    let (p, e, n) = (cfg.anchors, cfg.experts, bank.len());
    if perm.len() != n || p < 2 || p > n {
        let got = perm.len();
        return Err(SopError::Invalid(format!("prototypes: permutation of {got} for a bank of {n}, {p} anchors")));
    }
    let perm_t = gpu.upload_u32(&[n], perm)?;
    if e <= 1 {
        return Ok(Neighbours { perm: perm_t, sims: None, pool_idx: None, anchors: p });
    }
    if n < p + e - 1 {
        return Err(SopError::Invalid(format!("bank of {n} rows cannot give {p} anchors {} SEs each", e - 1)));
    }
    let anchors = gpu.slice_rows(&perm_t, 0, p)?;
    let pool = gpu.slice_rows(&perm_t, p, n - p)?;
    let a = gather_rows(gpu, &bank.vectors, &anchors)?;
    let pool_vecs = gather_rows(gpu, &bank.vectors, &pool)?;
    let sims = Matmul::new(&a, &pool_vecs).trans_b().run(gpu)?; // (P, N_b−P)
    drop(pool_vecs);
    let (vals, idx) = topk_forward(gpu, &sims, e - 1)?;
    Ok(Neighbours { perm: perm_t, sims: Some(vals), pool_idx: Some(idx), anchors: p })
}

/// Build D and Y for one task without a blocking read of its own. When E > 1,
/// `choose_keep` sees every anchor's SEs (on the device) and returns the anchors kept
/// (indices in 0..P; a listed keep is checked, one on the device is trusted); when E = 1 all
/// P anchors are kept.
pub fn build(
    gpu: &Gpu,
    bank: &Bank,
    perm: &[u32],
    cfg: &PrototypeConfig,
    smoothing: f32,
    choose_keep: impl FnOnce(&Neighbours) -> Result<Keep>,
) -> Result<Prototypes> {
    let (p, e) = (cfg.anchors, cfg.experts);
    let nb = neighbours(gpu, bank, perm, cfg)?;
    let kept = if e > 1 { choose_keep(&nb)? } else { Keep::Listed((0..p as u32).collect()) };
    let keep = match kept {
        Keep::Listed(kept) => {
            if kept.len() < 2 || kept.iter().any(|&k| k as usize >= p) {
                return Err(SopError::Invalid(format!("prototypes: keep list {kept:?} for {p} anchors")));
            }
            gpu.upload_u32(&[kept.len()], &kept)?
        }
        Keep::OnDevice(t) => t,
    };
    let topk = nb.sims.as_ref().zip(nb.pool_idx.as_ref());
    let out = prototype_members_votes(gpu, &nb.perm, topk, &keep, p, e, smoothing)?;
    let members = gather_rows(gpu, &bank.vectors, &out.rows)?;
    Ok(Prototypes { members, votes: out.votes, member_rows: out.rows, neighbours: nb, kept: keep.numel() })
}

/// How the P/2 kept anchors are drawn when E > 1 (docs/METHOD.md "Building the prototypes",
/// step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorSampling {
    /// Uniform without replacement (the default; what the authors' code does in effect).
    Uniform,
    /// Weight 1/CV of each anchor's SE similarities, CV = std/mean·(1 + 1/(4n)), n = N_b − P,
    /// computed and drawn on the device (`ops::anchor_keep`): nothing is read back.
    InverseCv,
}

/// The anchors a task keeps: a list drawn on the host, or one a kernel left on the device.
pub enum Keep {
    Listed(Vec<u32>),
    /// (P′) u32, each < P (the kernel that wrote it guarantees it).
    OnDevice(Tensor),
}

/// Draw P/2 anchors of P without replacement (successive weighted draws, like
/// torch.multinomial without replacement) from P/2 uniforms of `rng`, drawn the same way
/// whatever the rule. Uniform walks them on the host
/// (`sop_reference::prototypes::draw_without_replacement`); InverseCv uploads them and draws
/// on the device with the 1/CV weights (`ops::anchor_keep`, the f32 version of
/// `sop_reference::prototypes::inverse_cv_weights` and the same walk). Neither waits.
pub fn sample_keep(
    gpu: &Gpu,
    nb: &Neighbours,
    p: usize,
    pool: usize,
    how: AnchorSampling,
    rng: &mut impl rand::Rng,
) -> Result<Keep> {
    let draws: Vec<f64> = (0..p / 2).map(|_| rng.random::<f64>()).collect();
    match (how, &nb.sims) {
        (AnchorSampling::InverseCv, Some(sims)) => {
            let draws: Vec<f32> = draws.iter().map(|&u| u as f32).collect();
            let draws = gpu.upload_f32(&[draws.len()], &draws)?;
            Ok(Keep::OnDevice(anchor_keep_inverse_cv(gpu, sims, &draws, pool)?.keep))
        }
        _ => Ok(Keep::Listed(sop_reference::prototypes::draw_without_replacement(vec![1.0; p], &draws))),
    }
}
