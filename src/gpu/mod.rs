//! The GPU runtime: device and adapter choice (`context`), pooled tensors with upload and
//! readback (`buffers`), flat tensor sets (`flat`), asynchronous readback (`readback`), the shader/pipeline cache with `dispatch` (`pipelines`), and an
//! opt-in per-kernel timing table (`profile`).

pub mod buffers;
pub mod context;
pub mod counters;
pub mod flat;
pub mod memory;
pub mod params_layout;
pub mod pipelines;
pub mod profile;
pub mod readback;

pub use buffers::{DType, MemoryStats, Tensor};
pub use context::{list_adapters, AdapterSummary, Gpu};
pub use counters::CounterSnapshot;
pub use flat::{FlatLayout, FlatTensors};
pub use pipelines::{Bind, Shader};
