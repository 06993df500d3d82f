//! Helpers of the training tests (tests/train.rs, tests/train_ibot.rs): the adapter, the
//! tiny configuration they train, fresh temporary folders and a checkpoint's tensors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sop::checkpoint;
use sop::train::config::TrainConfig;

pub fn gpu() -> sop::Gpu {
    sop::Gpu::new(None).unwrap_or_else(|e| panic!("training tests need a GPU adapter: {e}"))
}

/// `TrainConfig::smoke` on the bundled subset, without the k-NN evaluations.
pub fn tiny(out: &Path) -> TrainConfig {
    let mut c =
        TrainConfig::smoke(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist"), out.to_path_buf());
    c.run.no_eval = true;
    c
}

/// A temporary folder name, removed if it exists, unique to this process.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sop-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every tensor of a safetensors file.
pub fn weights(path: &Path) -> checkpoint::TensorMap {
    checkpoint::read(path).unwrap().tensors
}
