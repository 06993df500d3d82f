//! Reference batched matmul: C[b] = alpha · op(A[b]) · op(B[b]) + bias, with A (batch, M, K)
//! stored row-major or, when `trans_a`, as (batch, K, M); likewise B. `b_batched = false`
//! shares one B across the batch.

#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    a: &[f64],
    b: &[f64],
    bias: Option<&[f64]>,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    b_batched: bool,
    alpha: f64,
) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let a0 = bi * m * k;
        let b0 = if b_batched { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for kk in 0..k {
                    let av = if trans_a { a[a0 + kk * m + i] } else { a[a0 + i * k + kk] };
                    let bv = if trans_b { b[b0 + j * k + kk] } else { b[b0 + kk * n + j] };
                    acc += av * bv;
                }
                c[bi * m * n + i * n + j] = alpha * acc + bias.map_or(0.0, |bb| bb[j]);
            }
        }
    }
    c
}

/// Backward of C = A·B (no transposes, one batch): dA = dC·Bᵀ (M, K), dB = Aᵀ·dC (K, N),
/// dbias = Σ_i dC[i, :].
pub fn matmul_backward(
    a: &[f64],
    b: &[f64],
    dc: &[f64],
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut da = vec![0.0; m * k];
    let mut db = vec![0.0; k * n];
    let mut dbias = vec![0.0; n];
    for i in 0..m {
        for j in 0..n {
            let g = dc[i * n + j];
            dbias[j] += g;
            for kk in 0..k {
                da[i * k + kk] += g * b[kk * n + j];
                db[kk * n + j] += g * a[i * k + kk];
            }
        }
    }
    (da, db, dbias)
}
