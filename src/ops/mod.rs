//! One op family per file: shape checks, dispatch, and the backward with its derivation.

pub mod attention;
pub mod matmul;
