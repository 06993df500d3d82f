//! Shaders, the pipeline cache and `dispatch`.
//!
//! Every shader is a real file under `shaders/`, compiled into the binary. Binding
//! convention for every kernel: `@group(0) @binding(0)` is a uniform `Params` struct,
//! bindings 1.. are storage buffers in the order the Rust op passes them (`Bind::Read` for
//! `var<storage, read>`, `Bind::Write` for `var<storage, read_write>`). Layouts are built
//! from that list, so an entry point may use a subset of its file's bindings.
//! Pipelines are built once per (file, entry point, override constants, layout) and cached.
//! Params go into one uniform ring buffer (a slot per dispatch, bound with a dynamic offset,
//! written once per submit), so a bind group depends only on the buffers it binds and is
//! cached: a training step that repeats the last one creates no bind groups or buffers.
//! Shader and pipeline creation run inside an error scope: a bad shader is an error naming
//! the file and entry point, not a panic.

use std::collections::HashMap;

use crate::error::{Result, SopError};
use crate::gpu::buffers::Tensor;
use crate::gpu::context::{Gpu, MAX_PENDING_DISPATCHES, UNIFORM_RING_BYTES};
use crate::gpu::counters::Counters;

/// A WGSL file from `shaders/`.
pub struct Shader {
    pub file: &'static str,
    pub source: &'static str,
    /// The shader's own guards cover every memory access, so it is compiled without naga's
    /// inserted bounds checks and loop bounding (`Gpu::force_runtime_checks` turns them back
    /// on; a test compares both builds on awkward shapes).
    pub trusted: bool,
}

macro_rules! shader {
    ($file:literal) => {
        Shader {
            file: $file,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
            trusted: false,
        }
    };
    // `trusted`: see `Shader::trusted`.
    (trusted $file:literal) => {
        Shader { trusted: true, ..shader!($file) }
    };
    (trusted $prelude:literal + $file:literal) => {
        Shader { trusted: true, ..shader!($prelude + $file) }
    };
    // Two prelude files, in order.
    (trusted $p1:literal + $p2:literal + $file:literal) => {
        Shader { trusted: true, ..shader!($p1 + $p2 + $file) }
    };
    ($p1:literal + $p2:literal + $file:literal) => {
        Shader {
            file: concat!($p1, " + ", $p2, " + ", $file),
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $p1)),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $p2)),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
            trusted: false,
        }
    };
    // A shared prelude file prepended to `$file` (WGSL has no includes); errors name both.
    ($prelude:literal + $file:literal) => {
        Shader {
            file: concat!($prelude, " + ", $file),
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $prelude)),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
            trusted: false,
        }
    };
}
pub(crate) use shader;

/// A storage binding of a dispatch, in binding order from 1.
pub enum Bind<'a> {
    Read(&'a Tensor),
    Write(&'a Tensor),
}

impl Bind<'_> {
    fn tensor(&self) -> &Tensor {
        match self {
            Bind::Read(t) | Bind::Write(t) => t,
        }
    }
    fn read_only(&self) -> bool {
        matches!(self, Bind::Read(_))
    }
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct PipelineKey {
    file: &'static str,
    entry: &'static str,
    /// Override constants as (name, f64 bits): hashed without formatting on every dispatch.
    constants: Vec<(&'static str, u64)>,
    read_only: Vec<bool>,
}

/// A bind group is fixed by its layout, the size of its uniform slot and the storage
/// buffers it binds; pooled buffers repeat from step to step, so groups are reused.
#[derive(Hash, PartialEq, Eq)]
struct BindKey {
    read_only: Vec<bool>,
    uniform_size: u64,
    buffers: Vec<(wgpu::Buffer, Option<crate::gpu::buffers::View>)>,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    layouts: HashMap<Vec<bool>, wgpu::BindGroupLayout>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
}

/// Bound on cached bind groups (cleared when reached; a training step uses a few hundred).
const MAX_CACHED_BIND_GROUPS: usize = 16384;

fn scoped<T>(gpu: &Gpu, make: impl FnOnce() -> T) -> (T, Option<wgpu::Error>) {
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = make();
    let err = pollster::block_on(scope.pop());
    (value, err)
}

impl Gpu {
    fn layout_for(&self, cache: &mut PipelineCache, read_only: &[bool]) -> wgpu::BindGroupLayout {
        cache
            .layouts
            .entry(read_only.to_vec())
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: None,
                    },
                    count: None,
                }];
                for (i, &ro) in read_only.iter().enumerate() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: 1 + i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: ro },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("sop layout"),
                    entries: &entries,
                })
            })
            .clone()
    }

    fn pipeline(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        read_only: &[bool],
    ) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        let key = PipelineKey {
            file: shader.file,
            entry,
            constants: constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
            read_only: read_only.to_vec(),
        };
        let mut cache = self.pipelines.lock().unwrap();
        let layout = self.layout_for(&mut cache, read_only);
        if let Some(p) = cache.pipelines.get(&key) {
            return Ok((p.clone(), layout));
        }
        if !cache.modules.contains_key(shader.file) {
            let (module, err) = scoped(self, || {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(shader.file),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                };
                if shader.trusted && !self.runtime_checks.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: a trusted shader bounds-checks every access itself (see its
                    // header) and every loop it has ends; `shader_runtime_checks` tests it.
                    unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
                } else {
                    self.device.create_shader_module(desc)
                }
            });
            if let Some(e) = err {
                return Err(SopError::Shader { file: shader.file.to_string(), message: e.to_string() });
            }
            cache.modules.insert(shader.file, module);
        }
        let module = &cache.modules[shader.file];
        let (pipeline, err) = scoped(self, || {
            let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pl),
                module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        });
        if let Some(e) = err {
            return Err(SopError::Shader {
                file: shader.file.to_string(),
                message: format!("entry point {entry}: {e}"),
            });
        }
        cache.pipelines.insert(key, pipeline.clone());
        Ok((pipeline, layout))
    }

    /// The bind group for these storage buffers and a uniform slot of `uniform_size` bytes
    /// in the ring (its offset is given per dispatch), created on first use.
    fn bind_group(
        &self,
        layout: &wgpu::BindGroupLayout,
        read_only: Vec<bool>,
        uniform_size: u64,
        binds: &[Bind],
    ) -> wgpu::BindGroup {
        let key = BindKey {
            read_only,
            uniform_size,
            buffers: binds.iter().map(|b| (b.tensor().buffer().clone(), b.tensor().view_slot())).collect(),
        };
        let mut cache = self.pipelines.lock().unwrap();
        if let Some(g) = cache.bind_groups.get(&key) {
            return g.clone();
        }
        if cache.bind_groups.len() >= MAX_CACHED_BIND_GROUPS {
            cache.bind_groups.clear();
        }
        let uniform =
            wgpu::BufferBinding { buffer: &self.uniform_ring, offset: 0, size: wgpu::BufferSize::new(uniform_size) };
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(uniform) }];
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: 1 + i as u32, resource: b.tensor().binding() });
        }
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("sop bind group"),
            layout,
            entries: &entries,
        });
        Counters::add(&self.counters.bind_groups_created, 1);
        cache.bind_groups.insert(key, group.clone());
        group
    }

    /// Record one dispatch of `entry` from `shader` into the pending encoder.
    pub fn dispatch(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        params: &[u8],
        binds: &[Bind],
        workgroups: [u32; 3],
    ) -> Result<()> {
        if workgroups.contains(&0) {
            return Ok(()); // nothing to do (an empty tensor)
        }
        let max_dim = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max_dim) {
            return Err(SopError::Limit {
                op: entry,
                detail: format!("dispatch {workgroups:?}"),
                limit: max_dim as u64,
            });
        }
        let max_binding = self.limits.max_storage_buffer_binding_size;
        for b in binds {
            if b.tensor().bytes() > max_binding {
                return Err(SopError::Limit {
                    op: entry,
                    detail: format!("a binding of {:?} ({} bytes)", b.tensor().shape, b.tensor().bytes()),
                    limit: max_binding,
                });
            }
        }
        let started = std::time::Instant::now();
        let read_only: Vec<bool> = binds.iter().map(Bind::read_only).collect();
        let (pipeline, layout) = self.pipeline(shader, entry, constants, &read_only)?;
        // Uniform slots are 16-byte aligned in size.
        let uniform_size = params.len().max(16).div_ceil(16) * 16;
        if uniform_size as u64 > self.uniform_stride {
            return Err(SopError::Limit {
                op: entry,
                detail: format!("{} bytes of params", params.len()),
                limit: self.uniform_stride,
            });
        }
        let group = self.bind_group(&layout, read_only, uniform_size as u64, binds);
        let profile = self.kernel_profile.get();
        if profile.is_some() {
            self.sync()?; // time this dispatch alone
        }
        let kernel_started = std::time::Instant::now();
        let full = {
            let mut p = self.pending.lock().unwrap();
            // This dispatch's params go into the next free slot of the ring, written once
            // per submit (`flush`).
            let offset = p.uniforms.len();
            p.uniforms.extend_from_slice(params);
            p.uniforms.resize(offset + self.uniform_stride as usize, 0);
            let enc = p.encoder.get_or_insert_with(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("sop ops") })
            });
            {
                let mut pass =
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: None });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[offset as u32]);
                pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
            }
            p.dispatches += 1;
            p.dispatches >= MAX_PENDING_DISPATCHES || p.uniforms.len() >= UNIFORM_RING_BYTES
        };
        Counters::add(&self.counters.dispatches, 1);
        Counters::add(&self.counters.uniform_bytes, params.len() as u64);
        Counters::add(&self.counters.record_ns, started.elapsed().as_nanos() as u64);
        if full {
            self.flush()?;
        }
        if let Some(p) = profile {
            self.sync()?;
            p.lock().unwrap().add(shader.file, entry, kernel_started.elapsed());
        }
        Ok(())
    }

    /// Workgroup counts for `n` workgroups laid out as (x, y, 1) within the per-dimension
    /// limit. Shaders recover the linear index as `wid.x + wid.y * nwg.x` and bound-check it.
    pub fn grid(&self, n: u32) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if n <= max {
            [n, 1, 1]
        } else {
            let y = n.div_ceil(max);
            [n.div_ceil(y), y, 1]
        }
    }
}
