//! Reference LayerNorm over the last dimension, PyTorch semantics (biased variance), for x
//! (R, D) row-major: y = (x − μ)·rstd·γ + β, rstd = 1/√(σ² + eps).

/// Returns (y (R, D), mean (R), rstd (R)).
pub fn layernorm_forward(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    r: usize,
    d: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; r * d];
    let mut mean = vec![0.0; r];
    let mut rstd = vec![0.0; r];
    for i in 0..r {
        let row = &x[i * d..(i + 1) * d];
        let m = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / d as f64;
        let rs = 1.0 / (var + eps).sqrt();
        for j in 0..d {
            y[i * d + j] = (row[j] - m) * rs * gamma[j] + beta[j];
        }
        mean[i] = m;
        rstd[i] = rs;
    }
    (y, mean, rstd)
}

/// Backward: with x̂ = (x − μ)·rstd and g = dy·γ,
/// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), dγ = Σ_rows dy·x̂, dβ = Σ_rows dy.
/// Returns (dx (R, D), dgamma (D), dbeta (D)).
pub fn layernorm_backward(
    dy: &[f64],
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
    r: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; r * d];
    let mut dgamma = vec![0.0; d];
    let mut dbeta = vec![0.0; d];
    for i in 0..r {
        let xhat: Vec<f64> = (0..d).map(|j| (x[i * d + j] - mean[i]) * rstd[i]).collect();
        let g: Vec<f64> = (0..d).map(|j| dy[i * d + j] * gamma[j]).collect();
        let mg = g.iter().sum::<f64>() / d as f64;
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for j in 0..d {
            dx[i * d + j] = rstd[i] * (g[j] - mg - xhat[j] * mgx);
            dgamma[j] += dy[i * d + j] * xhat[j];
            dbeta[j] += dy[i * d + j];
        }
    }
    (dx, dgamma, dbeta)
}
