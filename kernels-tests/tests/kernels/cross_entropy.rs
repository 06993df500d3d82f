//! cross_entropy forward and backward against the f64 reference, the clamp at p = 0, a
//! determinism check, and the reference backward against finite differences.
//!
//! Tolerances: every term w·(−q log p) is ≥ 0 (q, w ≥ 0, p ≤ 1), so the f32 sum has a
//! relative error of at most (K + tree depth)·2⁻²⁴ plus WGSL's log error (absolute 2⁻²¹ for
//! p in [0.5, 2], 3 ULP elsewhere): rtol 1e-5 and atol 1e-6·Σw (the absolute log error,
//! summed). The backward is three f32 operations per element: rtol 1e-6.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::cross_entropy::{cross_entropy_backward, cross_entropy_forward};
use sop_reference::cross_entropy as reference;

fn poison_pool(gpu: &Gpu, shape: &[usize]) {
    let t = gpu.empty(shape, DType::F32).unwrap();
    gpu.fill_f32(&t, f32::NAN).unwrap();
}

/// r rows of k-way distributions with entries at least `floor` before normalising.
fn distributions(rng: &mut impl Rng, r: usize, k: usize, floor: f32) -> Vec<f32> {
    let mut x: Vec<f32> = (0..r * k).map(|_| rng.random_range(floor..1.0)).collect();
    for row in x.chunks_mut(k) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    x
}

#[allow(clippy::too_many_arguments)]
fn check(gpu: &Gpu, q: &[f32], p: &[f32], w: &[f32], r: usize, k: usize, dloss: f32, what: &str) {
    let (gq, gp, gw) =
        (gpu.upload_f32(&[r, k], q).unwrap(), gpu.upload_f32(&[r, k], p).unwrap(), gpu.upload_f32(&[r], w).unwrap());
    let (q64, p64, w64) = (f64s(q), f64s(p), f64s(w));
    poison_pool(gpu, &[1]);
    let loss = cross_entropy_forward(gpu, &gq, &gp, &gw).unwrap();
    assert_eq!(loss.shape, vec![1]);
    let want = reference::cross_entropy_forward(&q64, &p64, &w64, r, k);
    let w_sum: f64 = w64.iter().sum();
    assert_close(&format!("loss, {what} R {r} K {k}"), &gpu.read_f32(&loss).unwrap(), &[want], 1e-6 * w_sum, 1e-5);

    poison_pool(gpu, &[r, k]);
    let dp = cross_entropy_backward(gpu, &gq, &gp, &gw, dloss).unwrap();
    assert_eq!(dp.shape, vec![r, k]);
    let want = reference::cross_entropy_backward(&q64, &p64, &w64, r, k, dloss as f64);
    assert_close(&format!("dp, {what} R {r} K {k}"), &gpu.read_f32(&dp).unwrap(), &want, 0.0, 1e-6);
}

#[test]
fn cross_entropy_forward_backward_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    // 4,100 rows need three summation stages (4,100 → 65 → 2 → 1).
    for &(r, k) in &[(1, 1), (3, 7), (63, 65), (257, 33), (65, 5), (4100, 3), (4096, 2), (64, 64)] {
        let q = distributions(&mut rng, r, k, 0.0);
        let p = distributions(&mut rng, r, k, 0.01);
        let w: Vec<f32> = (0..r).map(|_| rng.random_range(0.0..1.0)).collect();
        check(&gpu, &q, &p, &w, r, k, rng.random_range(0.5..2.0), "random");
    }
}

#[test]
fn cross_entropy_clamps_p_at_zero() {
    let gpu = gpu();
    // Row 0: p = 0 where q = 0.5 (clamped: −0.5·log 1e-30 ≈ 34.5, dp ≈ −5e29·w), and p = 0
    // where q = 0 (no contribution, dp = 0). Row 1: an ordinary row.
    let q = [0.5, 0.5, 0.0, 0.2, 0.3, 0.5];
    let p = [0.0, 1.0, 0.0, 0.3, 0.3, 0.4];
    let w = [0.25, 1.5];
    check(&gpu, &q, &p, &w, 2, 3, 1.0, "clamp");
}

#[test]
fn cross_entropy_forward_is_deterministic() {
    let gpu = gpu();
    let mut rng = rng();
    let (r, k) = (3000, 17);
    let gq = gpu.upload_f32(&[r, k], &distributions(&mut rng, r, k, 0.0)).unwrap();
    let gp = gpu.upload_f32(&[r, k], &distributions(&mut rng, r, k, 0.0)).unwrap();
    let gw = gpu.upload_f32(&[r], &randn(&mut rng, r)).unwrap();
    let first = gpu.read_f32(&cross_entropy_forward(&gpu, &gq, &gp, &gw).unwrap()).unwrap();
    for _ in 0..3 {
        let again = gpu.read_f32(&cross_entropy_forward(&gpu, &gq, &gp, &gw).unwrap()).unwrap();
        assert_eq!(first[0].to_bits(), again[0].to_bits(), "loss {} then {}", first[0], again[0]);
    }
}

#[test]
fn cross_entropy_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    let (r, k) = (3, 4);
    let q = f64s(&distributions(&mut rng, r, k, 0.0));
    let p = f64s(&distributions(&mut rng, r, k, 0.2)); // away from the clamp
    let w = f64s(&(0..r).map(|_| rng.random_range(0.1f32..1.0)).collect::<Vec<_>>());
    let dloss = 0.7;
    let dp = reference::cross_entropy_backward(&q, &p, &w, r, k, dloss);
    let fd = sop_reference::finite_difference(&p, |p| dloss * reference::cross_entropy_forward(&q, p, &w, r, k));
    // p ≥ 0.05: f''' ≤ 2/p³ ≈ 1.6e4, truncation h²·f'''/6 ~ 3e-9 with h = 1e-6.
    assert_close_f64("dp", &dp, &fd, 1e-7, 1e-6);
}

#[test]
fn cross_entropy_rejects_bad_shapes() {
    let gpu = gpu();
    let q = gpu.zeros(&[4, 5], DType::F32).unwrap();
    let p = gpu.zeros(&[4, 6], DType::F32).unwrap();
    let w = gpu.zeros(&[4], DType::F32).unwrap();
    let w_bad = gpu.zeros(&[5], DType::F32).unwrap();
    assert!(cross_entropy_forward(&gpu, &q, &p, &w).unwrap_err().to_string().contains("same shape"));
    assert!(cross_entropy_forward(&gpu, &q, &q, &w_bad).unwrap_err().to_string().contains("one weight per row"));
    assert!(cross_entropy_backward(&gpu, &q, &q, &w_bad, 1.0).is_err());
}
