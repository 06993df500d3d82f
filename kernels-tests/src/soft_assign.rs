//! Reference SOP soft assignment: p = softmax(logits / τ) · Y, logits (R, M), Y (M, K).

/// softmax(logits[r] / τ) of one row, max-subtracted.
pub fn softmax_row(logits: &[f64], tau: f64) -> Vec<f64> {
    let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&l| ((l - mx) / tau).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// p (R, K).
pub fn soft_assign_forward(logits: &[f64], y: &[f64], r: usize, m: usize, k: usize, tau: f64) -> Vec<f64> {
    let mut p = vec![0.0; r * k];
    for i in 0..r {
        let a = softmax_row(&logits[i * m..(i + 1) * m], tau);
        for (mm, am) in a.iter().enumerate() {
            for kk in 0..k {
                p[i * k + kk] += am * y[mm * k + kk];
            }
        }
    }
    p
}

/// dlogits (R, M): with a = softmax(logits/τ), g_m = Σ_k dp_k Y[m, k],
/// dlogits_m = (1/τ)·a_m·(g_m − Σ_m' a_m' g_m').
pub fn soft_assign_backward(logits: &[f64], y: &[f64], dp: &[f64], r: usize, m: usize, k: usize, tau: f64) -> Vec<f64> {
    let mut dlogits = vec![0.0; r * m];
    for i in 0..r {
        let a = softmax_row(&logits[i * m..(i + 1) * m], tau);
        let g: Vec<f64> = (0..m).map(|mm| (0..k).map(|kk| dp[i * k + kk] * y[mm * k + kk]).sum()).collect();
        let g_bar: f64 = a.iter().zip(&g).map(|(a, g)| a * g).sum();
        for mm in 0..m {
            dlogits[i * m + mm] = a[mm] * (g[mm] - g_bar) / tau;
        }
    }
    dlogits
}

/// logits (R, M) = u·Dᵀ for u (R, W), D (M, W).
pub fn logits(u: &[f64], d: &[f64], r: usize, m: usize, w: usize) -> Vec<f64> {
    let mut l = vec![0.0; r * m];
    for i in 0..r {
        for mm in 0..m {
            l[i * m + mm] = (0..w).map(|j| u[i * w + j] * d[mm * w + j]).sum();
        }
    }
    l
}

/// The whole assignment p (R, K) = softmax(u·Dᵀ/τ)·Y.
#[allow(clippy::too_many_arguments)]
pub fn assign_forward(u: &[f64], d: &[f64], y: &[f64], r: usize, m: usize, k: usize, w: usize, tau: f64) -> Vec<f64> {
    soft_assign_forward(&logits(u, d, r, m, w), y, r, m, k, tau)
}

/// du (R, W) = dlogits·D, dlogits from `soft_assign_backward` at logits u·Dᵀ.
#[allow(clippy::too_many_arguments)]
pub fn assign_backward(
    u: &[f64],
    d: &[f64],
    y: &[f64],
    dp: &[f64],
    r: usize,
    m: usize,
    k: usize,
    w: usize,
    tau: f64,
) -> Vec<f64> {
    let dl = soft_assign_backward(&logits(u, d, r, m, w), y, dp, r, m, k, tau);
    let mut du = vec![0.0; r * w];
    for i in 0..r {
        for mm in 0..m {
            for j in 0..w {
                du[i * w + j] += dl[i * m + mm] * d[mm * w + j];
            }
        }
    }
    du
}

/// SOP's vote matrix (prototypes.wgsl) for member weights `w_r` (M = K·E, member m of
/// prototype m / E): Y[m, q] = (q == m / E ? w_m : (1 − w_m)/(K − 1)) / (w_m + (1 − w_m)).
pub fn owned_votes(weights: &[f64], k: usize, e: usize) -> Vec<f64> {
    let m = weights.len();
    assert_eq!(m, k * e, "M = K·E");
    let mut y = vec![0.0; m * k];
    for (mm, &wr) in weights.iter().enumerate() {
        for q in 0..k {
            let v = if q == mm / e { wr } else { (1.0 - wr) / (k.max(2) - 1) as f64 };
            y[mm * k + q] = v / (wr + (1.0 - wr));
        }
    }
    y
}
