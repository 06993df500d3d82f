//! koleo_forward / koleo_backward against the f64 reference on awkward shapes (groups of 2
//! to 65 rows, widths 1 to 256, unit rows as the training feeds and unnormalised ones, a
//! group with two equal rows), and the reference backward against finite differences.
//!
//! The neighbour search is an arg-max of f32 dot products: where two candidates are within
//! f32 rounding of each other the GPU may pick either, so the test checks that the GPU's
//! choice is a maximum to within the dot product's error (atol 4u·C·max|x|²) and then
//! evaluates the reference at the GPU's neighbours.
//!
//! Tolerances. d² is an f32 sum of C squared differences (relative error ≤ C·u, u = 2⁻²⁴;
//! d's is half that): d gets rtol 2u·(C + 8) and an atol of 1e-6·max|x| for equal rows. L
//! sums R logs of d + eps: each log carries an absolute error ≤ rel(d) + u, so L gets
//! atol R/B · 2u·(C + 8) + 1e-5 (the log's own rounding over R terms).
//! dx_i sums up to B terms a_k·(x_k − x_i) of size ≤ 1/d_k: each has relative error
//! ≈ 3·rel(d) + 3u, so dx gets an absolute tolerance of (B + 1)·2u·(C + 8)·3·max_k |a_k·(x_k − x_i)|
//! (the largest term of the row; cancellation between terms cannot amplify an absolute error).

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::koleo::{koleo_backward, koleo_forward, KOLEO_EPS};
use sop_reference::koleo as reference;

const U: f64 = 1.0 / 16_777_216.0;

/// x of G groups of B rows of width C, unit rows if `unit`; with `dup`, row 1 of the first
/// group repeats row 0 (distance 0: no gradient through that pair).
fn check(gpu: &Gpu, rng: &mut impl Rng, g: usize, b: usize, c: usize, unit: bool, dup: bool) {
    let r = g * b;
    let mut x = randn(rng, r * c);
    if unit {
        for row in x.chunks_mut(c) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
    if dup {
        let first = x[..c].to_vec();
        x[c..2 * c].copy_from_slice(&first);
    }
    let scale = rng.random_range(0.1f32..3.0);
    let what = format!("koleo G {g} B {b} C {c} unit {unit} dup {dup}");
    let gx = gpu.upload_f32(&[r, c], &x).unwrap();
    let xf = f64s(&x);
    let xmax = xf.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let t = 2.0 * U * (c + 8) as f64;

    poison_pool(gpu, &[&[r], &[r], &[1]]);
    let (loss, saved) = koleo_forward(gpu, &gx, b, KOLEO_EPS).unwrap();
    let nn: Vec<usize> = gpu.read_u32(&saved.nn).unwrap().iter().map(|&j| j as usize).collect();
    let want_nn = reference::koleo_neighbours(&xf, r, c, b);
    let dot = |i: usize, j: usize| (0..c).map(|k| xf[i * c + k] * xf[j * c + k]).sum::<f64>();
    for (i, (&j, &w)) in nn.iter().zip(&want_nn).enumerate() {
        assert!(j < r && j != i && j / b == i / b, "{what}: row {i}'s neighbour {j} is not in its group");
        let slack = 4.0 * U * c as f64 * xmax * xmax;
        assert!(dot(i, j) >= dot(i, w) - slack, "{what}: row {i} picked {j}, the reference {w}");
    }
    let wdist = reference::koleo_distances(&xf, &nn, c);
    assert_close(&format!("{what} dist"), &gpu.read_f32(&saved.dist).unwrap(), &wdist, 1e-6 * xmax, t);
    let wloss = reference::koleo_loss(&xf, &nn, c, b, KOLEO_EPS as f64);
    let latol = r as f64 / b as f64 * t + 1e-5;
    assert_close(&format!("{what} loss"), &gpu.read_f32(&loss).unwrap(), &[wloss], latol, t);

    poison_pool(gpu, &[&[r, c]]);
    let dx = koleo_backward(gpu, &gx, &saved, b, KOLEO_EPS, scale).unwrap();
    let wdx = reference::koleo_backward(&xf, &nn, c, b, KOLEO_EPS as f64, scale as f64);
    // The largest term a_k·|x_k − x_i| any row collects, times the scale: what the errors scale with.
    let term = |i: usize, j: usize| {
        let d = wdist[i];
        if d == 0.0 {
            0.0
        } else {
            (0..c).map(|k| (xf[i * c + k] - xf[j * c + k]).abs()).fold(0.0, f64::max) / (d * (d + KOLEO_EPS as f64))
        }
    };
    let big = (0..r).map(|i| term(i, nn[i])).fold(0.0, f64::max) * scale as f64 / b as f64;
    let atol = (b + 1) as f64 * t * 3.0 * big;
    assert_close(&format!("{what} dx"), &gpu.read_f32(&dx).unwrap(), &wdx, atol, t);
}

#[test]
fn koleo_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for (g, b) in [(1, 2), (2, 3), (1, 17), (2, 64), (3, 65)] {
        for c in [1, 7, 65, 256] {
            check(&gpu, &mut rng, g, b, c, true, false);
            check(&gpu, &mut rng, g, b, c, false, false);
        }
    }
}

#[test]
fn koleo_equal_rows() {
    let gpu = gpu();
    let mut rng = rng();
    for (g, b, c) in [(2, 5, 7), (1, 33, 65)] {
        check(&gpu, &mut rng, g, b, c, true, true);
    }
}

#[test]
fn koleo_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    for (g, b, c) in [(1, 2, 3), (2, 5, 4), (1, 9, 7)] {
        let r = g * b;
        let x = f64s(&randn(&mut rng, r * c));
        let nn = reference::koleo_neighbours(&x, r, c, b);
        let dx = reference::koleo_backward(&x, &nn, c, b, 1e-8, 1.0);
        // The neighbours are recomputed at every probe; h = 1e-6 cannot change an arg-max
        // whose margin is wider than ~1e-5, which random rows of width ≥ 3 have.
        let fd = sop_reference::finite_difference(&x, |v| reference::koleo_forward(v, r, c, b, 1e-8));
        assert_close_f64(&format!("dx G {g} B {b} C {c}"), &dx, &fd, 1e-6, 1e-5);
    }
}

#[test]
fn koleo_rejects_bad_shapes() {
    let gpu = gpu();
    let x = gpu.zeros(&[6, 4], DType::F32).unwrap();
    for group in [0, 1, 4] {
        let err = koleo_forward(&gpu, &x, group, KOLEO_EPS).err().expect("refused").to_string();
        assert!(err.contains("koleo_forward") && err.contains("groups"), "{err}");
    }
    let (_, saved) = koleo_forward(&gpu, &x, 3, KOLEO_EPS).unwrap();
    let y = gpu.zeros(&[4, 4], DType::F32).unwrap();
    let err = koleo_backward(&gpu, &y, &saved, 2, KOLEO_EPS, 1.0).expect_err("refused").to_string();
    assert!(err.contains("koleo_backward"), "{err}");
}
