//! l2norm_forward / l2norm_backward against the f64 reference on awkward shapes (including
//! rows whose norm is below eps, and all-zero rows), and the reference backward against
//! finite differences on both sides of eps.
//!
//! Tolerances. ‖x‖² is an f32 sum of C squares (relative error ≤ C·u, u = 2⁻²⁴), its square
//! root halves that, and y = x/n adds one rounding: y and norm get rtol 2u·(C + 8) (and y
//! an atol of 1e-12 for values at 0). dx = (dy − y·(y·dy))/n: the dot product of C terms adds
//! C·u·max|dy| absolute before the division by n. So dx·max(n, eps), compared row by row
//! (rows differ in n by 10⁹ here), gets atol 2u·(C + 8)·max|dy| and the same rtol.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::l2norm::{l2norm_backward, l2norm_forward};
use sop_reference::l2norm as reference;

const U: f64 = 1.0 / 16_777_216.0;

/// Rows of x: most uniform in [-1, 1]; with `tiny`, every 5th row scaled by 1e-9 (norm below
/// eps = 1e-6) and every 7th all zeros.
fn check(gpu: &Gpu, rng: &mut impl Rng, shape: &[usize], eps: f32, tiny: bool) {
    let c = *shape.last().unwrap();
    let r: usize = shape[..shape.len() - 1].iter().product();
    let mut x = randn(rng, r * c);
    if tiny {
        for i in 0..r {
            let f = if i % 7 == 3 {
                0.0
            } else if i % 5 == 1 {
                1e-9
            } else {
                1.0
            };
            x[i * c..(i + 1) * c].iter_mut().for_each(|v| *v *= f);
        }
    }
    let dy = randn(rng, r * c);
    let gx = gpu.upload_f32(shape, &x).unwrap();
    let gdy = gpu.upload_f32(shape, &dy).unwrap();
    let what = format!("l2norm {shape:?} eps {eps}");
    let t = 2.0 * U * (c + 8) as f64;

    poison_pool(gpu, &[shape, &[r]]);
    let (y, norm) = l2norm_forward(gpu, &gx, eps).unwrap();
    assert_eq!(norm.shape, [r]);
    let (wy, wnorm) = reference::l2norm_forward(&f64s(&x), r, c, eps as f64);
    assert_close(&format!("{what} y"), &gpu.read_f32(&y).unwrap(), &wy, 1e-12, t);
    assert_close(&format!("{what} norm"), &gpu.read_f32(&norm).unwrap(), &wnorm, 0.0, t);

    poison_pool(gpu, &[shape]);
    let dx = l2norm_backward(gpu, &gdy, &gx, &norm, eps).unwrap();
    let wdx = reference::l2norm_backward(&f64s(&dy), &f64s(&x), &wnorm, r, c, eps as f64);
    // dx·max(n, eps) per row: O(|dy|) whatever the row's norm.
    let denom = |i: usize| wnorm[i / c].max(eps as f64);
    let got: Vec<f32> =
        gpu.read_f32(&dx).unwrap().iter().enumerate().map(|(i, &v)| (v as f64 * denom(i)) as f32).collect();
    let want: Vec<f64> = wdx.iter().enumerate().map(|(i, &v)| v * denom(i)).collect();
    assert_close(&format!("{what} dx·max(n, eps)"), &got, &want, t, t);
}

#[test]
fn l2norm_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for r in [1, 3, 63, 65, 257] {
        for c in [1, 7, 65, 193, 384] {
            check(&gpu, &mut rng, &[r, c], 1e-6, false);
        }
    }
}

#[test]
fn l2norm_rows_below_eps() {
    let gpu = gpu();
    let mut rng = rng();
    for (r, c) in [(35, 7), (65, 256), (257, 1)] {
        check(&gpu, &mut rng, &[r, c], 1e-6, true);
    }
    check(&gpu, &mut rng, &[3, 21, 65], 1e-6, true); // leading dims
    check(&gpu, &mut rng, &[63, 9], 2.0, false); // eps above some norms of uniform rows
}

/// More rows than 65,535 workgroups of 64 hold: the 2-D grid.
#[test]
fn l2norm_many_rows() {
    let gpu = gpu();
    let mut rng = rng();
    check(&gpu, &mut rng, &[64 * 65_535 + 11, 2], 1e-6, false);
}

#[test]
fn l2norm_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    // eps 1e-6: the x/‖x‖ branch; eps 10: ‖x‖ ≤ √7 < 10, the constant-denominator branch.
    for (r, c, eps) in [(3, 7, 1e-6), (2, 4, 1e-6), (3, 7, 10.0)] {
        let x = f64s(&randn(&mut rng, r * c));
        let dy = f64s(&randn(&mut rng, r * c));
        let (_, norm) = reference::l2norm_forward(&x, r, c, eps);
        let dx = reference::l2norm_backward(&dy, &x, &norm, r, c, eps);
        let fd = sop_reference::finite_difference(&x, |v| {
            sop_reference::dot(&reference::l2norm_forward(v, r, c, eps).0, &dy)
        });
        // f64 central differences with h = 1e-6 (norms ≥ 0.05 here, far from eps): error ≲ 1e-8.
        assert_close_f64(&format!("dx r {r} c {c} eps {eps}"), &dx, &fd, 1e-7, 1e-6);
    }
}

#[test]
fn l2norm_rejects_bad_shapes() {
    let gpu = gpu();
    let x = gpu.zeros(&[4, 5], DType::F32).unwrap();
    let (_, norm) = l2norm_forward(&gpu, &x, 1e-6).unwrap();
    let dy = gpu.zeros(&[5, 4], DType::F32).unwrap();
    let err = l2norm_backward(&gpu, &dy, &x, &norm, 1e-6).unwrap_err().to_string();
    assert!(err.contains("l2norm_backward"), "{err}");
    let err = l2norm_forward(&gpu, &x, -1.0).unwrap_err().to_string();
    assert!(err.contains("eps"), "{err}");
}
