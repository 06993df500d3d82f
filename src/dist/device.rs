//! Tensors through the ranks' exchanges (`Dist`): the gradients' mean in buckets (after the
//! backward, `mean_in_place`, or started during it, `OverlappedMean`), bank rows
//! all-gathered in rank order, rank 0's tensors broadcast, and a checksum that shows whether
//! the ranks still hold the same bits. With one rank each is the identity and reads nothing.

use crate::error::Result;
use crate::gpu::buffers::VIEW_ALIGN;
use crate::gpu::{FlatLayout, Gpu, Tensor};

use super::{Dist, Pending};

/// Elements of one exchange bucket of the gradients' mean (16 MiB of f32; a multiple of
/// `VIEW_ALIGN`): ViT-S/16's 22 M parameters make 6 buckets.
pub const BUCKET: usize = 1 << 22;

/// Set to a number of elements to exchange the gradients in buckets of that size (rounded
/// up to `VIEW_ALIGN`) instead of `BUCKET`: the tests' tiny models then have several.
pub const BUCKET_ENV: &str = "SOP_BUCKET_ELEMENTS";

/// Elements of one gradient bucket: `BUCKET`, or `SOP_BUCKET_ELEMENTS`.
pub fn bucket_elements() -> Result<usize> {
    match std::env::var(BUCKET_ENV) {
        Err(_) => Ok(BUCKET),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n.div_ceil(VIEW_ALIGN) * VIEW_ALIGN),
            _ => Err(crate::error::SopError::Invalid(format!("{BUCKET_ENV}={v}: not a positive number of elements"))),
        },
    }
}

/// `t` (a whole buffer) as views of at most `bucket` elements, last first: the gradients of
/// the last parameters, which the backward finishes first, are exchanged first (DDP's order).
fn buckets(t: &Tensor, bucket: usize) -> Result<Vec<Tensor>> {
    let n = t.numel();
    if n <= bucket || t.view_slot().is_some() {
        return Ok(vec![t.clone()]);
    }
    let flat = t.reshape(&[n])?;
    (0..n.div_ceil(bucket))
        .rev()
        .map(|k| {
            let len = bucket.min(n - k * bucket);
            flat.view(k * bucket, &[len], len)
        })
        .collect()
}

/// Replaces each f32 tensor by its element-wise mean over the ranks (summed in rank order, so
/// every rank gets the same bits). Bucket by bucket: read back, handed to the MPI thread,
/// and the next bucket read while it is exchanged; then every mean written back in order.
/// The reads count as communication: call it once the device has computed the tensors.
pub fn mean_in_place(gpu: &Gpu, dist: &Dist, tensors: &[&Tensor]) -> Result<()> {
    if !dist.is_distributed() {
        return Ok(());
    }
    let mut started = Vec::new();
    for t in tensors {
        for piece in buckets(t, bucket_elements()?)? {
            let host = dist.timed(|| gpu.read_f32(&piece))?;
            started.push((piece, dist.start_mean(host)));
        }
    }
    write_means(gpu, dist, started)
}

/// Waits for each exchange (counted as communication) and writes its mean into its tensor.
fn write_means(gpu: &Gpu, dist: &Dist, started: Vec<(Tensor, Pending<Vec<f32>>)>) -> Result<()> {
    for (piece, p) in started {
        let mean = dist.wait(p)?;
        gpu.write_f32(&piece, &mean)?;
    }
    Ok(())
}

/// The mean over ranks of a flat gradient buffer, each bucket started as soon as the
/// backward has written every parameter slot in it (`slot_written`), while the device
/// still runs the rest of the backward (PyTorch DDP's overlap). A finished bucket is copied
/// to a staging buffer and submitted with everything recorded before it; the MPI thread
/// waits for that copy, reads it and starts the exchange, so the training thread records on.
/// The buckets are `mean_in_place`'s, and each element's mean is the same sum in rank
/// order, so the bits are the same as exchanging after the whole backward.
pub struct OverlappedMean {
    /// Each bucket's view and how many parameter slots in it are not yet written.
    buckets: Vec<(Tensor, usize)>,
    /// The buckets each parameter's slot lies in.
    of_param: Vec<Vec<usize>>,
    started: Vec<(Tensor, Pending<Vec<f32>>)>,
}

impl OverlappedMean {
    /// For `flat` (the gradients, of `layout`) in buckets of `bucket` elements.
    pub fn new(flat: &Tensor, layout: &FlatLayout, bucket: usize) -> Result<OverlappedMean> {
        let n = flat.numel();
        let flat = flat.reshape(&[n])?;
        let count = n.div_ceil(bucket);
        let mut buckets = Vec::with_capacity(count);
        for k in 0..count {
            let len = bucket.min(n - k * bucket);
            buckets.push((flat.view(k * bucket, &[len], len)?, 0));
        }
        let mut of_param = Vec::with_capacity(layout.len());
        for i in 0..layout.len() {
            let (lo, hi) = (layout.offsets[i], layout.offsets[i] + layout.slots[i]);
            let ks: Vec<usize> = (lo / bucket..hi.div_ceil(bucket)).collect();
            for &k in &ks {
                buckets[k].1 += 1;
            }
            of_param.push(ks);
        }
        Ok(OverlappedMean { buckets, of_param, started: Vec::new() })
    }

    /// Parameter `i`'s slot has been recorded: the buckets it completes start their exchange.
    pub fn slot_written(&mut self, gpu: &Gpu, dist: &Dist, i: usize) -> Result<()> {
        for &k in &self.of_param[i] {
            let (view, left) = &mut self.buckets[k];
            *left -= 1;
            if *left > 0 {
                continue;
            }
            let read = gpu.read_async(view)?.detach(gpu);
            let p = dist.start_mean_of(view.numel(), move || {
                read.wait().map(|bytes| bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
            });
            self.started.push((view.clone(), p));
        }
        Ok(())
    }

    /// After the backward: waits for the device to finish it (compute, not counted), then
    /// for each bucket's mean (the communication the backward did not hide), written back.
    pub fn finish(self, gpu: &Gpu, dist: &Dist) -> Result<()> {
        if self.buckets.iter().any(|(_, left)| *left > 0) {
            return Err(crate::error::SopError::Invalid("internal: a gradient bucket was never written".into()));
        }
        gpu.sync()?;
        write_means(gpu, dist, self.started)
    }
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
