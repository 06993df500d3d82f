//! Reference pointwise ops and their backward.

pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

pub fn mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

pub fn scale(a: &[f64], s: f64) -> Vec<f64> {
    a.iter().map(|x| s * x).collect()
}

/// y + alpha·x.
pub fn add_scaled(y: &[f64], x: &[f64], alpha: f64) -> Vec<f64> {
    y.iter().zip(x).map(|(v, w)| v + alpha * w).collect()
}

/// y[i] = x[i] + b[i mod len(b)].
pub fn add_broadcast(x: &[f64], b: &[f64]) -> Vec<f64> {
    x.iter().enumerate().map(|(i, v)| v + b[i % b.len()]).collect()
}

/// Backward of add_broadcast: (dx = dy, db = column sums of dy seen as (len(dy)/len(b), len(b))).
pub fn add_broadcast_backward(dy: &[f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut db = vec![0.0; m];
    for (i, g) in dy.iter().enumerate() {
        db[i % m] += g;
    }
    (dy.to_vec(), db)
}

/// y[b, …] = s[b]·x[b, …] for x of len(s) samples.
pub fn scale_samples(x: &[f64], s: &[f64]) -> Vec<f64> {
    let per = x.len() / s.len();
    x.iter().enumerate().map(|(i, v)| s[i / per] * v).collect()
}

/// Backward of scale_samples in x: dx = scale_samples(dy, s).
pub fn scale_samples_backward(dy: &[f64], s: &[f64]) -> Vec<f64> {
    scale_samples(dy, s)
}

/// Backward of mul: (da = dy·b, db = dy·a).
pub fn mul_backward(a: &[f64], b: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    (mul(dy, b), mul(dy, a))
}
