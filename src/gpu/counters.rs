//! What the host asks of the device, counted: dispatches recorded, blocking waits (and pace
//! waits, see `gpu::readback`), bind
//! groups and buffers created (tensors and readback staging, both pooled), uniform bytes written and host time spent recording
//! and encoding.
//! `Gpu::counters()` takes a snapshot; the difference of two snapshots is one step's share
//! (`metrics.jsonl`, `sop bench --step`).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Counters {
    pub dispatches: AtomicU64,
    pub host_waits: AtomicU64,
    pub pace_waits: AtomicU64,
    pub bind_groups_created: AtomicU64,
    pub uniform_bytes: AtomicU64,
    pub record_ns: AtomicU64,
    pub encode_ns: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Totals since the device was made (or, after `since`, between two snapshots).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CounterSnapshot {
    pub dispatches: u64,
    /// Blocking waits on the device: buffer maps waited for and blocking polls.
    pub host_waits: u64,
    /// Waits of a host that ran `MAX_IN_FLIGHT` steps ahead, for the oldest of them, while
    /// the later ones keep the device busy (`gpu::readback`): the device does not idle.
    pub pace_waits: u64,
    pub bind_groups_created: u64,
    pub buffers_created: u64,
    pub uniform_bytes: u64,
    /// Host time spent recording dispatches (pipeline and bind group lookup, uniforms, the
    /// pass commands), ms.
    pub host_ms: f64,
    /// Host time in wgpu's `CommandEncoder::finish`, ms: wgpu validates and encodes the
    /// recorded commands there (deferred encoding), so this is the rest of the recording cost.
    pub encode_ms: f64,
}

impl CounterSnapshot {
    pub(crate) fn read(c: &Counters, pool_buffers: u64) -> CounterSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            dispatches: get(&c.dispatches),
            host_waits: get(&c.host_waits),
            pace_waits: get(&c.pace_waits),
            bind_groups_created: get(&c.bind_groups_created),
            buffers_created: pool_buffers,
            uniform_bytes: get(&c.uniform_bytes),
            host_ms: get(&c.record_ns) as f64 * 1e-6,
            encode_ms: get(&c.encode_ns) as f64 * 1e-6,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            dispatches: self.dispatches - earlier.dispatches,
            host_waits: self.host_waits - earlier.host_waits,
            pace_waits: self.pace_waits - earlier.pace_waits,
            bind_groups_created: self.bind_groups_created - earlier.bind_groups_created,
            buffers_created: self.buffers_created - earlier.buffers_created,
            uniform_bytes: self.uniform_bytes - earlier.uniform_bytes,
            host_ms: self.host_ms - earlier.host_ms,
            encode_ms: self.encode_ms - earlier.encode_ms,
        }
    }
}
