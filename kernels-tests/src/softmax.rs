//! Reference row-wise softmax with a scale: y = softmax(scale·x) over each row of x (R, C).

pub fn softmax_forward(x: &[f64], r: usize, c: usize, scale: f64) -> Vec<f64> {
    let mut y = vec![0.0; r * c];
    for i in 0..r {
        let row = &x[i * c..(i + 1) * c];
        let m = row.iter().map(|v| scale * v).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|v| (scale * v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        for j in 0..c {
            y[i * c + j] = e[j] / s;
        }
    }
    y
}

/// dx = scale·y⊙(dy − Σ_j y_j dy_j) per row.
pub fn softmax_backward(y: &[f64], dy: &[f64], r: usize, c: usize, scale: f64) -> Vec<f64> {
    let mut dx = vec![0.0; r * c];
    for i in 0..r {
        let o = i * c;
        let s: f64 = (0..c).map(|j| y[o + j] * dy[o + j]).sum();
        for j in 0..c {
            dx[o + j] = scale * y[o + j] * (dy[o + j] - s);
        }
    }
    dx
}
