//! sop: Self-Organizing Visual Prototypes (SOP) pre-training of Vision Transformers on any
//! GPU through hand-written WGSL compute shaders on wgpu.
//!
//! A short tour:
//! - `gpu`: adapter and device, pooled tensors, the shader/pipeline cache, `dispatch`.
//! - `ops`: one op family per file, each dispatching one `shaders/<op>.wgsl`.
//! - `data`: datasets (image folders, IDX), multi-crop augmentation, block masks, loader.
//! - `bench`: validate-then-time harness behind `sop bench` and `cargo bench`.
//!
//! Shape legend used in comments: B batch, T tokens, D width, H heads, Dh head width,
//! M rows of a matrix product, N columns, K inner dimension.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod rng;
pub mod sop;
pub mod tape;
pub mod train;

pub use error::{Result, SopError};
pub use gpu::{Gpu, Tensor};
