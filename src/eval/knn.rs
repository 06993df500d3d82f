//! Weighted k-NN classification (docs/METHOD.md "Evaluation", DINO's protocol): cosine
//! similarity of L2-normalised features, the k most similar training images vote for their
//! label with weight exp(sim / T); top-1 and top-5 accuracy. Similarities are one GPU
//! matmul per chunk of queries; the k largest per row are selected on the host (k may
//! exceed the top-k kernel's 16).

use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::ops::matmul::Matmul;

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
    pub k: usize,
    pub n_train: usize,
    pub n_val: usize,
}

/// Queries per similarity matmul (bounds the host copy to chunk × n_train floats).
const CHUNK: usize = 256;

/// k >= 1 neighbours vote with weights exp(sim / T): T must be positive and finite (T = 0
/// would make every weight infinite and the vote meaningless).
pub fn check_params(k: usize, temperature: f32) -> Result<()> {
    if k == 0 || !(temperature > 0.0 && temperature.is_finite()) {
        return Err(SopError::Invalid(format!(
            "k-NN needs k >= 1 and a positive, finite temperature (got k = {k}, temperature = {temperature})"
        )));
    }
    Ok(())
}

/// train (n_train, D) and val (n_val, D) must already be L2-normalised.
#[allow(clippy::too_many_arguments)]
pub fn knn_classify(
    gpu: &Gpu,
    train: &[f32],
    train_labels: &[u32],
    val: &[f32],
    val_labels: &[u32],
    dim: usize,
    k: usize,
    temperature: f32,
) -> Result<KnnResult> {
    let (nt, nv) = (train_labels.len(), val_labels.len());
    if nt == 0 || nv == 0 || train.len() != nt * dim || val.len() != nv * dim {
        return Err(SopError::Invalid(format!(
            "k-NN needs labelled features: {nt} train, {nv} val rows of width {dim}"
        )));
    }
    check_params(k, temperature)?;
    let k = k.clamp(1, nt);
    let classes = train_labels.iter().chain(val_labels).copied().max().unwrap_or(0) as usize + 1;
    // The training features go up in blocks that fit one storage binding.
    let max_rows = ((gpu.limits.max_storage_buffer_binding_size as usize / 4) / dim.max(1)).clamp(1, nt);
    let blocks: Vec<(usize, crate::gpu::Tensor)> = (0..nt)
        .step_by(max_rows)
        .map(|at| {
            let rows = max_rows.min(nt - at);
            Ok((at, gpu.upload_f32(&[rows, dim], &train[at * dim..(at + rows) * dim])?))
        })
        .collect::<Result<_>>()?;
    let (mut top1, mut top5) = (0usize, 0usize);
    let chunk = CHUNK.min((gpu.limits.max_storage_buffer_binding_size as usize / 4) / max_rows.max(1)).max(1);
    for start in (0..nv).step_by(chunk) {
        let n = chunk.min(nv - start);
        let q = gpu.upload_f32(&[n, dim], &val[start * dim..(start + n) * dim])?;
        let mut sims = vec![0f32; n * nt];
        for (at, block) in &blocks {
            let rows = block.shape[0];
            let part = gpu.read_f32(&Matmul::new(&q, block).trans_b().run(gpu)?)?;
            for r in 0..n {
                sims[r * nt + at..r * nt + at + rows].copy_from_slice(&part[r * rows..(r + 1) * rows]);
            }
        }
        for r in 0..n {
            let row = &sims[r * nt..(r + 1) * nt];
            let mut order: Vec<usize> = (0..nt).collect();
            // k largest, ties to the lower index.
            order.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mut votes = vec![0f64; classes];
            for &i in &order[..k] {
                votes[train_labels[i] as usize] += (row[i] as f64 / temperature as f64).exp();
            }
            let mut ranked: Vec<usize> = (0..classes).collect();
            ranked.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]).then(a.cmp(&b)));
            let truth = val_labels[start + r] as usize;
            top1 += (ranked[0] == truth) as usize;
            top5 += ranked.iter().take(5).any(|&c| c == truth) as usize;
        }
    }
    Ok(KnnResult {
        top1: 100.0 * top1 as f64 / nv as f64,
        top5: 100.0 * top5 as f64 / nv as f64,
        k,
        n_train: nt,
        n_val: nv,
    })
}

/// The same protocol on the host in f64: the reference for tests and raw-pixel baselines.
pub fn knn_classify_cpu(
    train: &[f32],
    train_labels: &[u32],
    val: &[f32],
    val_labels: &[u32],
    dim: usize,
    k: usize,
    temperature: f32,
) -> KnnResult {
    let (nt, nv) = (train_labels.len(), val_labels.len());
    let k = k.clamp(1, nt.max(1));
    let classes = train_labels.iter().chain(val_labels).copied().max().unwrap_or(0) as usize + 1;
    let (mut top1, mut top5) = (0usize, 0usize);
    for r in 0..nv {
        let q = &val[r * dim..(r + 1) * dim];
        let row: Vec<f64> = (0..nt)
            .map(|i| q.iter().zip(&train[i * dim..(i + 1) * dim]).map(|(a, b)| *a as f64 * *b as f64).sum())
            .collect();
        let mut order: Vec<usize> = (0..nt).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut votes = vec![0f64; classes];
        for &i in &order[..k] {
            votes[train_labels[i] as usize] += (row[i] / temperature as f64).exp();
        }
        let mut ranked: Vec<usize> = (0..classes).collect();
        ranked.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]).then(a.cmp(&b)));
        top1 += (ranked[0] == val_labels[r] as usize) as usize;
        top5 += ranked.iter().take(5).any(|&c| c == val_labels[r] as usize) as usize;
    }
    KnnResult {
        top1: 100.0 * top1 as f64 / nv.max(1) as f64,
        top5: 100.0 * top5 as f64 / nv.max(1) as f64,
        k,
        n_train: nt,
        n_val: nv,
    }
}
