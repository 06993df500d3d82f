//! One op family per file: shape checks, dispatch, and the backward with its derivation.

pub mod matmul;
pub mod elementwise;
pub mod gelu;
pub mod l2norm;
pub mod launch;
pub mod layernorm;
pub mod reduce;
pub mod softmax;
