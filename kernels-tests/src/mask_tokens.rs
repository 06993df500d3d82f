//! Reference mask-token substitution: y[row] = token where mask[row] != 0 else x[row], for
//! x (rows = B·T, D), mask (rows), token (D).

pub fn mask_tokens_forward(x: &[f64], mask: &[u32], token: &[f64], d: usize) -> Vec<f64> {
    let mut y = x.to_vec();
    for (row, &mk) in mask.iter().enumerate() {
        if mk != 0 {
            y[row * d..(row + 1) * d].copy_from_slice(token);
        }
    }
    y
}

/// (dx, dtoken): dx = dy where not masked, else 0; dtoken = Σ over masked rows of dy.
pub fn mask_tokens_backward(dy: &[f64], mask: &[u32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut dx = dy.to_vec();
    let mut dtoken = vec![0.0; d];
    for (row, &mk) in mask.iter().enumerate() {
        if mk != 0 {
            for j in 0..d {
                dtoken[j] += dy[row * d + j];
                dx[row * d + j] = 0.0;
            }
        }
    }
    (dx, dtoken)
}
