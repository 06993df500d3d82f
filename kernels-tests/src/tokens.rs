//! Reference patchify (im2col with stride = kernel = P) and [CLS] join/split.

/// images (B, C, S, S) -> patches (B·N, C·P·P), column order (c, py, px).
pub fn patchify_forward(img: &[f64], b: usize, c: usize, s: usize, p: usize) -> Vec<f64> {
    let g = s / p;
    let n = g * g;
    let cols = c * p * p;
    let mut out = vec![0.0; b * n * cols];
    for bi in 0..b {
        for ni in 0..n {
            for ci in 0..c {
                for py in 0..p {
                    for px in 0..p {
                        let (y, x) = ((ni / g) * p + py, (ni % g) * p + px);
                        out[(bi * n + ni) * cols + (ci * p + py) * p + px] = img[((bi * c + ci) * s + y) * s + x];
                    }
                }
            }
        }
    }
    out
}

/// Adjoint of `patchify_forward`: scatter each patch entry back to its pixel.
pub fn patchify_backward(dpatches: &[f64], b: usize, c: usize, s: usize, p: usize) -> Vec<f64> {
    let g = s / p;
    let n = g * g;
    let cols = c * p * p;
    let mut dimg = vec![0.0; b * c * s * s];
    for bi in 0..b {
        for ni in 0..n {
            for ci in 0..c {
                for py in 0..p {
                    for px in 0..p {
                        let (y, x) = ((ni / g) * p + py, (ni % g) * p + px);
                        dimg[((bi * c + ci) * s + y) * s + x] +=
                            dpatches[(bi * n + ni) * cols + (ci * p + py) * p + px];
                    }
                }
            }
        }
    }
    dimg
}

/// out (B, 1+N, D) = [cls; x]; `cls` has D (shared) or B·D entries.
pub fn tokens_join(cls: &[f64], x: &[f64], b: usize, n: usize, d: usize) -> Vec<f64> {
    let shared = cls.len() == d;
    let mut out = Vec::with_capacity(b * (n + 1) * d);
    for bi in 0..b {
        out.extend_from_slice(if shared { cls } else { &cls[bi * d..(bi + 1) * d] });
        out.extend_from_slice(&x[bi * n * d..(bi + 1) * n * d]);
    }
    out
}
