//! Reference weighted cross-entropy between distributions:
//! loss = Σ_r w_r Σ_k −q[r, k] · log max(p[r, k], 1e-30), q and p (R, K), w (R).

/// The clamp that guards log(0): the shader's P_MIN is the f32 nearest 1e-30, which differs
/// from this f64 value by a relative 3e-9, far below any test tolerance.
pub const P_MIN: f64 = 1e-30;

pub fn cross_entropy_forward(q: &[f64], p: &[f64], w: &[f64], r: usize, k: usize) -> f64 {
    let mut loss = 0.0;
    for i in 0..r {
        let mut h = 0.0;
        for j in 0..k {
            let qj = q[i * k + j];
            if qj != 0.0 {
                h -= qj * p[i * k + j].max(P_MIN).ln();
            }
        }
        loss += w[i] * h;
    }
    loss
}

/// dp (R, K) = −dloss · w_r · q / max(p, 1e-30).
pub fn cross_entropy_backward(q: &[f64], p: &[f64], w: &[f64], r: usize, k: usize, dloss: f64) -> Vec<f64> {
    (0..r * k).map(|i| -dloss * w[i / k] * q[i] / p[i].max(P_MIN)).collect()
}
