//! soft_assign forward and backward against the f64 reference, and the reference backward
//! against finite differences of the reference forward.
//!
//! Tolerances (f32 kernels vs f64 reference; logits in [-1, 1] like cosine similarities, Y
//! and dp in [-1, 1]):
//! - forward: p_k = Σ_m a_m Y[m, k] with Σ a_m = 1. WGSL's exp is accurate to 3 + 2|x| ULP;
//!   the arguments reach −2/τ = −50, where a_m < e^-40 no longer matters, and where a_m is
//!   large |x| is small, so the weighted relative error of a is ~1e-6; the M-term f32
//!   accumulation adds at most M·2⁻²⁴ (worst case). atol = 1e-5 + M·6e-8; an indexing
//!   mistake moves p by O(0.1).
//! - backward: dlogits_m = (1/τ)·a_m·(g_m − ḡ) with |g| ≤ G = max_m |g_m| ≤ K. The relative
//!   errors of a (~1e-5 worst) and of g (K-term sums: K·6e-8·G) scale with (1/τ)·G:
//!   atol = (1/τ)·G·(2e-5 + K·1.2e-7), rtol 1e-4.

use crate::common::*;
use sop::gpu::{DType, Gpu};
use sop::ops::soft_assign::{soft_assign_backward, soft_assign_forward};
use sop_reference::soft_assign as reference;

fn poison_pool(gpu: &Gpu, shape: &[usize]) {
    let t = gpu.empty(shape, DType::F32).unwrap();
    gpu.fill_f32(&t, f32::NAN).unwrap();
}

fn check(gpu: &Gpu, rng: &mut impl rand::Rng, r: usize, m: usize, k: usize, tau: f32) {
    let logits = randn(rng, r * m);
    let y = randn(rng, m * k);
    let dp = randn(rng, r * k);
    let (l64, y64, dp64) = (f64s(&logits), f64s(&y), f64s(&dp));
    let what = format!("R {r} M {m} K {k} tau {tau}");
    let gl = gpu.upload_f32(&[r, m], &logits).unwrap();
    let gy = gpu.upload_f32(&[m, k], &y).unwrap();
    let gdp = gpu.upload_f32(&[r, k], &dp).unwrap();

    poison_pool(gpu, &[r, k]);
    let p = soft_assign_forward(gpu, &gl, &gy, tau).unwrap();
    assert_eq!(p.shape, vec![r, k]);
    let want = reference::soft_assign_forward(&l64, &y64, r, m, k, tau as f64);
    assert_close(&format!("p, {what}"), &gpu.read_f32(&p).unwrap(), &want, 1e-5 + m as f64 * 6e-8, 0.0);

    poison_pool(gpu, &[r, m]);
    let dlogits = soft_assign_backward(gpu, &gl, &gy, tau, &gdp).unwrap();
    assert_eq!(dlogits.shape, vec![r, m]);
    let want = reference::soft_assign_backward(&l64, &y64, &dp64, r, m, k, tau as f64);
    let g_max = (0..r * m)
        .map(|i| {
            let (row, mm) = (i / m, i % m);
            (0..k).map(|kk| dp64[row * k + kk] * y64[mm * k + kk]).sum::<f64>().abs()
        })
        .fold(0.0, f64::max);
    let atol = g_max / tau as f64 * (2e-5 + k as f64 * 1.2e-7) + 1e-30;
    assert_close(&format!("dlogits, {what}"), &gpu.read_f32(&dlogits).unwrap(), &want, atol, 1e-4);
}

#[test]
fn soft_assign_forward_backward_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for &(r, m, k, tau) in &[
        (1, 1, 1, 0.1),
        (3, 5, 7, 0.04),
        (63, 17, 65, 0.1),
        (65, 257, 3, 1.0),
        (257, 33, 16, 0.04),
        (2, 300, 40, 0.1),
        (5, 16, 17, 0.5),
        (70, 31, 32, 0.04),
    ] {
        check(&gpu, &mut rng, r, m, k, tau);
    }
}

#[test]
fn soft_assign_leading_dims_carry_over() {
    let gpu = gpu();
    let mut rng = rng();
    let (b, t, m, k) = (2, 3, 9, 5);
    let logits = randn(&mut rng, b * t * m);
    let y = randn(&mut rng, m * k);
    let gl = gpu.upload_f32(&[b, t, m], &logits).unwrap();
    let gy = gpu.upload_f32(&[m, k], &y).unwrap();
    let p = soft_assign_forward(&gpu, &gl, &gy, 0.1).unwrap();
    assert_eq!(p.shape, vec![b, t, k]);
    let want = reference::soft_assign_forward(&f64s(&logits), &f64s(&y), b * t, m, k, 0.1);
    assert_close("p (B, T, K)", &gpu.read_f32(&p).unwrap(), &want, 1e-5, 0.0);
}

#[test]
fn soft_assign_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    let (r, m, k) = (2, 5, 3);
    for tau in [0.5, 0.1, 0.04] {
        let logits = f64s(&randn(&mut rng, r * m));
        let y = f64s(&randn(&mut rng, m * k));
        let dp = f64s(&randn(&mut rng, r * k));
        let dlogits = reference::soft_assign_backward(&logits, &y, &dp, r, m, k, tau);
        let fd = sop_reference::finite_difference(&logits, |l| {
            sop_reference::dot(&reference::soft_assign_forward(l, &y, r, m, k, tau), &dp)
        });
        // Central differences: truncation h²·f'''/6 with f''' ~ 1/τ³ ≤ 2e4 and h = 1e-6 gives
        // ~1e-8; rounding ~1e-16/h = 1e-10.
        assert_close_f64(&format!("dlogits tau {tau}"), &dlogits, &fd, 1e-7, 1e-6);
    }
}

#[test]
fn soft_assign_rejects_bad_arguments() {
    let gpu = gpu();
    let l = gpu.zeros(&[4, 6], DType::F32).unwrap();
    let y = gpu.zeros(&[6, 3], DType::F32).unwrap();
    let y_bad = gpu.zeros(&[5, 3], DType::F32).unwrap();
    let dp_bad = gpu.zeros(&[4, 4], DType::F32).unwrap();
    assert!(soft_assign_forward(&gpu, &l, &y_bad, 0.1).unwrap_err().to_string().contains("differs"));
    assert!(soft_assign_forward(&gpu, &l, &y, 0.0).unwrap_err().to_string().contains("tau"));
    assert!(soft_assign_forward(&gpu, &l, &y, f32::NAN).is_err());
    assert!(soft_assign_backward(&gpu, &l, &y, 0.1, &dp_bad).unwrap_err().to_string().contains("dp"));
}
