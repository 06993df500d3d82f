//! How much memory the device offers (`DeviceMemory`), for the memory plan of `sop train`.
//!
//! wgpu has no memory query, so each source is named where it is used:
//! - `SOP_DEVICE_MEMORY` (bytes, or with a KiB/MiB/GiB/KB/MB/GB suffix): the user's figure,
//!   on any adapter.
//! - CPU adapters (llvmpipe/lavapipe, SwiftShader, WARP): the host's available RAM
//!   (`MemAvailable` of /proc/meminfo), since their "device" memory is the host's.
//! - Vulkan adapters: the largest DEVICE_LOCAL memory heap of the physical device
//!   (vkGetPhysicalDeviceMemoryProperties, through wgpu-hal). This is the card's total, not
//!   what other programs leave free.
//! - Anything else: unknown (a fixed batch still trains; `--batch-size auto` asks for
//!   `SOP_DEVICE_MEMORY`).

/// Bytes the device offers and where the figure comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub bytes: u64,
    pub source: String,
}

/// `SOP_DEVICE_MEMORY`'s value parsed: "12GiB", "8 GB", "1073741824".
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some((n * mult as f64) as u64)
}

/// The host's available RAM (Linux `MemAvailable`).
fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The largest DEVICE_LOCAL heap of a Vulkan adapter.
#[cfg(any(target_os = "linux", target_os = "windows"))]
fn vulkan_device_local(adapter: &wgpu::Adapter) -> Option<u64> {
    use ash::vk;
    // SAFETY: the hal adapter is only read (its instance and physical device handles), while
    // the wgpu adapter it belongs to is alive.
    unsafe {
        let hal = adapter.as_hal::<wgpu::hal::api::Vulkan>()?;
        let instance = hal.shared_instance().raw_instance();
        let props = instance.get_physical_device_memory_properties(hal.raw_physical_device());
        props
            .memory_heaps_as_slice()
            .iter()
            .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .max()
    }
}

#[cfg(not(any(target_os = "linux", target_os = "windows")))]
fn vulkan_device_local(_: &wgpu::Adapter) -> Option<u64> {
    None
}

/// What `adapter` offers, by the first source above that answers; a `SOP_DEVICE_MEMORY`
/// that does not parse is refused (never silently replaced by another source).
pub fn query(adapter: &wgpu::Adapter) -> crate::error::Result<Option<DeviceMemory>> {
    if let Ok(v) = std::env::var("SOP_DEVICE_MEMORY") {
        let bytes = parse_bytes(&v).ok_or_else(|| {
            crate::error::SopError::Invalid(format!(
                "SOP_DEVICE_MEMORY={v:?} is not a size: give bytes or a number with KiB/MiB/GiB/KB/MB/GB, e.g. 8GiB"
            ))
        })?;
        return Ok(Some(DeviceMemory { bytes, source: "SOP_DEVICE_MEMORY".into() }));
    }
    Ok(query_adapter(adapter))
}

/// What the adapter itself says (host RAM for CPU adapters, the Vulkan heaps).
fn query_adapter(adapter: &wgpu::Adapter) -> Option<DeviceMemory> {
    let info = adapter.get_info();
    if info.device_type == wgpu::DeviceType::Cpu {
        return host_available()
            .map(|bytes| DeviceMemory { bytes, source: "host RAM available (CPU adapter; /proc/meminfo)".into() });
    }
    if info.backend == wgpu::Backend::Vulkan {
        return vulkan_device_local(adapter)
            .map(|bytes| DeviceMemory { bytes, source: "largest Vulkan DEVICE_LOCAL heap".into() });
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_with_units() {
        use super::parse_bytes;
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("12GiB"), Some(12 << 30));
        assert_eq!(parse_bytes("1.5 GiB"), Some(3 << 29));
        assert_eq!(parse_bytes("8GB"), Some(8_000_000_000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("8 parsecs"), None);
    }
}
