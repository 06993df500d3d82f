//! One op family per file: shape checks, dispatch, and the backward with its derivation.

pub mod attention;
pub mod matmul;
pub mod adamw;
pub mod cross_entropy;
pub mod elementwise;
pub mod ema;
pub mod gather;
pub mod gelu;
pub mod l2norm;
pub mod launch;
pub mod layernorm;
pub mod mask_tokens;
pub mod reduce;
pub mod soft_assign;
pub mod softmax;
pub mod tokens;
pub mod topk;
