//! add, sub, mul, scale, add_scaled_into, add_broadcast, scale_samples against the f64
//! reference, and the backward of each (as the ops that compute it) against the reference
//! backward, itself checked against finite differences.
//!
//! Tolerances: add, sub, mul and scale are one IEEE operation per element, correctly rounded
//! in Vulkan, so the GPU must equal the f64 result rounded to f32 exactly (we compare with
//! the f32 rounding of the reference and tolerance 0). add_scaled_into is two operations that
//! a driver may fuse into one fma: one ulp of slack (rtol 2u on the terms' magnitude).
//! sum_rows (add_broadcast's db) has its own tolerance, explained in tests/reduce.rs.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::elementwise::{add, add_broadcast, add_scaled_into, mul, scale, scale_samples, sub};
use sop::ops::reduce::sum_rows;
use sop_reference::elementwise as reference;

/// The reference rounded to f32 once, as f64: what a correctly rounded f32 op returns.
fn rounded(x: Vec<f64>) -> Vec<f64> {
    x.into_iter().map(|v| v as f32 as f64).collect()
}

const SHAPES: [&[usize]; 7] = [&[1], &[3], &[63], &[65], &[257, 7], &[65, 193], &[2, 65, 384]];
const U: f64 = 1.0 / 16_777_216.0;

fn check_binary(gpu: &Gpu, rng: &mut impl Rng, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let (a, b) = (randn(rng, n), randn(rng, n));
    let (ga, gb) = (gpu.upload_f32(shape, &a).unwrap(), gpu.upload_f32(shape, &b).unwrap());
    let (a64, b64) = (f64s(&a), f64s(&b));
    type Op = fn(&Gpu, &sop::Tensor, &sop::Tensor) -> sop::Result<sop::Tensor>;
    let cases: [(&str, Op, Vec<f64>); 3] = [
        ("add", add, reference::add(&a64, &b64)),
        ("sub", sub, reference::sub(&a64, &b64)),
        ("mul", mul, reference::mul(&a64, &b64)),
    ];
    for (name, op, want) in cases {
        poison_pool(gpu, &[shape]);
        let y = op(gpu, &ga, &gb).unwrap();
        assert_eq!(y.shape, shape);
        assert_close(&format!("{name} {shape:?}"), &gpu.read_f32(&y).unwrap(), &rounded(want), 0.0, 0.0);
    }
    poison_pool(gpu, &[shape]);
    let y = scale(gpu, &ga, -0.37).unwrap();
    assert_close(
        &format!("scale {shape:?}"),
        &gpu.read_f32(&y).unwrap(),
        &rounded(reference::scale(&a64, -0.37f32 as f64)),
        0.0,
        0.0,
    );

    // add_scaled_into reads and writes y in place: every element must change as the reference says.
    let gy = gpu.upload_f32(shape, &b).unwrap();
    add_scaled_into(gpu, &gy, &ga, 1.7).unwrap();
    let want = reference::add_scaled(&b64, &a64, 1.7f32 as f64);
    let got = gpu.read_f32(&gy).unwrap();
    for i in 0..n {
        let tol = 2.0 * U * (b64[i].abs() + 1.7 * a64[i].abs());
        assert!((got[i] as f64 - want[i]).abs() <= tol, "add_scaled_into {shape:?}[{i}]: {} vs {}", got[i], want[i]);
    }
}

#[test]
fn binary_ops_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for shape in SHAPES {
        check_binary(&gpu, &mut rng, shape);
    }
}

/// More elements than 65,535 workgroups of 64 hold: the 2-D grid.
#[test]
fn binary_ops_many_elements() {
    let gpu = gpu();
    let mut rng = rng();
    check_binary(&gpu, &mut rng, &[64 * 65_535 + 100]);
}

fn check_broadcast(gpu: &Gpu, rng: &mut impl Rng, x_shape: &[usize], b_shape: &[usize]) {
    let n: usize = x_shape.iter().product();
    let m: usize = b_shape.iter().product();
    let (x, b, dy) = (randn(rng, n), randn(rng, m), randn(rng, n));
    let gx = gpu.upload_f32(x_shape, &x).unwrap();
    let gb = gpu.upload_f32(b_shape, &b).unwrap();
    let gdy = gpu.upload_f32(x_shape, &dy).unwrap();
    poison_pool(gpu, &[x_shape]);
    let y = add_broadcast(gpu, &gx, &gb).unwrap();
    let what = format!("add_broadcast {x_shape:?} + {b_shape:?}");
    assert_close(&what, &gpu.read_f32(&y).unwrap(), &rounded(reference::add_broadcast(&f64s(&x), &f64s(&b))), 0.0, 0.0);
    // Backward: db = sum_rows(dy as (n/m, m)); dx = dy needs no kernel.
    let (_, want_db) = reference::add_broadcast_backward(&f64s(&dy), m);
    let db = sum_rows(gpu, &gdy.reshape(&[n / m, m]).unwrap()).unwrap();
    let tol = 8.0 * U * ((n / m) as f64).sqrt() * 64.0; // see tests/reduce.rs
    assert_close(&format!("{what} db"), &gpu.read_f32(&db).unwrap(), &want_db, tol, 0.0);
}

#[test]
fn add_broadcast_position_embedding_and_bias() {
    let gpu = gpu();
    let mut rng = rng();
    check_broadcast(&gpu, &mut rng, &[3, 65, 7], &[65, 7]); // x (B, T, D) + pos (T, D)
    check_broadcast(&gpu, &mut rng, &[2, 197, 384], &[1, 197, 384]); // pos stored as (1, T, D)
    check_broadcast(&gpu, &mut rng, &[257, 193], &[193]); // bias (D)
    check_broadcast(&gpu, &mut rng, &[63, 1], &[1]);
    check_broadcast(&gpu, &mut rng, &[5, 3], &[5, 3]); // no repetition
    check_broadcast(&gpu, &mut rng, &[257, 384], &[384]); // aligned (len(b) % 4 == 0) entry point
    check_broadcast(&gpu, &mut rng, &[3, 65, 8], &[65, 8]);
    check_broadcast(&gpu, &mut rng, &[63, 4], &[4]);
}

fn check_scale_samples(gpu: &Gpu, rng: &mut impl Rng, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let batch = shape[0];
    let (x, dy) = (randn(rng, n), randn(rng, n));
    // drop path: a sample is kept with probability 0.9 and then scaled by 1/0.9
    let s: Vec<f32> = (0..batch).map(|_| if rng.random_bool(0.9) { 1.0 / 0.9 } else { 0.0 }).collect();
    let gx = gpu.upload_f32(shape, &x).unwrap();
    let gs = gpu.upload_f32(&[batch], &s).unwrap();
    let gdy = gpu.upload_f32(shape, &dy).unwrap();
    poison_pool(gpu, &[shape]);
    let y = scale_samples(gpu, &gx, &gs).unwrap();
    let want = reference::scale_samples(&f64s(&x), &f64s(&s));
    assert_close(&format!("scale_samples {shape:?}"), &gpu.read_f32(&y).unwrap(), &rounded(want), 0.0, 0.0);
    poison_pool(gpu, &[shape]);
    let dx = scale_samples(gpu, &gdy, &gs).unwrap();
    let want = reference::scale_samples_backward(&f64s(&dy), &f64s(&s));
    assert_close(&format!("scale_samples backward {shape:?}"), &gpu.read_f32(&dx).unwrap(), &rounded(want), 0.0, 0.0);
}

#[test]
fn scale_samples_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    // per-sample sizes not multiples of 4 (unaligned entry point), then multiples of 4
    for shape in
        [&[1, 7][..], &[3, 65, 7], &[63, 5], &[65, 197, 3], &[257], &[4, 1, 1], &[3, 65, 8], &[7, 197, 384], &[65, 4]]
    {
        check_scale_samples(&gpu, &mut rng, shape);
    }
}

#[test]
fn elementwise_backward_references_match_finite_differences() {
    let mut rng = rng();
    let (a, b, s) = (f64s(&randn(&mut rng, 12)), f64s(&randn(&mut rng, 12)), f64s(&randn(&mut rng, 3)));
    let dy = f64s(&randn(&mut rng, 12));
    let bb = f64s(&randn(&mut rng, 4));
    // f64 central differences of functions linear in the perturbed argument: ~1e-10.
    let (da, db) = reference::mul_backward(&a, &b, &dy);
    assert_close_f64(
        "mul da",
        &da,
        &sop_reference::finite_difference(&a, |v| sop_reference::dot(&reference::mul(v, &b), &dy)),
        1e-8,
        1e-8,
    );
    assert_close_f64(
        "mul db",
        &db,
        &sop_reference::finite_difference(&b, |v| sop_reference::dot(&reference::mul(&a, v), &dy)),
        1e-8,
        1e-8,
    );
    let (dx, dbb) = reference::add_broadcast_backward(&dy, 4);
    let fx = sop_reference::finite_difference(&a, |v| sop_reference::dot(&reference::add_broadcast(v, &bb), &dy));
    let fb = sop_reference::finite_difference(&bb, |v| sop_reference::dot(&reference::add_broadcast(&a, v), &dy));
    assert_close_f64("add_broadcast dx", &dx, &fx, 1e-8, 1e-8);
    assert_close_f64("add_broadcast db", &dbb, &fb, 1e-8, 1e-8);
    let fx = sop_reference::finite_difference(&a, |v| sop_reference::dot(&reference::scale_samples(v, &s), &dy));
    assert_close_f64("scale_samples dx", &reference::scale_samples_backward(&dy, &s), &fx, 1e-8, 1e-8);
}

#[test]
fn elementwise_rejects_bad_shapes() {
    let gpu = gpu();
    let x = gpu.zeros(&[4, 6], DType::F32).unwrap();
    let y = gpu.zeros(&[6, 4], DType::F32).unwrap();
    let b5 = gpu.zeros(&[5], DType::F32).unwrap();
    let s3 = gpu.zeros(&[3], DType::F32).unwrap();
    assert!(add(&gpu, &x, &y).unwrap_err().to_string().contains("differ"));
    assert!(add_broadcast(&gpu, &x, &b5).unwrap_err().to_string().contains("tile"));
    assert!(scale_samples(&gpu, &x, &s3).unwrap_err().to_string().contains("one scale per sample"));
    assert!(add_scaled_into(&gpu, &x, &x, 1.0).unwrap_err().to_string().contains("share"));
    add_scaled_into(&gpu, &x, &y, 1.0).unwrap(); // same element count is enough
}
