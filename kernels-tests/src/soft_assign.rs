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
