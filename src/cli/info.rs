//! `sop info`: the adapters wgpu sees, best first, with the limits kernels depend on.

use crate::error::{SopError, ADAPTER_HINT};
use crate::gpu::list_adapters;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {}

pub fn run(_args: InfoArgs) -> anyhow::Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        return Err(SopError::NoAdapter { hint: ADAPTER_HINT.to_string() }.into());
    }
    for a in adapters {
        let l = &a.limits;
        println!("[{}] {}", a.index, a.name);
        println!("    backend {}, type {}, driver {}", a.backend, a.device_type, a.driver);
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB",
            l.max_storage_buffer_binding_size / (1 << 20),
            l.max_buffer_size / (1 << 20),
            l.max_compute_workgroup_storage_size / 1024
        );
        println!(
            "    invocations/workgroup {}, workgroup size {}x{}x{}, workgroups/dim {}, storage buffers/stage {}",
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_size_x,
            l.max_compute_workgroup_size_y,
            l.max_compute_workgroup_size_z,
            l.max_compute_workgroups_per_dimension,
            l.max_storage_buffers_per_shader_stage
        );
    }
    Ok(())
}
