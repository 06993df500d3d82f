//! Reference sums: of every element, of squares, and column sums of a (R, C) matrix.
//! Backward: Σx → dx = ds; Σx² → dx = 2·ds·x; sum_rows → dx[r, j] = dc[j].

pub fn sum(x: &[f64]) -> f64 {
    x.iter().sum()
}

pub fn sum_squares(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum()
}

/// (R, C) -> (C).
pub fn sum_rows(x: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; c];
    for i in 0..r {
        for j in 0..c {
            out[j] += x[i * c + j];
        }
    }
    out
}

/// dx of s = Σx²: 2·ds·x.
pub fn sum_squares_backward(x: &[f64], ds: f64) -> Vec<f64> {
    x.iter().map(|v| 2.0 * ds * v).collect()
}

/// dx of c = sum_rows(x): every row gets dc. (R, C).
pub fn sum_rows_backward(dc: &[f64], r: usize) -> Vec<f64> {
    (0..r).flat_map(|_| dc.iter().copied()).collect()
}
