//! sum / sum_squares / sum_rows against the f64 reference: exactly on integer-valued data
//! (every partial sum is an integer below 2²⁴, so f32 adds are exact and any element the
//! stages miss or count twice shows), within a rounding budget on random data; up to 10M
//! elements. The reference backwards against finite differences.
//!
//! Tolerances (random data, u = 2⁻²⁴). Each f32 add s ← s + v rounds s by at most u·|s|;
//! modelling those roundings as independent and uniform, the error of the kernel's own
//! summation order has standard deviation σ = u/√3 · √(Σ s²) over every add (and squares
//! add u/√3 · √(Σ v⁴) for their own rounding). `rounding_sigma` replays the shader's order in
//! f64 to get σ for the data at hand, and we allow 6σ (a driver fusing v·v + s into an fma
//! only removes roundings). That follows the error of positive
//! sums (Σx², which grows linearly) and of mixed-sign sums (a random walk) alike. The
//! integer-valued runs (exact, tolerance 0) are the ones that catch indexing mistakes.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu, Tensor};
use sop::ops::reduce::{sum, sum_rows, sum_squares};
use sop_reference::reduce as reference;

const U: f64 = 1.0 / 16_777_216.0;

/// Poison the buffers every stage of a reduction of n elements (cols per stage) will take.
fn poison_stages(gpu: &Gpu, mut n: usize, mut cols: impl FnMut(usize) -> usize) {
    let mut shapes = Vec::new();
    loop {
        let c = cols(n);
        shapes.push(vec![c.max(1)]);
        if c <= 1 {
            break;
        }
        n = c;
    }
    let refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
    poison_pool(gpu, &refs);
}

/// One stage of the shader's order: x as (rows, cols) with a short last row, column sums over
/// chunks of `chunk` rows. Returns the partial sums and Σ s² over every add.
fn replay_stage(x: &[f64], cols: usize, chunk: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len().div_ceil(cols);
    let nchunks = rows.div_ceil(chunk);
    let mut out = vec![0.0; nchunks * cols];
    let mut s2 = vec![0.0; cols];
    for c in 0..nchunks {
        for j in 0..cols {
            let mut s = 0.0;
            for r in c * chunk..((c + 1) * chunk).min(rows) {
                if let Some(v) = x.get(r * cols + j) {
                    s += v;
                    s2[j] += s * s;
                }
            }
            out[c * cols + j] = s;
        }
    }
    (out, s2)
}

/// σ of the rounding error of `sum` (terms x, or x² when `square`), replaying the shader:
/// per stage, invocation j sums the vec4 units j, j + cols, … lane by lane, then adds its
/// lanes ((l0 + l1) + l2) + l3; cols = ceil(ceil(n/4)/256).
fn rounding_sigma(x: &[f64], square: bool) -> f64 {
    let mut terms: Vec<f64> = if square { x.iter().map(|v| v * v).collect() } else { x.to_vec() };
    let mut acc: f64 = if square { terms.iter().map(|t| t * t).sum() } else { 0.0 };
    loop {
        let units = terms.len().div_ceil(4);
        let cols = units.div_ceil(256);
        let mut next = vec![0.0; cols];
        for (j, out) in next.iter_mut().enumerate() {
            let mut lanes = [0.0f64; 4];
            for u in (j..units).step_by(cols) {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    if let Some(v) = terms.get(4 * u + l) {
                        *lane += v;
                        acc += *lane * *lane;
                    }
                }
            }
            let h1 = lanes[0] + lanes[1];
            let h2 = h1 + lanes[2];
            let h3 = h2 + lanes[3];
            acc += h1 * h1 + h2 * h2 + h3 * h3;
            *out = h3;
        }
        if cols == 1 {
            return U / 3f64.sqrt() * acc.sqrt();
        }
        terms = next;
    }
}

/// σ per column of the rounding error of `sum_rows` (R, C): stages of 64 rows.
fn rounding_sigma_rows(x: &[f64], c: usize) -> Vec<f64> {
    let mut terms = x.to_vec();
    let mut acc = vec![0.0; c];
    loop {
        let (next, s2) = replay_stage(&terms, c, 64);
        acc.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
        if next.len() <= c {
            return acc.iter().map(|a| U / 3f64.sqrt() * a.sqrt()).collect();
        }
        terms = next;
    }
}

fn read1(gpu: &Gpu, t: &Tensor) -> f32 {
    assert_eq!(t.shape, [1]);
    gpu.read_f32(t).unwrap()[0]
}

fn check_totals(gpu: &Gpu, x: &[f32], exact: bool) {
    let n = x.len();
    let gx = gpu.upload_f32(&[n], x).unwrap();
    let xs = f64s(x);
    let (tol, tol2) =
        if exact { (0.0, 0.0) } else { (6.0 * rounding_sigma(&xs, false), 6.0 * rounding_sigma(&xs, true)) };
    poison_stages(gpu, n, |m| m.div_ceil(4).div_ceil(256));
    let s = read1(gpu, &sum(gpu, &gx).unwrap()) as f64;
    let want = reference::sum(&xs);
    assert!((s - want).abs() <= tol, "sum of {n}: {s} vs {want} (tol {tol:e})");
    poison_stages(gpu, n, |m| m.div_ceil(4).div_ceil(256));
    let s2 = read1(gpu, &sum_squares(gpu, &gx).unwrap()) as f64;
    let want2 = reference::sum_squares(&xs);
    assert!((s2 - want2).abs() <= tol2, "sum_squares of {n}: {s2} vs {want2} (tol {tol2:e})");
}

/// Integers in -1..=1: Σ and Σx² stay below 2²⁴ for n ≤ 10M, so f32 must be exact.
fn integers(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1i32..=1) as f32).collect()
}

#[test]
fn sum_and_sum_squares_awkward_sizes() {
    let gpu = gpu();
    let mut rng = rng();
    for n in [1, 3, 63, 65, 255, 256, 257, 1000, 65_535, 65_537, 300_001] {
        check_totals(&gpu, &integers(&mut rng, n), true);
        check_totals(&gpu, &randn(&mut rng, n), false);
    }
}

#[test]
fn sum_and_sum_squares_ten_million() {
    let gpu = gpu();
    let mut rng = rng();
    let n = 10_000_019;
    check_totals(&gpu, &integers(&mut rng, n), true);
    check_totals(&gpu, &randn(&mut rng, n), false);
}

#[test]
fn sum_is_deterministic() {
    let gpu = gpu();
    let mut rng = rng();
    let x = gpu.upload_f32(&[1_000_003], &randn(&mut rng, 1_000_003)).unwrap();
    let a = gpu.read_f32(&sum_squares(&gpu, &x).unwrap()).unwrap();
    let b = gpu.read_f32(&sum_squares(&gpu, &x).unwrap()).unwrap();
    assert_eq!(a[0].to_bits(), b[0].to_bits());
}

fn check_rows(gpu: &Gpu, x: &[f32], shape: &[usize], exact: bool) {
    let c = *shape.last().unwrap();
    let r = x.len() / c;
    let gx = gpu.upload_f32(shape, x).unwrap();
    // every stage's (ceil(rows/64), C) partial, then the result
    let mut shapes = Vec::new();
    let mut rows = r;
    while rows > 1 {
        rows = rows.div_ceil(64);
        shapes.push(vec![rows, c]);
    }
    shapes.push(vec![c]);
    let refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
    poison_pool(gpu, &refs);
    let got = sum_rows(gpu, &gx).unwrap();
    assert_eq!(got.shape, [c]);
    let want = reference::sum_rows(&f64s(x), r, c);
    let tol = if exact { vec![0.0; c] } else { rounding_sigma_rows(&f64s(x), c).iter().map(|s| 6.0 * s).collect() };
    let got = gpu.read_f32(&got).unwrap();
    for j in 0..c {
        let e = (got[j] as f64 - want[j]).abs();
        assert!(e <= tol[j], "sum_rows {shape:?} column {j}: {} vs {} (tol {:e})", got[j], want[j], tol[j]);
    }
}

#[test]
fn sum_rows_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for r in [1, 3, 63, 64, 65, 257, 4096, 4097] {
        for c in [1, 4, 7, 65, 193, 384] {
            check_rows(&gpu, &integers(&mut rng, r * c), &[r, c], true);
            check_rows(&gpu, &randn(&mut rng, r * c), &[r, c], false);
        }
    }
    check_rows(&gpu, &randn(&mut rng, 2 * 3 * 5), &[2, 3, 5], false); // leading dims are rows
}

/// 10M rows of 1 (five stages) and more partial-sum invocations than one grid row holds.
#[test]
fn sum_rows_ten_million_rows() {
    let gpu = gpu();
    let mut rng = rng();
    let r = 10_000_019;
    check_rows(&gpu, &integers(&mut rng, r), &[r, 1], true);
    check_rows(&gpu, &integers(&mut rng, 4 * 1_000_003), &[1_000_003, 4], true);
}

#[test]
fn empty_inputs_sum_to_zero() {
    let gpu = gpu();
    let x = gpu.zeros(&[0, 5], DType::F32).unwrap();
    assert_eq!(gpu.read_f32(&sum_rows(&gpu, &x).unwrap()).unwrap(), vec![0.0; 5]);
    assert_eq!(gpu.read_f32(&sum(&gpu, &x).unwrap()).unwrap(), vec![0.0]);
}

#[test]
fn reduce_backward_references_match_finite_differences() {
    let mut rng = rng();
    let (r, c) = (3, 5);
    let x = f64s(&randn(&mut rng, r * c));
    let dc = f64s(&randn(&mut rng, c));
    let ds = 0.7;
    let fd = sop_reference::finite_difference(&x, |v| ds * reference::sum_squares(v));
    // f64 central differences of a quadratic: exact up to cancellation, ~1e-10.
    assert_close_f64("sum_squares dx", &reference::sum_squares_backward(&x, ds), &fd, 1e-8, 1e-8);
    let fd = sop_reference::finite_difference(&x, |v| sop_reference::dot(&reference::sum_rows(v, r, c), &dc));
    assert_close_f64("sum_rows dx", &reference::sum_rows_backward(&dc, r), &fd, 1e-8, 1e-8);
    let fd = sop_reference::finite_difference(&x, |v| ds * reference::sum(v));
    assert_close_f64("sum dx", &vec![ds; r * c], &fd, 1e-8, 1e-8);
}
