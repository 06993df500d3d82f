//! Adapter choice and the device: the one `Gpu` every op dispatches through.
//!
//! The best hardware adapter is chosen by default (discrete > integrated > virtual > CPU);
//! `--adapter NAME|INDEX` or `SOP_ADAPTER` picks another. The device is created with the
//! adapter's own limits, so large storage buffers and workgroups are available where the
//! hardware has them. Validation errors raised outside an error scope are caught by an
//! uncaptured-error handler and returned by the next `flush`, never a panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Result, SopError, ADAPTER_HINT};
use crate::gpu::buffers::BufferPool;
use crate::gpu::counters::{CounterSnapshot, Counters};
use crate::gpu::pipelines::PipelineCache;
use crate::gpu::profile::KernelProfile;

/// One adapter as `sop info` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub limits: wgpu::Limits,
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub(crate) pool: Arc<Mutex<BufferPool>>,
    pub(crate) pipelines: Mutex<PipelineCache>,
    pub(crate) pending: Mutex<Pending>,
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Kernel variants fixed for this device, one per op family (see `KernelChoices`).
    pub kernel_choices: KernelChoices,
    /// Per-kernel wall times, once `enable_kernel_profile` turned them on (unset: no cost
    /// per dispatch beyond one check).
    pub(crate) kernel_profile: OnceLock<Mutex<KernelProfile>>,
    /// Subgroup operations are enabled, with subgroups of at least 8 lanes.
    pub subgroups: bool,
    /// Every dispatch's params, one slot of `uniform_stride` bytes each (see `pipelines`).
    pub(crate) uniform_ring: wgpu::Buffer,
    pub(crate) uniform_stride: u64,
    pub(crate) counters: Counters,
    /// Compile trusted shaders with naga's runtime checks too (set before their first use).
    pub(crate) runtime_checks: std::sync::atomic::AtomicBool,
    /// The memory the device offers, where it can be known (`gpu::memory`).
    pub device_memory: Option<crate::gpu::memory::DeviceMemory>,
}

/// Kernel variants fixed for a device, one per op family ("matmul" -> "blocked_128"). The
/// runtime only keeps them: the ops above it decide (an environment override, a resumed
/// run's pin, a rule or an autotune; see `ops::variant`).
#[derive(Default)]
pub struct KernelChoices(Mutex<HashMap<&'static str, &'static str>>);

impl KernelChoices {
    /// The variant fixed for `family`, if any.
    pub fn get(&self, family: &'static str) -> Option<&'static str> {
        self.0.lock().unwrap().get(family).copied()
    }

    /// The variant fixed for `family`, fixing `choose()`'s when none is (`choose` runs under
    /// the lock, so two threads never choose twice).
    pub fn get_or_try_set(
        &self,
        family: &'static str,
        choose: impl FnOnce() -> Result<&'static str>,
    ) -> Result<&'static str> {
        let mut map = self.0.lock().unwrap();
        if let Some(&v) = map.get(family) {
            return Ok(v);
        }
        let v = choose()?;
        map.insert(family, v);
        Ok(v)
    }
}

/// Commands recorded since the last submit. Consecutive dispatches share one open compute
/// pass (wgpu inserts the barriers between them); a copy or a submit ends it first.
pub(crate) struct Pending {
    /// The open pass, if any: ended (dropped) before `encoder` is used or finished.
    pub pass: Option<wgpu::ComputePass<'static>>,
    pub encoder: Option<wgpu::CommandEncoder>,
    pub dispatches: usize,
    /// The params of the recorded dispatches, slot by slot, written to the uniform ring
    /// just before the submit.
    pub uniforms: Vec<u8>,
}

/// Submit after this many dispatches so one encoder never grows without bound.
pub(crate) const MAX_PENDING_DISPATCHES: usize = 512;
/// The uniform ring: 512 slots of 256 bytes (a slot grows to the adapter's offset alignment
/// where that is larger; the ring then holds fewer slots and submits sooner).
pub(crate) const UNIFORM_RING_BYTES: usize = 512 * 256;

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(desc)
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// All adapters, best first (the order `--adapter INDEX` refers to).
fn sorted_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        // Vulkan first among equals: it is the backend the kernels are tested on.
        (type_rank(info.device_type), info.backend != wgpu::Backend::Vulkan)
    });
    adapters
}

fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        limits: a.limits(),
    }
}

/// Every adapter wgpu can see, best first.
pub fn list_adapters() -> Vec<AdapterSummary> {
    sorted_adapters(&instance()).iter().enumerate().map(|(i, a)| summary(i, a)).collect()
}

fn pick(adapters: Vec<wgpu::Adapter>, wanted: Option<&str>) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(SopError::NoAdapter { hint: ADAPTER_HINT.to_string() });
    }
    let Some(wanted) = wanted.map(str::trim).filter(|w| !w.is_empty()) else {
        return Ok(adapters.into_iter().next().unwrap());
    };
    let available = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let s = summary(i, a);
            format!("  [{i}] {} ({}, {})", s.name, s.backend, s.device_type)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let found = if let Ok(index) = wanted.parse::<usize>() {
        adapters.into_iter().nth(index)
    } else {
        let lower = wanted.to_lowercase();
        adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&lower))
    };
    found.ok_or(SopError::AdapterNotFound { wanted: wanted.to_string(), available })
}

impl Gpu {
    /// The adapter named by `wanted` (index or name substring), else `SOP_ADAPTER`, else the best.
    pub fn new(wanted: Option<&str>) -> Result<Gpu> {
        let env = std::env::var("SOP_ADAPTER").ok();
        let wanted = wanted.or(env.as_deref());
        let adapter = pick(sorted_adapters(&instance()), wanted)?;
        Gpu::from_adapter(adapter)
    }

    fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let device_memory = crate::gpu::memory::query(&adapter)?;
        // Subgroup operations, where the adapter has them in groups of at least 8 lanes (what
        // matmul_subgroup.wgsl shares A values across).
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8;
        let features = if subgroups { wgpu::Features::SUBGROUP } else { wgpu::Features::empty() };
        let desc = wgpu::DeviceDescriptor {
            label: Some("sop device"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| SopError::Device { adapter: info.name.clone(), message: e.to_string() })?;
        let uncaptured = Arc::new(Mutex::new(None::<String>));
        let slot = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            let mut s = slot.lock().unwrap();
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }));
        log::info!("adapter: {} ({:?}, {:?})", info.name, info.backend, info.device_type);
        let uniform_stride = 256u64.div_ceil(limits.min_uniform_buffer_offset_alignment as u64)
            * limits.min_uniform_buffer_offset_alignment as u64;
        let uniform_ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sop params ring"),
            size: UNIFORM_RING_BYTES as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            pool: Arc::new(Mutex::new(BufferPool::default())),
            pipelines: Mutex::new(PipelineCache::default()),
            pending: Mutex::new(Pending {
                pass: None,
                encoder: None,
                dispatches: 0,
                uniforms: Vec::with_capacity(UNIFORM_RING_BYTES),
            }),
            uncaptured,
            kernel_choices: KernelChoices::default(),
            kernel_profile: OnceLock::new(),
            subgroups,
            uniform_ring,
            uniform_stride,
            counters: Counters::default(),
            runtime_checks: std::sync::atomic::AtomicBool::new(std::env::var_os("SOP_SHADER_CHECKS").is_some()),
            device_memory,
        })
    }

    /// "name (backend, type)" for logs and benchmark tables.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Run `f` with the pending command encoder (created on demand).
    pub(crate) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> Result<R> {
        let (r, full) = {
            let mut p = self.pending.lock().unwrap();
            self.end_pass(&mut p);
            let enc = p.encoder.get_or_insert_with(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("sop ops") })
            });
            let r = f(enc);
            p.dispatches += 1;
            (r, p.dispatches >= MAX_PENDING_DISPATCHES)
        };
        if full {
            self.flush()?;
        }
        Ok(r)
    }

    /// End the open compute pass, if any (counted in the recording time with the dispatches
    /// themselves).
    fn end_pass(&self, p: &mut Pending) {
        if let Some(pass) = p.pass.take() {
            let started = std::time::Instant::now();
            drop(pass);
            Counters::add(&self.counters.record_ns, started.elapsed().as_nanos() as u64);
        }
    }

    /// Submit everything recorded so far (does not wait for it to finish).
    pub fn flush(&self) -> Result<()> {
        self.submit().map(|_| ())
    }

    /// `flush`, returning the submission's index (None when nothing was pending).
    pub(crate) fn submit(&self) -> Result<Option<wgpu::SubmissionIndex>> {
        let enc = {
            let mut p = self.pending.lock().unwrap();
            self.end_pass(&mut p);
            p.dispatches = 0;
            if !p.uniforms.is_empty() {
                // Lands before this submit's commands and after every earlier submit's.
                self.queue.write_buffer(&self.uniform_ring, 0, &p.uniforms);
                p.uniforms.clear();
            }
            p.encoder.take()
        };
        // wgpu validates and encodes the recorded commands in `finish` (deferred encoding).
        let index = enc.map(|enc| {
            let started = std::time::Instant::now();
            let commands = enc.finish();
            Counters::add(&self.counters.encode_ns, started.elapsed().as_nanos() as u64);
            self.queue.submit([commands])
        });
        self.check_errors()?;
        Ok(index)
    }

    /// Submit and wait until the device is idle.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        Counters::add(&self.counters.host_waits, 1);
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| SopError::Gpu(format!("poll: {e}")))?;
        self.check_errors()
    }

    fn check_errors(&self) -> Result<()> {
        match self.uncaptured.lock().unwrap().take() {
            Some(e) => Err(SopError::Gpu(e)),
            None => Ok(()),
        }
    }

    /// Compile every shader with naga's bounds checks and loop bounding, trusted ones too
    /// (`SOP_SHADER_CHECKS=1` does this for a whole process). Call before the first dispatch.
    pub fn force_runtime_checks(&self) {
        self.runtime_checks.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time every dispatch from now on (each one waited for on its own; see `profile`).
    pub fn enable_kernel_profile(&self) {
        self.kernel_profile.get_or_init(Mutex::default);
    }

    /// The per-kernel table so far, if profiling is on.
    pub fn kernel_profile_table(&self) -> Option<String> {
        self.kernel_profile.get().map(|p| p.lock().unwrap().table())
    }

    /// Buffers created so far (the pool reuses freed ones; steady-state training adds none).
    pub fn buffers_created(&self) -> usize {
        self.pool.lock().unwrap().created
    }

    /// Device memory held through the buffer pool, with its high-water marks.
    pub fn memory(&self) -> crate::gpu::buffers::MemoryStats {
        self.pool.lock().unwrap().memory
    }

    /// Start a new live-bytes high-water mark (the pool's own peak never resets: the pool
    /// never gives memory back).
    pub fn reset_peak_memory(&self) {
        let mut pool = self.pool.lock().unwrap();
        pool.memory.peak_live_bytes = pool.memory.live_bytes;
    }

    /// Dispatches, host waits, bind groups, buffers and uniform bytes so far (see `counters`).
    pub fn counters(&self) -> CounterSnapshot {
        CounterSnapshot::read(&self.counters, self.buffers_created() as u64)
    }
}
