//! gelu_forward / gelu_backward against the f64 reference (exact erf), the reference erf
//! against tabulated values, and the reference backward against finite differences.
//!
//! Tolerances. The shader's Φ has an absolute error ≤ 6.6e-8 (f32 evaluation of the fitted
//! erf, see its header) plus the GPU's exp error (Vulkan allows 3 + 2|x| ulp), and
//! y = x·Φ(x) is rounded once more: |δy| ≤ |x|·1e-7 + ulp(y) ≈ 2e-7·(1 + |x|). With |x| ≤ 10
//! here we allow atol 6e-6 (≥ 5e-7·(1 + |x|)) and rtol 5e-7; the observed worst error is
//! about 4e-7. The backward's extra term x·φ(x) is bounded by 0.25 and its exp is accurate to
//! a few ulp, so the same budget applies, scaled by |dy| ≤ 1. `gelu_dense_sweep_accuracy`
//! checks the approximation itself with a bound 4-10x tighter.

use crate::common::*;
use sop::gpu::{DType, Gpu};
use sop::ops::gelu::{gelu_backward, gelu_forward};
use sop_reference::gelu as reference;

/// x spread over [-10, 10] (both tails and the split points of the erf approximation).
fn check(gpu: &Gpu, rng: &mut impl rand::Rng, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let x: Vec<f32> = randn(rng, n).iter().map(|v| 10.0 * v).collect();
    let dy = randn(rng, n);
    let gx = gpu.upload_f32(shape, &x).unwrap();
    let gdy = gpu.upload_f32(shape, &dy).unwrap();
    poison_pool(gpu, &[shape]);
    let y = gelu_forward(gpu, &gx).unwrap();
    assert_close(
        &format!("gelu_forward {shape:?}"),
        &gpu.read_f32(&y).unwrap(),
        &reference::gelu_forward(&f64s(&x)),
        6e-6,
        5e-7,
    );
    poison_pool(gpu, &[shape]);
    let dx = gelu_backward(gpu, &gx, &gdy).unwrap();
    let want = reference::gelu_backward(&f64s(&x), &f64s(&dy));
    assert_close(&format!("gelu_backward {shape:?}"), &gpu.read_f32(&dx).unwrap(), &want, 6e-6, 5e-7);
}

#[test]
fn gelu_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for shape in [&[1][..], &[3], &[63], &[65], &[257, 7], &[65, 193], &[3, 63, 384]] {
        check(&gpu, &mut rng, shape);
    }
}

/// More elements than 65,535 workgroups of 64 hold: the 2-D grid.
#[test]
fn gelu_many_elements() {
    let gpu = gpu();
    let mut rng = rng();
    check(&gpu, &mut rng, &[64 * 65_535 + 100]);
}

/// A dense sweep of [-8, 8] (every region of the erf approximation, both sides of each split
/// point) with a tighter tolerance: the fitted erf is accurate to ~1e-7, so |δy| ≤ 1e-7·(1 + |x|)
/// plus the rounding of the product.
#[test]
fn gelu_dense_sweep_accuracy() {
    let gpu = gpu();
    let n = 160_001;
    let x: Vec<f32> = (0..n).map(|i| -8.0 + 16.0 * i as f32 / (n - 1) as f32).collect();
    let gx = gpu.upload_f32(&[n], &x).unwrap();
    let got = gpu.read_f32(&gelu_forward(&gpu, &gx).unwrap()).unwrap();
    let want = reference::gelu_forward(&f64s(&x));
    for i in 0..n {
        let (g, w, xv) = (got[i] as f64, want[i], x[i].abs() as f64);
        let tol = 1.5e-7 * (1.0 + xv) + 2f64.powi(-24) * w.abs();
        assert!((g - w).abs() <= tol, "gelu({}) = {g}, reference {w}, error {:e} > {tol:e}", x[i], (g - w).abs());
    }
}

#[test]
fn reference_erf_matches_tabulated_values() {
    // erf values to 16 digits (Abramowitz & Stegun table 7.1 / any CAS).
    for (x, want) in [
        (0.0, 0.0),
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (1.5, 0.9661051464753108),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
        (-0.7, -0.6778011938374184),
    ] {
        let got = reference::erf(x);
        assert!((got - want).abs() < 1e-15, "erf({x}) = {got}, want {want}");
    }
}

#[test]
fn gelu_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    let x: Vec<f64> = randn(&mut rng, 40).iter().map(|&v| 6.0 * v as f64).collect();
    let dy = f64s(&randn(&mut rng, 40));
    let dx = reference::gelu_backward(&x, &dy);
    let fd = sop_reference::finite_difference(&x, |v| sop_reference::dot(&reference::gelu_forward(v), &dy));
    // f64 central differences, h = 1e-6·max(1, |x|): error ≲ 1e-9 here.
    assert_close_f64("dx", &dx, &fd, 1e-8, 1e-7);
}

#[test]
fn gelu_rejects_mismatched_shapes() {
    let gpu = gpu();
    let x = gpu.zeros(&[4, 5], DType::F32).unwrap();
    let dy = gpu.zeros(&[5, 4], DType::F32).unwrap();
    let err = gelu_backward(&gpu, &x, &dy).unwrap_err().to_string();
    assert!(err.contains("differ"), "{err}");
}
