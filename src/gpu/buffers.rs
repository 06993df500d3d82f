//! GPU tensors: a shape, an element type and a pooled storage buffer.
//!
//! Buffers come from a pool keyed by byte size and go back to it when the last `Tensor`
//! holding them drops, so a training loop that allocates the same shapes every step creates
//! no new buffers after the first (`Gpu::buffers_created` counts them).
//!
//! Ordering: ops are recorded into one pending command encoder. An upload first submits
//! whatever is pending, because `queue.write_buffer` lands before the next submit's commands
//! and the target may be a recycled buffer that pending commands still read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Result, SopError};
use crate::gpu::context::Gpu;
use crate::gpu::counters::Counters;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U32,
    I32,
}

#[derive(Default)]
pub(crate) struct BufferPool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Unmapped MAP_READ staging buffers for readbacks, by bucket size.
    staging: HashMap<u64, Vec<wgpu::Buffer>>,
    /// How many staging buffers of each bucket size exist, free or in a read.
    staging_made: HashMap<u64, usize>,
    pub created: usize,
    pub memory: MemoryStats,
}

/// Device memory held through the pool, in bytes (`Gpu::memory`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Every buffer the pool holds, free or in use: what the device has allocated.
    pub pool_bytes: u64,
    /// The largest `pool_bytes` so far (the pool's high-water mark).
    pub peak_pool_bytes: u64,
    /// Buffers held by live tensors.
    pub live_bytes: u64,
    /// The largest `live_bytes` since the last `Gpu::reset_peak_memory`.
    pub peak_live_bytes: u64,
}

impl MemoryStats {
    fn grow(&mut self, pool: u64, live: u64) {
        self.pool_bytes += pool;
        self.live_bytes += live;
        self.peak_pool_bytes = self.peak_pool_bytes.max(self.pool_bytes);
        self.peak_live_bytes = self.peak_live_bytes.max(self.live_bytes);
    }
}

pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
    pool: Weak<Mutex<BufferPool>>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(pool), Some(buf)) = (self.pool.upgrade(), self.buffer.take()) {
            let mut pool = pool.lock().unwrap();
            pool.memory.live_bytes -= self.size;
            pool.free.entry(self.size).or_default().push(buf);
        }
    }
}

/// A GPU array of 4-byte elements, row-major, with its shape: a whole pooled buffer, or a
/// view of a slot of one (`Tensor::view`: the parameters, gradients and moments of a model
/// live side by side in one flat buffer, so multi-tensor kernels update them all at once).
#[derive(Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    buf: Arc<PooledBuffer>,
    /// Where a view's slot starts and how many bytes it binds (None: the whole buffer).
    view: Option<View>,
}

/// A slot of a flat buffer: byte offset (a multiple of `VIEW_ALIGN` elements) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub offset: u64,
    pub size: u64,
}

/// Views start at multiples of this many elements (256 bytes: every adapter's storage
/// offset alignment, and one workgroup of 64 invocations).
pub const VIEW_ALIGN: usize = 64;

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer.as_ref().expect("live tensor has a buffer")
    }
    /// Byte offset of the tensor's first element in `buffer()` (0 unless a view).
    pub fn offset(&self) -> u64 {
        self.view.map_or(0, |v| v.offset)
    }
    /// The view's slot (None for a whole buffer).
    pub fn view_slot(&self) -> Option<View> {
        self.view
    }
    /// What a kernel binds: the whole buffer, or the view's slot.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        match self.view {
            None => self.buffer().as_entire_binding(),
            Some(v) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer(),
                offset: v.offset,
                size: wgpu::BufferSize::new(v.size),
            }),
        }
    }
    /// A view of `shape` starting at element `at` of this whole tensor and binding `slot`
    /// elements (≥ the shape's, ending inside this tensor); `at` is a multiple of `VIEW_ALIGN`.
    pub fn view(&self, at: usize, shape: &[usize], slot: usize) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if self.view.is_some()
            || !at.is_multiple_of(VIEW_ALIGN)
            || numel > slot
            || slot == 0
            || at + slot > self.numel()
        {
            return Err(SopError::shape("view", format!("{shape:?} in a slot of {slot} at {at} of {:?}", self.shape)));
        }
        let view = Some(View { offset: 4 * at as u64, size: 4 * slot as u64 });
        Ok(Tensor { shape: shape.to_vec(), dtype: self.dtype, buf: self.buf.clone(), view })
    }
    /// Bytes of payload (the buffer may be padded beyond it).
    pub fn bytes(&self) -> u64 {
        4 * self.numel() as u64
    }
    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(SopError::shape("reshape", format!("{:?} -> {:?}", self.shape, shape)));
        }
        Ok(Tensor { shape: shape.to_vec(), dtype: self.dtype, buf: self.buf.clone(), view: self.view })
    }
    /// True when both tensors share one buffer (two views of one flat buffer do).
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
}

/// Readback staging buffers up to this size are kept for reuse (the per-step reads of
/// losses, norms and top-k results); larger ones (features, checkpoints) are dropped.
const MAX_POOLED_STAGING: u64 = 1 << 20;

/// What a pooled buffer is for.
#[derive(Clone, Copy)]
enum Kind {
    /// A tensor's storage buffer.
    Storage,
    /// A MAP_READ buffer a readback copies into.
    Staging,
}

/// Pool bucket: byte size rounded up to 256 (min 256) so near sizes share buffers.
fn bucket(bytes: u64) -> u64 {
    bytes.max(1).div_ceil(256) * 256
}

impl BufferPool {
    /// Keep an unmapped staging buffer for reuse whatever its size: for reads that recur
    /// every step at the same sizes (the data-parallel gradient buckets, `DetachedRead`), so
    /// later steps create no buffer for them.
    pub(crate) fn keep_staging(&mut self, staging: wgpu::Buffer, bucket_size: u64) {
        self.staging.entry(bucket_size).or_default().push(staging);
    }

    /// Keep an unmapped staging buffer for reuse (large ones are dropped).
    pub(crate) fn return_staging(&mut self, staging: wgpu::Buffer, bucket_size: u64) {
        if bucket_size <= MAX_POOLED_STAGING {
            self.staging.entry(bucket_size).or_default().push(staging);
        } else {
            self.memory.pool_bytes -= bucket_size;
            *self.staging_made.entry(bucket_size).or_default() -= 1;
        }
    }
}

impl Gpu {
    /// A free buffer of this kind and bucket size from the pool, or a new one (counted).
    fn pooled_buffer(&self, kind: Kind, size: u64) -> wgpu::Buffer {
        let free = {
            let mut pool = self.pool.lock().unwrap();
            let free = match kind {
                Kind::Storage => &mut pool.free,
                Kind::Staging => &mut pool.staging,
            };
            free.get_mut(&size).and_then(|v| v.pop())
        };
        free.unwrap_or_else(|| self.pooled_buffer_new(kind, size))
    }

    /// A new buffer of this kind and bucket size, counted as the pool's.
    fn pooled_buffer_new(&self, kind: Kind, size: u64) -> wgpu::Buffer {
        {
            let mut pool = self.pool.lock().unwrap();
            pool.created += 1;
            pool.memory.grow(size, 0);
            if let Kind::Staging = kind {
                *pool.staging_made.entry(size).or_default() += 1;
            }
        }
        let (label, usage) = match kind {
            Kind::Storage => (
                "sop tensor",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            ),
            Kind::Staging => ("sop readback", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        };
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    /// Put every free list of the pool in one fixed order. A training step calls this first:
    /// its allocations and frees repeat from step to step, so from the same free lists it
    /// gets the same buffers, and every bind group it needs is already cached (without this
    /// the lists' order drifts from step to step, and so do the buffer combinations).
    pub fn settle_pool(&self) {
        let mut pool = self.pool.lock().unwrap();
        for list in pool.free.values_mut() {
            list.sort_unstable();
        }
    }

    /// A tensor with undefined contents (possibly a recycled buffer's old data).
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let size = bucket(4 * numel as u64);
        if size > self.limits.max_buffer_size {
            return Err(SopError::Limit {
                op: "alloc",
                detail: format!("tensor {shape:?} of {size} bytes"),
                limit: self.limits.max_buffer_size,
            });
        }
        let buffer = self.pooled_buffer(Kind::Storage, size);
        self.pool.lock().unwrap().memory.grow(0, size);
        let buf = Arc::new(PooledBuffer { buffer: Some(buffer), size, pool: Arc::downgrade(&self.pool) });
        Ok(Tensor { shape: shape.to_vec(), dtype, buf, view: None })
    }

    /// A tensor of zeros (cleared in command order, so recycled buffers are safe).
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.empty(shape, dtype)?;
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), 0, None))?;
        Ok(t)
    }

    fn upload_bytes(&self, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if bytes.len() != 4 * numel {
            return Err(SopError::shape("upload", format!("{} elements for shape {shape:?}", bytes.len() / 4)));
        }
        let t = self.empty(shape, dtype)?;
        self.write_bytes(&t, bytes)?;
        Ok(t)
    }

    fn write_bytes(&self, t: &Tensor, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != t.bytes() {
            return Err(SopError::shape("write", format!("{} bytes into {:?}", bytes.len(), t.shape)));
        }
        self.flush()?;
        if !bytes.is_empty() {
            self.queue.write_buffer(t.buffer(), t.offset(), bytes);
        }
        Ok(())
    }

    pub fn upload_f32(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_bytes(shape, DType::F32, bytemuck::cast_slice(data))
    }
    pub fn upload_u32(&self, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        self.upload_bytes(shape, DType::U32, bytemuck::cast_slice(data))
    }
    pub fn upload_i32(&self, shape: &[usize], data: &[i32]) -> Result<Tensor> {
        self.upload_bytes(shape, DType::I32, bytemuck::cast_slice(data))
    }
    /// Overwrite a tensor's contents from the host.
    pub fn write_f32(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        self.write_bytes(t, bytemuck::cast_slice(data))
    }
    pub fn write_u32(&self, t: &Tensor, data: &[u32]) -> Result<()> {
        self.write_bytes(t, bytemuck::cast_slice(data))
    }

    /// Fill with one f32 value (tests poison outputs with NaN this way).
    pub fn fill_f32(&self, t: &Tensor, value: f32) -> Result<()> {
        self.write_f32(t, &vec![value; t.numel()])
    }

    /// Copy `src` into `dst` (same element count), in command order.
    pub fn copy(&self, src: &Tensor, dst: &Tensor) -> Result<()> {
        if src.numel() != dst.numel() {
            return Err(SopError::shape("copy", format!("{:?} into {:?}", src.shape, dst.shape)));
        }
        if src.numel() > 0 {
            self.with_encoder(|enc| {
                enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), Some(src.bytes()))
            })?;
        }
        Ok(())
    }

    /// Copy `len` elements from `src[src_at..]` to `dst[dst_at..]`, in command order
    /// (concatenating and splitting along the first dimension).
    pub fn copy_region(&self, src: &Tensor, src_at: usize, dst: &Tensor, dst_at: usize, len: usize) -> Result<()> {
        if src_at + len > src.numel() || dst_at + len > dst.numel() {
            return Err(SopError::shape(
                "copy_region",
                format!("{len} elements from {src_at} of {:?} to {dst_at} of {:?}", src.shape, dst.shape),
            ));
        }
        if len > 0 {
            self.with_encoder(|enc| {
                enc.copy_buffer_to_buffer(
                    src.buffer(),
                    src.offset() + 4 * src_at as u64,
                    dst.buffer(),
                    dst.offset() + 4 * dst_at as u64,
                    Some(4 * len as u64),
                )
            })?;
        }
        Ok(())
    }

    /// Rows stacked along the first dimension: (Σ R_i, …).
    pub fn concat_rows(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| SopError::shape("concat_rows", "no parts"))?;
        let tail = &first.shape[1..];
        let mut shape = first.shape.clone();
        shape[0] = 0;
        for p in parts {
            if &p.shape[1..] != tail {
                return Err(SopError::shape("concat_rows", format!("{:?} with {:?}", first.shape, p.shape)));
            }
            shape[0] += p.shape[0];
        }
        let out = self.empty(&shape, first.dtype)?;
        let mut at = 0;
        for p in parts {
            self.copy_region(p, 0, &out, at, p.numel())?;
            at += p.numel();
        }
        Ok(out)
    }

    /// Rows `start..start+count` of `src` as a new tensor.
    pub fn slice_rows(&self, src: &Tensor, start: usize, count: usize) -> Result<Tensor> {
        let row: usize = src.shape[1..].iter().product();
        let mut shape = src.shape.clone();
        shape[0] = count;
        let out = self.empty(&shape, src.dtype)?;
        self.copy_region(src, start * row, &out, 0, count * row)?;
        Ok(out)
    }

    /// A new tensor holding a copy of `src`.
    pub fn duplicate(&self, src: &Tensor) -> Result<Tensor> {
        let t = self.empty(&src.shape, src.dtype)?;
        self.copy(src, &t)?;
        Ok(t)
    }

    fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        let size = t.bytes();
        if size == 0 {
            return Ok(Vec::new());
        }
        let (staging, bucket_size) = self.staging_buffer(size);
        Counters::add(&self.counters.host_waits, 1);
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging, 0, Some(size)))?;
        self.flush()?;
        let slice = staging.slice(..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| SopError::Gpu(format!("poll: {e}")))?;
        rx.recv()
            .map_err(|e| SopError::Gpu(format!("readback: {e}")))?
            .map_err(|e| SopError::Gpu(format!("readback map: {e}")))?;
        let bytes = slice.get_mapped_range().map_err(|e| SopError::Gpu(format!("readback range: {e:?}")))?.to_vec();
        staging.unmap();
        self.return_staging(staging, bucket_size);
        Ok(bytes)
    }

    /// An unmapped MAP_READ buffer of at least `size` bytes from the pool, and its bucket.
    pub(crate) fn staging_buffer(&self, size: u64) -> (wgpu::Buffer, u64) {
        let bucket_size = bucket(size);
        (self.pooled_buffer(Kind::Staging, bucket_size), bucket_size)
    }

    /// At least `count` staging buffers for reads of `size` bytes (at most 1 MiB, which the
    /// pool keeps), created now if fewer exist: for reads that recur with up to `count` in
    /// flight at once, so how many happen to be in flight (which depends on the device's
    /// and the other threads' timing) never makes a later step create one.
    pub(crate) fn reserve_staging(&self, size: u64, count: usize) {
        let bucket_size = bucket(size);
        debug_assert!(bucket_size <= MAX_POOLED_STAGING, "only pooled sizes can be reserved");
        let made = self.pool.lock().unwrap().staging_made.get(&bucket_size).copied().unwrap_or(0);
        for _ in made..count {
            let b = self.pooled_buffer_new(Kind::Staging, bucket_size);
            self.return_staging(b, bucket_size);
        }
    }

    /// Give an unmapped staging buffer back to the pool (large ones are dropped).
    pub(crate) fn return_staging(&self, staging: wgpu::Buffer, bucket_size: u64) {
        self.pool.lock().unwrap().return_staging(staging, bucket_size);
    }

    /// The raw 4-byte words of several tensors (any dtype) with one wait: they are copied
    /// side by side into one scratch tensor, in command order, and read back together.
    pub fn read_words(&self, parts: &[&Tensor]) -> Result<Vec<Vec<u32>>> {
        let total: usize = parts.iter().map(|t| t.numel()).sum();
        let all = self.empty(&[total.max(1)], DType::U32)?;
        let mut at = 0;
        for t in parts {
            self.copy_region(t, 0, &all, at, t.numel())?;
            at += t.numel();
        }
        let words = if total == 0 { Vec::new() } else { self.read_u32(&all)? };
        let mut out = Vec::with_capacity(parts.len());
        let mut at = 0;
        for t in parts {
            out.push(words[at..at + t.numel()].to_vec());
            at += t.numel();
        }
        Ok(out)
    }

    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t)?))
    }
    pub fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t)?))
    }
    pub fn read_i32(&self, t: &Tensor) -> Result<Vec<i32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t)?))
    }
}
