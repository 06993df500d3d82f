//! The GPU runtime: device and adapter choice (`context`), pooled tensors with upload and
//! readback (`buffers`), and the shader/pipeline cache with `dispatch` (`pipelines`).

pub mod buffers;
pub mod context;
pub mod pipelines;

pub use buffers::{DType, Tensor};
pub use context::{list_adapters, AdapterSummary, Gpu};
pub use pipelines::{Bind, Shader};
