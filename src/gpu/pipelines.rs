//! Shaders, the pipeline cache and `dispatch`.
//!
//! Every shader is a real file under `shaders/`, compiled into the binary. Binding
//! convention for every kernel: `@group(0) @binding(0)` is a uniform `Params` struct,
//! bindings 1.. are storage buffers in the order the Rust op passes them (`Bind::Read` for
//! `var<storage, read>`, `Bind::Write` for `var<storage, read_write>`). Layouts are built
//! from that list, so an entry point may use a subset of its file's bindings.
//! Pipelines are built once per (file, entry point, override constants, layout) and cached.
//! Shader and pipeline creation run inside an error scope: a bad shader is an error naming
//! the file and entry point, not a panic.

use std::collections::HashMap;

use crate::error::{Result, SopError};
use crate::gpu::buffers::Tensor;
use crate::gpu::context::Gpu;

/// A WGSL file from `shaders/`.
pub struct Shader {
    pub file: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($file:literal) => {
        Shader { file: $file, source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)) }
    };
    // A shared prelude file prepended to `$file` (WGSL has no includes); errors name both.
    ($prelude:literal + $file:literal) => {
        Shader {
            file: concat!($prelude, " + ", $file),
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $prelude)),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
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
    constants: String,
    read_only: Vec<bool>,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    layouts: HashMap<Vec<bool>, wgpu::BindGroupLayout>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
    uniforms: HashMap<Vec<u8>, wgpu::Buffer>,
}

/// Uniform buffers are cached by content; params repeat every step, so this stays small.
const MAX_CACHED_UNIFORMS: usize = 8192;

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
                        has_dynamic_offset: false,
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
            constants: format!("{constants:?}"),
            read_only: read_only.to_vec(),
        };
        let mut cache = self.pipelines.lock().unwrap();
        let layout = self.layout_for(&mut cache, read_only);
        if let Some(p) = cache.pipelines.get(&key) {
            return Ok((p.clone(), layout));
        }
        if !cache.modules.contains_key(shader.file) {
            let (module, err) = scoped(self, || {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.file),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                })
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

    fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        let mut cache = self.pipelines.lock().unwrap();
        if let Some(b) = cache.uniforms.get(bytes) {
            return b.clone();
        }
        if cache.uniforms.len() >= MAX_CACHED_UNIFORMS {
            cache.uniforms.clear();
        }
        // Uniform buffers are 16-byte aligned in size.
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().max(16).div_ceil(16) * 16, 0);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sop params"),
            size: padded.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: true,
        });
        buf.slice(..)
            .get_mapped_range_mut()
            .expect("freshly created mapped buffer")
            .copy_from_slice(&padded);
        buf.unmap();
        cache.uniforms.insert(bytes.to_vec(), buf.clone());
        buf
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
            return Err(SopError::Limit { op: entry, detail: format!("dispatch {workgroups:?}"), limit: max_dim as u64 });
        }
        let max_binding = self.limits.max_storage_buffer_binding_size as u64;
        for b in binds {
            if b.tensor().bytes() > max_binding {
                return Err(SopError::Limit {
                    op: entry,
                    detail: format!("a binding of {:?} ({} bytes)", b.tensor().shape, b.tensor().bytes()),
                    limit: max_binding,
                });
            }
        }
        let read_only: Vec<bool> = binds.iter().map(Bind::read_only).collect();
        let (pipeline, layout) = self.pipeline(shader, entry, constants, &read_only)?;
        let uniform = self.uniform(params);
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: 1 + i as u32, resource: b.tensor().buffer().as_entire_binding() });
        }
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &layout,
            entries: &entries,
        });
        let profile = self.kernel_profile.get();
        if profile.is_some() {
            self.sync()?; // time this dispatch alone
        }
        let started = std::time::Instant::now();
        self.with_encoder(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: None });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        })?;
        if let Some(p) = profile {
            self.sync()?;
            p.lock().unwrap().add(shader.file, entry, started.elapsed());
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
