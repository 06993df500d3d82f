//! The engine's error type: structured variants that say which op, file or tensor failed.

use std::path::PathBuf;

pub type Result<T, E = SopError> = std::result::Result<T, E>;

/// How to get a Vulkan (or Metal/DX12) adapter when none is found.
pub const ADAPTER_HINT: &str = "install your GPU's driver, or the software Vulkan driver: \
    on Debian/Ubuntu `apt-get install mesa-vulkan-drivers` (Mesa 25 from bookworm-backports is \
    about 3x faster than Mesa 22), then check with `vulkaninfo --summary`";

#[derive(Debug, thiserror::Error)]
pub enum SopError {
    #[error("no GPU adapter found: {hint}")]
    NoAdapter { hint: String },

    #[error("adapter {wanted:?} not found; available adapters:\n{available}")]
    AdapterNotFound { wanted: String, available: String },

    #[error("could not create a device on adapter {adapter}: {message}")]
    Device { adapter: String, message: String },

    #[error("shader shaders/{file}: {message}")]
    Shader { file: String, message: String },

    #[error("{op}: bad shapes: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: {detail} exceeds the adapter limit {limit}")]
    Limit { op: &'static str, detail: String, limit: u64 },

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    /// A checkpoint that could not be read or written, with its structure kept (which
    /// file, which tensor, what was expected) so callers and tests can match on it.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),

    /// A training configuration that is inconsistent or out of range; the message names the
    /// fields (`model.patch_size`, `augment.local_size`, …).
    #[error("training config: {0}")]
    Config(String),

    /// Training stopped at `step` (counted from 1) because its loss, embeddings or gradients
    /// were not finite; nothing of that step was applied. `checkpoint` is the step of the
    /// checkpoint `folder` keeps, if it has one.
    #[error("step {step}: {reason}; training stopped, {}", stop_note(folder, *checkpoint))]
    TrainingStopped { step: usize, reason: String, folder: PathBuf, checkpoint: Option<usize> },

    #[error("{0}")]
    Invalid(String),
}

/// What a stopped run's folder holds, and what to do next.
fn stop_note(folder: &std::path::Path, checkpoint: Option<usize>) -> String {
    let f = folder.display();
    match checkpoint {
        Some(s) => format!("{f} keeps the checkpoint of step {s} as it was (`--resume {f}` continues from it)"),
        None => format!(
            "no checkpoint had been written yet, so {f} holds nothing to resume (`run.checkpoint_every` sets how often one is written)"
        ),
    }
}

impl SopError {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        SopError::Shape { op, detail: detail.into() }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        SopError::File { path: path.into(), message: message.to_string() }
    }
}
