//! Reference KoLeo on groups of B consecutive rows of x (R, C):
//!   L = −(1/B) Σ_i ln(‖x_i − x_nn(i)‖ + eps),
//! nn(i) the row j ≠ i of i's group with the largest x_i·x_j (the first on ties).

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Each row's neighbour in its group of `b` rows.
pub fn koleo_neighbours(x: &[f64], r: usize, c: usize, b: usize) -> Vec<usize> {
    (0..r)
        .map(|i| {
            let g0 = i / b * b;
            let xi = &x[i * c..(i + 1) * c];
            let mut best: Option<(usize, f64)> = None;
            for j in (g0..g0 + b).filter(|&j| j != i) {
                let s = dot(xi, &x[j * c..(j + 1) * c]);
                if best.is_none_or(|(_, v)| s > v) {
                    best = Some((j, s));
                }
            }
            best.expect("groups of at least 2 rows").0
        })
        .collect()
}

/// d_i = ‖x_i − x_nn(i)‖ for given neighbours.
pub fn koleo_distances(x: &[f64], nn: &[usize], c: usize) -> Vec<f64> {
    nn.iter()
        .enumerate()
        .map(|(i, &j)| (0..c).map(|k| (x[i * c + k] - x[j * c + k]).powi(2)).sum::<f64>().sqrt())
        .collect()
}

/// L for given neighbours.
pub fn koleo_loss(x: &[f64], nn: &[usize], c: usize, b: usize, eps: f64) -> f64 {
    -koleo_distances(x, nn, c).iter().map(|d| (d + eps).ln()).sum::<f64>() / b as f64
}

/// L with the neighbours found in x (what a finite difference of the loss differentiates).
pub fn koleo_forward(x: &[f64], r: usize, c: usize, b: usize, eps: f64) -> f64 {
    koleo_loss(x, &koleo_neighbours(x, r, c, b), c, b, eps)
}

/// dx = scale · ∂L/∂x with the neighbours held fixed; a pair at distance 0 contributes 0.
pub fn koleo_backward(x: &[f64], nn: &[usize], c: usize, b: usize, eps: f64, scale: f64) -> Vec<f64> {
    let d = koleo_distances(x, nn, c);
    let mut dx = vec![0.0; x.len()];
    for (i, &j) in nn.iter().enumerate() {
        if d[i] == 0.0 {
            continue;
        }
        // ∂L/∂d_i = −(1/B)/(d_i + eps); ∂d_i/∂x_i = (x_i − x_j)/d_i = −∂d_i/∂x_j.
        let g = -scale / b as f64 / (d[i] + eps) / d[i];
        for k in 0..c {
            let v = g * (x[i * c + k] - x[j * c + k]);
            dx[i * c + k] += v;
            dx[j * c + k] -= v;
        }
    }
    dx
}
