//! Every kernel test in one binary (one link against wgpu instead of one per file; run one
//! kernel's tests with `cargo test --release --test kernels -- matmul`).
//! Each module tests one kernel (or one reference) against the f64 CPU references of
//! `sop_reference`.

mod common;

mod adamw;
mod attention;
mod cross_entropy;
mod elementwise;
mod ema;
mod gather;
mod gelu;
mod ibot_objective;
mod koleo;
mod l2norm;
mod layernorm;
mod mask_tokens;
mod matmul;
mod multi_tensor;
mod prototypes;
mod reduce;
mod soft_assign;
mod softmax;
mod sop_objective_gpu;
mod sop_objective_reference;
mod sop_objective_torch;
mod tokens;
mod topk;
mod vit_reference;
mod vit_tape;
mod vit_torch;
