//! Position-embedding interpolation to another patch grid, exactly as iBOT's
//! `interpolate_pos_encoding` does it, as a matrix the GPU applies with a matmul.
//!
//! iBOT reshapes the N = G² patch rows of `pos_embed` to a (D, G, G) image and calls
//! `F.interpolate(scale_factor = ((G'+0.1)/G, (G'+0.1)/G), mode='bicubic',
//! align_corners=False)`; the [CLS] row is kept as is, and when G' = G nothing is
//! interpolated. PyTorch then maps output pixel o to the source coordinate
//! x = (o + 0.5)·s − 0.5 with s = 1/scale_factor = G/(G'+0.1) (the given factor, not G/G'),
//! takes the four taps ⌊x⌋−1 … ⌊x⌋+2 clamped to [0, G−1], with the cubic-convolution weights
//! of t = x − ⌊x⌋ (Keys, A = −0.75). The 2-D resampling is separable, so the matrix is the
//! Kronecker product W ⊗ W of the 1-D (G', G) weights.
//!
//! Forward on patch rows: pos'[N', D] = M (N', N) · pos[N, D]; backward: dpos = Mᵀ · dpos'.
//! This file mirrors `sop_reference::vit::pos_embed_interp_matrix` line for line (the same
//! f64 arithmetic, rounded to f32 at the end).

/// PyTorch's cubic-convolution constant.
const A: f64 = -0.75;

/// Weights of the four taps for a fractional offset t ∈ [0, 1] (PyTorch's
/// `get_cubic_upsample_coefficients`).
fn cubic_coeffs(t: f64) -> [f64; 4] {
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; // |x| ≤ 1
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; // 1 < |x| < 2
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// The 1-D (new, old) resampling weights of iBOT's bicubic interpolation; identity when
/// old == new (iBOT returns the stored embedding unchanged then).
fn interp_weights_1d(old: usize, new: usize) -> Vec<f64> {
    let mut w = vec![0.0; new * old];
    if old == new {
        for i in 0..new {
            w[i * old + i] = 1.0;
        }
        return w;
    }
    let scale = old as f64 / (new as f64 + 0.1);
    for o in 0..new {
        let x = scale * (o as f64 + 0.5) - 0.5;
        // PyTorch's guard_index_and_lambda.
        let i0 = (x.floor() as i64).min(old as i64 - 1);
        let t = (x - i0 as f64).clamp(0.0, 1.0);
        for (j, c) in cubic_coeffs(t).into_iter().enumerate() {
            let src = (i0 - 1 + j as i64).clamp(0, old as i64 - 1) as usize;
            w[o * old + src] += c;
        }
    }
    w
}

/// The (G'², G²) matrix, row-major, that takes the G×G grid of patch position embeddings to
/// a G'×G' grid (rows and columns in row-major grid order y·G + x). Panics on a zero grid.
pub fn pos_embed_interp_matrix(old_grid: usize, new_grid: usize) -> Vec<f32> {
    assert!(old_grid > 0 && new_grid > 0, "pos_embed_interp_matrix: grids must be positive");
    let w = interp_weights_1d(old_grid, new_grid);
    let (n_old, n_new) = (old_grid * old_grid, new_grid * new_grid);
    let mut m = vec![0.0f32; n_new * n_old];
    for oy in 0..new_grid {
        for ox in 0..new_grid {
            let row = oy * new_grid + ox;
            for iy in 0..old_grid {
                for ix in 0..old_grid {
                    let v = w[oy * old_grid + iy] * w[ox * old_grid + ix];
                    m[row * n_old + iy * old_grid + ix] = v as f32;
                }
            }
        }
    }
    m
}

/// Host-side interpolation of a whole `pos_embed` (1 + G², D) → (1 + G'², D): [CLS] row kept,
/// patch rows resampled. For loading or exporting weights at another resolution.
pub fn interpolate_pos_embed(pos: &[f32], old_grid: usize, new_grid: usize, dim: usize) -> Vec<f32> {
    let (n_old, n_new) = (old_grid * old_grid, new_grid * new_grid);
    assert_eq!(pos.len(), (1 + n_old) * dim, "interpolate_pos_embed: pos_embed is not (1 + {n_old}, {dim})");
    let m = pos_embed_interp_matrix(old_grid, new_grid);
    let mut out = vec![0.0f32; (1 + n_new) * dim];
    out[..dim].copy_from_slice(&pos[..dim]);
    for r in 0..n_new {
        for c in 0..dim {
            let mut acc = 0.0f64;
            for k in 0..n_old {
                acc += m[r * n_old + k] as f64 * pos[(1 + k) * dim + c] as f64;
            }
            out[(1 + r) * dim + c] = acc as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_same_grid_is_identity() {
        for (g, h) in [(4, 3), (4, 6), (14, 6), (2, 7), (1, 3), (5, 5)] {
            let m = pos_embed_interp_matrix(g, h);
            for r in 0..h * h {
                let s: f32 = m[r * g * g..(r + 1) * g * g].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "({g}->{h}) row {r} sums to {s}");
            }
        }
        let m = pos_embed_interp_matrix(3, 3);
        for r in 0..9 {
            for c in 0..9 {
                assert_eq!(m[r * 9 + c], if r == c { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn constant_embedding_stays_constant() {
        let pos: Vec<f32> = (0..(1 + 16) * 2).map(|i| if i < 2 { 9.0 } else { 0.5 + (i % 2) as f32 }).collect();
        let out = interpolate_pos_embed(&pos, 4, 6, 2);
        assert_eq!(&out[..2], &[9.0, 9.0]);
        for r in 1..37 {
            assert!((out[r * 2] - 0.5).abs() < 1e-6 && (out[r * 2 + 1] - 1.5).abs() < 1e-6);
        }
    }
}
