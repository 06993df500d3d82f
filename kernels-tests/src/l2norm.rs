//! Reference L2 normalisation of each row of x (R, C), PyTorch F.normalize semantics:
//! y = x / max(‖x‖₂, eps).

/// Returns (y (R, C), norm (R)), norm unclamped.
pub fn l2norm_forward(x: &[f64], r: usize, c: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; r * c];
    let mut norm = vec![0.0; r];
    for (i, n_i) in norm.iter_mut().enumerate() {
        let row = &x[i * c..(i + 1) * c];
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let d = n.max(eps);
        for j in 0..c {
            y[i * c + j] = row[j] / d;
        }
        *n_i = n;
    }
    (y, norm)
}

/// n > eps: dx = dy/n − x·(x·dy)/n³;  n ≤ eps: dx = dy/eps.
pub fn l2norm_backward(dy: &[f64], x: &[f64], norm: &[f64], r: usize, c: usize, eps: f64) -> Vec<f64> {
    let mut dx = vec![0.0; r * c];
    for (i, &n) in norm.iter().enumerate().take(r) {
        let o = i * c;
        if n > eps {
            let s: f64 = (0..c).map(|j| x[o + j] * dy[o + j]).sum();
            for j in 0..c {
                dx[o + j] = dy[o + j] / n - x[o + j] * s / (n * n * n);
            }
        } else {
            for j in 0..c {
                dx[o + j] = dy[o + j] / eps;
            }
        }
    }
    dx
}
