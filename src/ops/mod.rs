//! One op family per file: shape checks, dispatch, and the backward with its derivation.

pub mod matmul;
pub mod adamw;
pub mod cross_entropy;
pub mod ema;
pub mod gather;
pub mod mask_tokens;
pub mod soft_assign;
pub mod tokens;
pub mod topk;
