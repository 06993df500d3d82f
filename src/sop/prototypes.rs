//! Self-organizing prototypes for one task (docs/METHOD.md "Building the prototypes").
//!
//! Given the bank and this task's draws (a permutation whose first P entries are the
//! anchors, and when E > 1 the indices of the P/2 anchors kept):
//!   sims (P, N−P) = anchors · poolᵀ            (matmul on the GPU)
//!   SEs = top-(E−1) of each row                (topk on the GPU; ties → lower pool position)
//!   members of prototype p = [anchor_p, SE_p,1 … SE_p,E−1], weights [1 − s, sim_p,1 …]
//!   D (M, W) = bank rows of the kept prototypes' members, M = P'·E (prototype-major)
//!   Y (M, P'): Y[r, p(r)] = w_r, Y[r, q≠p(r)] = (1 − w_r)/(P' − 1), each row divided by its sum.

use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::gather::gather_rows;
use crate::ops::matmul::Matmul;
use crate::ops::topk::topk_forward;
use crate::sop::bank::Bank;

/// Per-bank prototype parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrototypeConfig {
    /// P: anchors drawn per task.
    pub anchors: usize,
    /// E: members per prototype, anchor included.
    pub experts: usize,
    /// T: independent tasks per step.
    pub tasks: usize,
}

pub struct Prototypes {
    /// (M, W) member vectors, prototype-major.
    pub members: Tensor,
    /// (M, P') row-stochastic vote matrix.
    pub votes: Tensor,
    /// Bank row of each member (M), for pictures.
    pub member_rows: Vec<u32>,
    /// Similarities of each anchor's SEs (P, E−1), before subsampling (for the 1/CV option).
    pub se_sims: Vec<f32>,
    /// Number of prototypes kept (P').
    pub kept: usize,
}

/// The similarities and SE choices of all P anchors (before subsampling).
pub struct Neighbours {
    /// (P, E−1) bank rows of each anchor's SEs.
    pub rows: Vec<u32>,
    /// (P, E−1) their similarities to the anchor.
    pub sims: Vec<f32>,
}

/// Top-(E−1) pool neighbours of each anchor, computed on the GPU.
pub fn neighbours(gpu: &Gpu, bank: &Bank, perm: &[u32], cfg: &PrototypeConfig) -> Result<Neighbours> {
    let (p, e, n) = (cfg.anchors, cfg.experts, bank.len());
    if e <= 1 {
        return Ok(Neighbours { rows: Vec::new(), sims: Vec::new() });
    }
    if n < p + e - 1 {
        return Err(SopError::Invalid(format!("bank of {n} rows cannot give {p} anchors {} SEs each", e - 1)));
    }
    let anchors = gpu.upload_u32(&[p], &perm[..p])?;
    let pool = gpu.upload_u32(&[n - p], &perm[p..])?;
    let a = gather_rows(gpu, &bank.vectors, &anchors)?;
    let pool_vecs = gather_rows(gpu, &bank.vectors, &pool)?;
    let sims = Matmul::new(&a, &pool_vecs).trans_b().run(gpu)?; // (P, N−P)
    drop(pool_vecs);
    let (vals, idx) = topk_forward(gpu, &sims, e - 1)?;
    let vals = gpu.read_f32(&vals)?;
    let idx = gpu.read_u32(&idx)?;
    let rows = idx.iter().map(|&i| perm[p + i as usize]).collect();
    Ok(Neighbours { rows, sims: vals })
}

/// Build D and Y for one task. When E > 1, `choose_keep` sees every anchor's SEs and returns
/// the anchors kept (indices in 0..P); when E = 1 all P anchors are kept.
pub fn build(
    gpu: &Gpu,
    bank: &Bank,
    perm: &[u32],
    cfg: &PrototypeConfig,
    smoothing: f32,
    choose_keep: impl FnOnce(&Neighbours) -> Vec<u32>,
) -> Result<Prototypes> {
    let (p, e) = (cfg.anchors, cfg.experts);
    if perm.len() != bank.len() || p < 2 || p > bank.len() {
        return Err(SopError::Invalid(format!("prototypes: permutation of {} for a bank of {}, {p} anchors", perm.len(), bank.len())));
    }
    let nb = neighbours(gpu, bank, perm, cfg)?;
    let kept: Vec<usize> = if e > 1 { choose_keep(&nb).into_iter().map(|k| k as usize).collect() } else { (0..p).collect() };
    if kept.len() < 2 || kept.iter().any(|&k| k >= p) {
        return Err(SopError::Invalid(format!("prototypes: keep list {kept:?} for {p} anchors")));
    }
    let pk = kept.len();
    let m = pk * e;
    let mut member_rows = Vec::with_capacity(m);
    let mut weights = Vec::with_capacity(m);
    for &a in &kept {
        member_rows.push(perm[a]);
        weights.push(1.0 - smoothing as f64);
        for j in 0..e - 1 {
            member_rows.push(nb.rows[a * (e - 1) + j]);
            weights.push(nb.sims[a * (e - 1) + j] as f64);
        }
    }
    let mut y = vec![0f32; m * pk];
    for r in 0..m {
        let (own, w) = (r / e, weights[r]);
        let other = (1.0 - w) / (pk as f64 - 1.0);
        let sum = w + other * (pk as f64 - 1.0);
        for q in 0..pk {
            y[r * pk + q] = ((if q == own { w } else { other }) / sum) as f32;
        }
    }
    let rows_t = gpu.upload_u32(&[m], &member_rows)?;
    let members = gather_rows(gpu, &bank.vectors, &rows_t)?;
    let votes = gpu.upload_f32(&[m, pk], &y)?;
    Ok(Prototypes { members, votes, member_rows, se_sims: nb.sims, kept: pk })
}

/// How the P/2 kept anchors are drawn when E > 1 (docs/METHOD.md "Building the prototypes",
/// step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorSampling {
    /// Uniform without replacement (the default; what the authors' code does in effect).
    Uniform,
    /// Weight 1/CV of each anchor's SE similarities, CV = std/mean·(1 + 1/(4n)), n = pool size.
    InverseCv,
}

/// Draw P/2 anchors of P without replacement (successive weighted draws, like
/// torch.multinomial without replacement).
pub fn sample_keep(nb: &Neighbours, p: usize, experts: usize, pool: usize, how: AnchorSampling, rng: &mut impl rand::Rng) -> Vec<u32> {
    let k = experts - 1;
    let mut w: Vec<f64> = (0..p)
        .map(|a| match how {
            AnchorSampling::Uniform => 1.0,
            AnchorSampling::InverseCv => {
                let s = &nb.sims[a * k..(a + 1) * k];
                let mean = s.iter().map(|&v| v as f64).sum::<f64>() / k as f64;
                let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (k as f64 - 1.0).max(1.0);
                let cv = var.sqrt() / mean * (1.0 + 1.0 / (4.0 * pool as f64));
                if cv.is_finite() && cv > 0.0 { 1.0 / cv } else { 0.0 }
            }
        })
        .collect();
    if w.iter().all(|&x| x <= 0.0) {
        w.iter_mut().for_each(|x| *x = 1.0);
    }
    let mut keep = Vec::with_capacity(p / 2);
    for _ in 0..p / 2 {
        let total: f64 = w.iter().sum();
        let mut r = rng.random::<f64>() * total;
        let mut pick = w.iter().rposition(|&x| x > 0.0).unwrap_or(0);
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 && r < x {
                pick = i;
                break;
            }
            r -= x;
        }
        keep.push(pick as u32);
        w[pick] = 0.0;
    }
    keep
}
