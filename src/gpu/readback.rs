//! Reads that do not wait: `Gpu::read_async` copies a small tensor into a pooled staging
//! buffer and asks for it to be mapped; `AsyncRead::try_take` polls the device without
//! blocking and hands the words over once the copy has run. A training step sends its
//! metrics this way, so the host never makes the device wait for them.
//!
//! `AsyncRead::detach` hands a read to another thread (`DetachedRead`): the MPI thread of a
//! data-parallel run waits there for each gradient bucket, so the training thread does not.
//!
//! `AsyncRead::wait` is the one blocking form, for the places a run must know the values
//! now (before a checkpoint, k-NN evaluation, the end of the run): in a browser (WebGPU)
//! build it is where the host would `await` the map.

use std::sync::{Arc, Mutex};

use crate::error::{Result, SopError};
use crate::gpu::buffers::BufferPool;
use crate::gpu::counters::Counters;
use crate::gpu::{Gpu, Tensor};

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// Why the host blocks on a read (see `AsyncRead::wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Drain,
    Pace,
}

/// A read in flight: its staging buffer, and the map's outcome once the device got there.
pub struct AsyncRead {
    staging: Option<wgpu::Buffer>,
    bucket: u64,
    size: u64,
    submission: Option<wgpu::SubmissionIndex>,
    done: Arc<Mutex<Option<MapResult>>>,
}

impl Gpu {
    /// Start reading `t` back: the copy is recorded after everything pending and submitted
    /// with it; nothing waits.
    pub fn read_async(&self, t: &Tensor) -> Result<AsyncRead> {
        let size = t.bytes().max(4);
        let (staging, bucket) = self.staging_buffer(size);
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging, 0, Some(t.bytes())))?;
        let submission = self.submit()?;
        let done = Arc::new(Mutex::new(None));
        let slot = done.clone();
        staging.slice(..size).map_async(wgpu::MapMode::Read, move |r| {
            *slot.lock().unwrap() = Some(r);
        });
        Ok(AsyncRead { staging: Some(staging), bucket, size, submission, done })
    }
}

impl AsyncRead {
    /// Whether the map has completed (after `gpu` was last polled).
    fn ready(&self) -> bool {
        self.done.lock().unwrap().is_some()
    }

    /// The words, if the device has finished the copy: polls once, never blocks.
    pub fn try_take(&mut self, gpu: &Gpu) -> Result<Option<Vec<u32>>> {
        if !self.ready() {
            gpu.device.poll(wgpu::PollType::Poll).map_err(|e| SopError::Gpu(format!("poll: {e}")))?;
        }
        if !self.ready() {
            return Ok(None);
        }
        self.take(gpu).map(Some)
    }

    /// The words, waiting for the device if it has not got there yet: the one blocking way
    /// to finish a read. `Wait::Drain` (a wait the run needs: checkpoint, k-NN, end) counts
    /// as a host wait; `Wait::Pace` (the host `MAX_IN_FLIGHT` steps ahead waits for the
    /// oldest while later steps keep the device busy) as a pace wait.
    pub fn wait(mut self, gpu: &Gpu, why: Wait) -> Result<Vec<u32>> {
        if !self.ready() {
            let counter = match why {
                Wait::Drain => &gpu.counters.host_waits,
                Wait::Pace => &gpu.counters.pace_waits,
            };
            Counters::add(counter, 1);
            let wait = wgpu::PollType::Wait { submission_index: self.submission.clone(), timeout: None };
            gpu.device.poll(wait).map_err(|e| SopError::Gpu(format!("poll: {e}")))?;
        }
        self.take(gpu)
    }

    fn take(&mut self, gpu: &Gpu) -> Result<Vec<u32>> {
        let (bytes, staging) = self.take_bytes()?;
        gpu.return_staging(staging, self.bucket);
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The mapped bytes (the map has completed) and the unmapped staging buffer.
    fn take_bytes(&mut self) -> Result<(Vec<u8>, wgpu::Buffer)> {
        let outcome = self.done.lock().unwrap().take();
        let staging = self.staging.take().expect("a read is taken once");
        outcome
            .ok_or_else(|| SopError::Gpu("readback map did not complete".into()))?
            .map_err(|e| SopError::Gpu(format!("readback map: {e}")))?;
        let bytes = staging
            .slice(..self.size)
            .get_mapped_range()
            .map_err(|e| SopError::Gpu(format!("readback range: {e:?}")))?
            .to_vec();
        staging.unmap();
        Ok((bytes, staging))
    }
}

/// A read in flight that another thread finishes (`AsyncRead::detach`): it polls the
/// device itself and gives the staging buffer back to the pool, which keeps it whatever its
/// size (detached reads are the gradient buckets every data-parallel step reads again).
pub struct DetachedRead {
    device: wgpu::Device,
    pool: Arc<Mutex<BufferPool>>,
    read: AsyncRead,
}

impl AsyncRead {
    /// This read, to be finished on another thread (`DetachedRead::wait`).
    pub fn detach(self, gpu: &Gpu) -> DetachedRead {
        DetachedRead { device: gpu.device.clone(), pool: gpu.pool.clone(), read: self }
    }
}

impl DetachedRead {
    /// The bytes, once the device has run the copy (blocks the calling thread only).
    pub fn wait(mut self) -> Result<Vec<u8>> {
        let r = &mut self.read;
        // Another thread's poll may be running the map's callback: poll until it has.
        while !r.ready() {
            let wait = wgpu::PollType::Wait { submission_index: r.submission.clone(), timeout: None };
            self.device.poll(wait).map_err(|e| SopError::Gpu(format!("poll: {e}")))?;
            if !r.ready() {
                std::thread::yield_now();
            }
        }
        let (bytes, staging) = r.take_bytes()?;
        self.pool.lock().unwrap().keep_staging(staging, r.bucket);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::gpu::readback::Wait;
    use crate::gpu::Gpu;

    /// Reads in flight take the reserved staging buffers before any new one: with 3
    /// reserved, 3 reads at once create none, a fourth creates one, and reserving again
    /// counts the buffers in reads (4 exist) rather than only the free ones.
    #[test]
    fn reserved_staging_buffers_serve_reads_in_flight() {
        let gpu = Gpu::new(None).expect("a GPU adapter");
        let t = gpu.upload_f32(&[37], &(0..37).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
        gpu.reserve_staging(t.bytes(), 3);
        let before = gpu.buffers_created();
        let reads: Vec<_> = (0..3).map(|_| gpu.read_async(&t).unwrap()).collect();
        assert_eq!(gpu.buffers_created(), before, "3 reads in flight used the 3 reserved buffers");
        let fourth = gpu.read_async(&t).unwrap();
        assert_eq!(gpu.buffers_created(), before + 1, "a fourth read needed a new buffer");
        gpu.reserve_staging(t.bytes(), 4);
        assert_eq!(gpu.buffers_created(), before + 1, "4 exist, in reads: none to make");
        for r in reads.into_iter().chain([fourth]) {
            let words = r.wait(&gpu, Wait::Drain).unwrap();
            assert_eq!(f32::from_bits(words[36]), 36.0);
        }
        gpu.reserve_staging(t.bytes(), 6);
        assert_eq!(gpu.buffers_created(), before + 3, "6 reserved: 2 more made");
    }
}
