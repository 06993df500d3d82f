//! Tensors through the ranks' exchanges (`Dist`): the gradients' mean in buckets, bank rows
//! all-gathered in rank order, rank 0's tensors broadcast, and a checksum that shows whether
//! the ranks still hold the same bits. With one rank each is the identity and reads nothing.

use crate::error::Result;
use crate::gpu::{Gpu, Tensor};

use super::Dist;

/// Elements of one exchange bucket of the gradients' mean (16 MiB of f32; a multiple of
/// `VIEW_ALIGN`): ViT-S/16's 22 M parameters make 6 buckets.
pub const BUCKET: usize = 1 << 22;

/// `t` (a whole buffer) as views of at most `BUCKET` elements, last first: the gradients of
/// the last parameters, which the backward finishes first, are exchanged first (DDP's order).
fn buckets(t: &Tensor) -> Result<Vec<Tensor>> {
    let n = t.numel();
    if n <= BUCKET || t.view_slot().is_some() {
        return Ok(vec![t.clone()]);
    }
    let flat = t.reshape(&[n])?;
    (0..n.div_ceil(BUCKET))
        .rev()
        .map(|k| {
            let len = BUCKET.min(n - k * BUCKET);
            flat.view(k * BUCKET, &[len], len)
        })
        .collect()
}

/// Replaces each f32 tensor by its element-wise mean over the ranks (summed in rank order, so
/// every rank gets the same bits). Bucket by bucket: read back, handed to the MPI thread,
/// and the next bucket read while it is exchanged; then every mean written back in order.
pub fn mean_in_place(gpu: &Gpu, dist: &Dist, tensors: &[&Tensor]) -> Result<()> {
    if !dist.is_distributed() {
        return Ok(());
    }
    let mut started = Vec::new();
    for t in tensors {
        for piece in buckets(t)? {
            let host = gpu.read_f32(&piece)?;
            started.push((piece, dist.start_mean(host)));
        }
    }
    for (piece, p) in started {
        let mean = dist.wait(p)?;
        gpu.write_f32(&piece, &mean)?;
    }
    Ok(())
}

/// Every rank's rows of `t` (R_r, …) stacked in rank order (ΣR_r, …).
pub fn all_gather_rows(gpu: &Gpu, dist: &Dist, t: &Tensor) -> Result<Tensor> {
    if !dist.is_distributed() {
        return Ok(t.clone());
    }
    let parts = dist.all_gather(bytemuck::cast_slice(&gpu.read_f32(t)?).to_vec())?;
    let all: Vec<f32> = parts.iter().flat_map(|p| bytemuck::pod_collect_to_vec::<u8, f32>(p)).collect();
    let row: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = all.len() / row.max(1);
    gpu.upload_f32(&shape, &all)
}

/// Every rank's `values` concatenated in rank order.
pub fn all_gather_i64(dist: &Dist, values: &[i64]) -> Result<Vec<i64>> {
    let parts = dist.all_gather(bytemuck::cast_slice(values).to_vec())?;
    Ok(parts.iter().flat_map(|p| bytemuck::pod_collect_to_vec::<u8, i64>(p)).collect())
}

/// Rank 0's contents of each f32 tensor written into every rank's.
pub fn broadcast_tensors(gpu: &Gpu, dist: &Dist, tensors: &[&Tensor]) -> Result<()> {
    if !dist.is_distributed() {
        return Ok(());
    }
    for t in tensors {
        let mine = if dist.is_root() { bytemuck::cast_slice(&gpu.read_f32(t)?).to_vec() } else { Vec::new() };
        let root = dist.broadcast(mine)?;
        if !dist.is_root() {
            gpu.write_f32(t, &bytemuck::pod_collect_to_vec::<u8, f32>(&root))?;
        }
    }
    Ok(())
}

/// FNV-1a (64 bits) of the tensors' bytes, in order: equal on two ranks only if (barring a
/// collision) every bit is.
pub fn checksum(gpu: &Gpu, tensors: &[&Tensor]) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tensors {
        for b in bytemuck::cast_slice::<f32, u8>(&gpu.read_f32(t)?) {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}
