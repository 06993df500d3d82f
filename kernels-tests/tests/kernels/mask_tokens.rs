//! mask_tokens forward and backward against the f64 reference, and the reference backward
//! against finite differences.
//!
//! Tolerances: y and dx are copies (exact). dtoken[d] is an f32 sum over the masked rows
//! in chunks of 64 then over chunks: its error is at most (64 + chunks)·2⁻²⁴·Σ|dy| for the
//! column (the standard bound for recursive summation), per column.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::mask_tokens::{mask_tokens_backward, mask_tokens_forward};
use sop_reference::mask_tokens as reference;

fn poison_pool(gpu: &Gpu, shape: &[usize]) {
    let t = gpu.empty(shape, DType::F32).unwrap();
    gpu.fill_f32(&t, f32::NAN).unwrap();
}

fn check(gpu: &Gpu, rng: &mut impl Rng, b: usize, t: usize, d: usize, ratio: f64) {
    let rows = b * t;
    let x = randn(rng, rows * d);
    let dy = randn(rng, rows * d);
    let token = randn(rng, d);
    let mask: Vec<u32> = (0..rows).map(|_| rng.random_bool(ratio) as u32).collect();
    let what = format!("B {b} T {t} D {d} masked {}", mask.iter().sum::<u32>());
    let gx = gpu.upload_f32(&[b, t, d], &x).unwrap();
    let gm = gpu.upload_u32(&[b, t], &mask).unwrap();
    let gt = gpu.upload_f32(&[d], &token).unwrap();
    let gdy = gpu.upload_f32(&[b, t, d], &dy).unwrap();

    poison_pool(gpu, &[b, t, d]);
    let y = mask_tokens_forward(gpu, &gx, &gm, &gt).unwrap();
    assert_eq!(y.shape, vec![b, t, d]);
    let want = reference::mask_tokens_forward(&f64s(&x), &mask, &f64s(&token), d);
    assert_close(&format!("y, {what}"), &gpu.read_f32(&y).unwrap(), &want, 0.0, 0.0);

    poison_pool(gpu, &[b, t, d]);
    poison_pool(gpu, &[d]);
    let (dx, dtoken) = mask_tokens_backward(gpu, &gdy, &gm).unwrap();
    assert_eq!((dx.shape.clone(), dtoken.shape.clone()), (vec![b, t, d], vec![d]));
    let (want_dx, want_dtoken) = reference::mask_tokens_backward(&f64s(&dy), &mask, d);
    assert_close(&format!("dx, {what}"), &gpu.read_f32(&dx).unwrap(), &want_dx, 0.0, 0.0);
    let got = gpu.read_f32(&dtoken).unwrap();
    let terms = (64 + rows.div_ceil(64)) as f64;
    for j in 0..d {
        let abs_sum: f64 = (0..rows).filter(|&r| mask[r] != 0).map(|r| (dy[r * d + j] as f64).abs()).sum();
        let atol = terms * 2f64.powi(-24) * abs_sum;
        assert_close(&format!("dtoken[{j}], {what}"), &got[j..j + 1], &want_dtoken[j..j + 1], atol, 0.0);
    }
}

#[test]
fn mask_tokens_forward_backward_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for &(b, t, d) in &[(1, 1, 1), (2, 3, 65), (3, 63, 5), (1, 257, 3), (2, 130, 7), (4, 49, 64)] {
        check(&gpu, &mut rng, b, t, d, 0.3);
    }
    check(&gpu, &mut rng, 2, 65, 9, 1.0); // every row masked
    check(&gpu, &mut rng, 3, 5, 9, 0.0); // none masked: dtoken must be exactly 0
}

#[test]
fn mask_tokens_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    let (rows, d) = (5, 3);
    let x = f64s(&randn(&mut rng, rows * d));
    let token = f64s(&randn(&mut rng, d));
    let dy = f64s(&randn(&mut rng, rows * d));
    let mask = [1, 0, 1, 1, 0];
    let (dx, dtoken) = reference::mask_tokens_backward(&dy, &mask, d);
    let loss = |x: &[f64], token: &[f64]| sop_reference::dot(&reference::mask_tokens_forward(x, &mask, token, d), &dy);
    let fx = sop_reference::finite_difference(&x, |x| loss(x, &token));
    let ft = sop_reference::finite_difference(&token, |t| loss(&x, t));
    // The loss is linear in x and token: central differences are exact up to rounding.
    assert_close_f64("dx", &dx, &fx, 1e-8, 1e-8);
    assert_close_f64("dtoken", &dtoken, &ft, 1e-8, 1e-8);
}

#[test]
fn mask_tokens_rejects_bad_shapes() {
    let gpu = gpu();
    let x = gpu.zeros(&[2, 3, 4], DType::F32).unwrap();
    let mask_bad = gpu.zeros(&[2, 4], DType::U32).unwrap();
    let mask_f32 = gpu.zeros(&[2, 3], DType::F32).unwrap();
    let mask = gpu.zeros(&[2, 3], DType::U32).unwrap();
    let token_bad = gpu.zeros(&[5], DType::F32).unwrap();
    let token = gpu.zeros(&[4], DType::F32).unwrap();
    assert!(mask_tokens_forward(&gpu, &x, &mask_bad, &token).is_err());
    assert!(mask_tokens_forward(&gpu, &x, &mask_f32, &token).is_err());
    assert!(mask_tokens_forward(&gpu, &x, &mask, &token_bad).unwrap_err().to_string().contains("token"));
    assert!(mask_tokens_backward(&gpu, &x, &mask_bad).is_err());
}
