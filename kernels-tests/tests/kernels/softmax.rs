//! softmax_forward / softmax_backward against the f64 reference on awkward shapes and scales,
//! and the reference backward against finite differences.
//!
//! Tolerances. The exponent scale·x − m is computed with a rounding error of about
//! u·|scale·x| (u = 2⁻²⁴), which changes exp(·) by that relative amount, and the row sum of C
//! terms in [0, 1] adds up to C·u relative. So y gets rtol 4u·(max|scale·x| + C) + atol 1e-9
//! (values near 0). dx = scale·y·(dy − Σ y·dy), |dy − Σ y·dy| ≤ 2: the same relative error
//! on y, and Σ y·dy, an f32 sum of C terms of size ≤ max y, errs by ≤ C·u·max y. So dx gets
//! atol 2·|scale|·max y·4u·(max|scale·x| + C), which cancellation in dy − Σ y·dy cannot
//! exceed, and the same rtol.

use crate::common::*;
use sop::gpu::{DType, Gpu};
use sop::ops::softmax::{softmax_backward, softmax_forward};
use sop_reference::softmax as reference;

const U: f64 = 1.0 / 16_777_216.0;

fn check(gpu: &Gpu, rng: &mut impl rand::Rng, shape: &[usize], scale: f32) {
    let c = *shape.last().unwrap();
    let r: usize = shape[..shape.len() - 1].iter().product();
    let x: Vec<f32> = randn(rng, r * c).iter().map(|v| 3.0 * v).collect();
    let dy = randn(rng, r * c);
    let gx = gpu.upload_f32(shape, &x).unwrap();
    let gdy = gpu.upload_f32(shape, &dy).unwrap();
    let what = format!("softmax {shape:?} scale {scale}");
    let kappa = 4.0 * U * (3.0 * scale.abs() as f64 + c as f64);

    poison_pool(gpu, &[shape]);
    let y = softmax_forward(gpu, &gx, scale).unwrap();
    let wy = reference::softmax_forward(&f64s(&x), r, c, scale as f64);
    assert_close(&format!("{what} y"), &gpu.read_f32(&y).unwrap(), &wy, 1e-9, kappa);

    // The backward from the GPU's y (what training does) against the reference from the
    // reference y: the difference in y is covered by the same relative budget.
    poison_pool(gpu, &[shape]);
    let dx = softmax_backward(gpu, &y, &gdy, scale).unwrap();
    let wdx = reference::softmax_backward(&wy, &f64s(&dy), r, c, scale as f64);
    let ymax = wy.iter().fold(0.0f64, |m, &v| m.max(v));
    assert_close(
        &format!("{what} dx"),
        &gpu.read_f32(&dx).unwrap(),
        &wdx,
        2.0 * scale.abs() as f64 * ymax * kappa,
        kappa,
    );
}

#[test]
fn softmax_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for r in [1, 3, 63, 65, 257] {
        for c in [1, 7, 65, 193, 384] {
            check(&gpu, &mut rng, &[r, c], 1.0);
        }
    }
}

#[test]
fn softmax_scales_and_leading_dims() {
    let gpu = gpu();
    let mut rng = rng();
    check(&gpu, &mut rng, &[2, 65, 197], 1.0 / 0.04); // a sharp teacher temperature
    check(&gpu, &mut rng, &[3, 5, 33], -0.5); // a negative scale: the max is of scale·x
    check(&gpu, &mut rng, &[63, 512], 10.0);
    check(&gpu, &mut rng, &[9], 0.0); // uniform
}

/// More rows than 65,535 workgroups of 64 hold: the 2-D grid.
#[test]
fn softmax_many_rows() {
    let gpu = gpu();
    let mut rng = rng();
    check(&gpu, &mut rng, &[64 * 65_535 + 3, 2], 2.0);
}

/// Logits of 80 with scale 25 would overflow exp without the max subtraction.
#[test]
fn softmax_large_logits_stay_finite() {
    let gpu = gpu();
    let x: Vec<f32> = (0..64).map(|i| 80.0 + (i % 7) as f32).collect();
    let gx = gpu.upload_f32(&[2, 32], &x).unwrap();
    let y = gpu.read_f32(&softmax_forward(&gpu, &gx, 25.0).unwrap()).unwrap();
    let want = reference::softmax_forward(&f64s(&x), 2, 32, 25.0);
    assert_close("softmax of large logits", &y, &want, 1e-9, 4.0 * U * (86.0 * 25.0 + 32.0));
}

#[test]
fn softmax_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    for (r, c, scale) in [(3, 7, 1.0), (2, 5, 2.5), (1, 4, -0.7)] {
        let x = f64s(&randn(&mut rng, r * c));
        let dy = f64s(&randn(&mut rng, r * c));
        let y = reference::softmax_forward(&x, r, c, scale);
        let dx = reference::softmax_backward(&y, &dy, r, c, scale);
        let fd = sop_reference::finite_difference(&x, |v| {
            sop_reference::dot(&reference::softmax_forward(v, r, c, scale), &dy)
        });
        // f64 central differences with h = 1e-6: error ≲ 1e-9 for these smooth functions.
        assert_close_f64(&format!("dx r {r} c {c} scale {scale}"), &dx, &fd, 1e-8, 1e-6);
    }
}

#[test]
fn softmax_rejects_mismatched_shapes() {
    let gpu = gpu();
    let y = gpu.zeros(&[4, 5], DType::F32).unwrap();
    let dy = gpu.zeros(&[5, 4], DType::F32).unwrap();
    let err = softmax_backward(&gpu, &y, &dy, 1.0).unwrap_err().to_string();
    assert!(err.contains("softmax_backward"), "{err}");
}
