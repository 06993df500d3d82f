//! topk_forward against the f64 reference: random rows, rows full of exact ties, C = k,
//! C = 65,536 + 3 (a partial last lane), k = 1, 8, 16, and monotone rows (every column
//! enters / none does). Values are copied, never computed, so values and indices must match
//! exactly: tolerance zero.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::topk::topk_forward;
use sop_reference::topk::topk_forward as topk_reference;

/// Leave `count` NaN-filled buffers of this shape in the pool, so the op's outputs start
/// poisoned (the pool hands back the most recently freed buffer of a size first).
fn poison_pool(gpu: &Gpu, shape: &[usize], count: usize) {
    let ts: Vec<_> = (0..count)
        .map(|_| {
            let t = gpu.empty(shape, DType::F32).unwrap();
            gpu.fill_f32(&t, f32::NAN).unwrap();
            t
        })
        .collect();
    drop(ts);
}

fn check(gpu: &Gpu, x: &[f32], r: usize, c: usize, k: usize, what: &str) {
    poison_pool(gpu, &[r, k], 2);
    let gx = gpu.upload_f32(&[r, c], x).unwrap();
    let (values, indices) = topk_forward(gpu, &gx, k).unwrap();
    assert_eq!(values.shape, vec![r, k]);
    assert_eq!(indices.shape, vec![r, k]);
    let got_v = gpu.read_f32(&values).unwrap();
    let got_i = gpu.read_u32(&indices).unwrap();
    let (want_v, want_i) = topk_reference(&f64s(x), r, c, k);
    for row in 0..r {
        let s = row * k..(row + 1) * k;
        let gv: Vec<f64> = got_v[s.clone()].iter().map(|&v| v as f64).collect();
        assert!(
            got_i[s.clone()] == want_i[s.clone()] && gv == want_v[s.clone()],
            "{what} (R {r}, C {c}, k {k}) row {row}:\n got indices {:?} values {:?}\nwant indices {:?} values {:?}",
            &got_i[s.clone()],
            gv,
            &want_i[s.clone()],
            &want_v[s]
        );
    }
}

#[test]
fn topk_forward_random_rows() {
    let gpu = gpu();
    let mut rng = rng();
    for &(r, c, k) in
        &[(1, 1, 1), (1, 16, 16), (3, 17, 16), (65, 257, 8), (63, 1000, 1), (2, 300, 16), (5, 513, 8), (257, 9, 8)]
    {
        let x = randn(&mut rng, r * c);
        check(&gpu, &x, r, c, k, "random");
    }
}

#[test]
fn topk_forward_exact_ties() {
    let gpu = gpu();
    let mut rng = rng();
    let levels = [0.0f32, 0.5, 1.0];
    for &(r, c, k) in &[(5, 700, 16), (3, 40, 8), (4, 20, 16), (65, 16, 16), (2, 3000, 1), (7, 520, 8)] {
        let x: Vec<f32> = (0..r * c).map(|_| levels[rng.random_range(0..3)]).collect();
        check(&gpu, &x, r, c, k, "ties from {0, 0.5, 1}");
    }
    // Every value equal (the first k columns win), and -inf / +inf as ordinary values.
    check(&gpu, &vec![0.25; 3 * 600], 3, 600, 16, "all equal");
    let mut x = vec![f32::NEG_INFINITY; 2 * 300];
    x[250] = f32::INFINITY;
    x[300 + 299] = -1.0;
    check(&gpu, &x, 2, 300, 8, "infinities");
}

#[test]
fn topk_forward_wide_rows() {
    let gpu = gpu();
    let mut rng = rng();
    let c = 65_536 + 3;
    for k in [8, 16] {
        let x = randn(&mut rng, 3 * c);
        check(&gpu, &x, 3, c, k, "C = 65,539 random");
    }
    let x: Vec<f32> = (0..2 * c).map(|_| [0.0f32, 0.5, 1.0][rng.random_range(0..3)]).collect();
    check(&gpu, &x, 2, c, 16, "C = 65,539 ties");
}

#[test]
fn topk_forward_monotone_rows() {
    let gpu = gpu();
    let c = 1000;
    // Increasing: every column enters each lane's list and shifts it; decreasing: none
    // after the first k; a rising-then-falling row puts the winners in the middle lanes.
    let up: Vec<f32> = (0..c).map(|j| j as f32).collect();
    let down: Vec<f32> = (0..c).map(|j| -(j as f32)).collect();
    let tent: Vec<f32> = (0..c).map(|j| -((j as f32) - 600.0).abs()).collect();
    let x = [up, down, tent].concat();
    for k in [1, 8, 16] {
        check(&gpu, &x, 3, c, k, "monotone");
    }
}

#[test]
fn topk_rejects_bad_arguments() {
    let gpu = gpu();
    let x = gpu.zeros(&[4, 10], DType::F32).unwrap();
    for (k, want) in [(0, "k must be"), (17, "k must be"), (11, "fewer than k")] {
        let err = topk_forward(&gpu, &x, k).unwrap_err().to_string();
        assert!(err.contains(want), "k = {k}: {err}");
    }
    let x3 = gpu.zeros(&[2, 4, 10], DType::F32).unwrap();
    assert!(topk_forward(&gpu, &x3, 2).is_err());
    let xu = gpu.zeros(&[4, 10], DType::U32).unwrap();
    assert!(topk_forward(&gpu, &xu, 2).is_err());
}
