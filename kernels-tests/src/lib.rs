//! Plain-loop CPU references of every sop kernel, in f64. They are the specification: each
//! GPU kernel is tested against the function of the same name here, and every backward
//! here is itself checked against central finite differences of its forward
//! (`finite_difference`). No dependencies, no tricks: loops a reader can check by eye.

pub mod adamw;
pub mod attention;
pub mod clip;
pub mod cross_entropy;
pub mod elementwise;
pub mod ema;
pub mod gather;
pub mod gelu;
pub mod ibot_objective;
pub mod koleo;
pub mod l2norm;
pub mod layernorm;
pub mod mask_tokens;
pub mod matmul;
pub mod prototypes;
pub mod reduce;
pub mod soft_assign;
pub mod softmax;
pub mod sop_objective;
pub mod tokens;
pub mod topk;
pub mod vit;

/// Central finite differences of a scalar function: d f / d x[i] for every i.
/// Step h = 1e-6 scaled by |x|, error O(h²) in f64.
pub fn finite_difference(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * x[i].abs().max(1.0);
            xs[i] = x[i] + h;
            let fp = f(&xs);
            xs[i] = x[i] - h;
            let fm = f(&xs);
            xs[i] = x[i];
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Σ a·b, the usual way to turn an output into a scalar for gradient checks.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
