//! layernorm_forward / layernorm_backward against the f64 reference on awkward shapes, and
//! the reference backward against finite differences.
//!
//! Tolerances. Inputs x = u + offset (u uniform in [-1, 1], offset up to 4), γ, β, dy uniform
//! in [-1, 1]. f32 sums of D terms carry a rounding error of a few ·2⁻²⁴·D·max|term| in the
//! worst case (√D typically); the mean and the variance inherit it. So y, dx, mean and rstd
//! get atol/rtol 2e-7·(D + 8) (8e-5 at D = 384; indexing mistakes give O(1) errors), plus the
//! conditioning of the op itself: x − μ is only known to u·|x| (u = 2⁻²⁴), which y amplifies
//! by rstd and dx (through the cancellation in 1 − x̂ᵢx̂ⱼ, |x̂| ≤ √D) by rstd²·√D; `cond`
//! adds 8u·max|x|·rstd (and ·rstd·(1 + √D) for dx) from the reference statistics. For rows with a spread
//! well above √eps this is small; PyTorch's f32 kernels have the same error.
//! dγ and dβ are sums over R rows of O(1) terms: atol 8e-6·√(R + 8) (a random-walk bound
//! with a wide margin over the errors we observe).

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::layernorm::{layernorm_backward, layernorm_forward};
use sop_reference::layernorm as reference;

const ROWS: [usize; 5] = [1, 3, 63, 65, 257];
const WIDTHS: [usize; 6] = [1, 4, 7, 65, 193, 384];

/// Give the pool NaN-filled buffers of these shapes: outputs allocated next reuse them, so an
/// element the kernel fails to write reads back as NaN.
fn inputs(rng: &mut impl rand::Rng, r: usize, d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let offset = rng.random_range(-4.0f32..4.0);
    let x: Vec<f32> = randn(rng, r * d).iter().map(|v| v + offset).collect();
    (x, randn(rng, d), randn(rng, d), randn(rng, r * d))
}

fn tol_row(d: usize) -> f64 {
    2e-7 * (d + 8) as f64
}

fn tol_sum(r: usize) -> f64 {
    8e-6 * ((r + 8) as f64).sqrt()
}

fn check(gpu: &Gpu, rng: &mut impl rand::Rng, shape: &[usize], eps: f32) {
    let d = *shape.last().unwrap();
    let r: usize = shape[..shape.len() - 1].iter().product();
    check_inputs(gpu, shape, eps, inputs(rng, r, d));
}

fn check_inputs(gpu: &Gpu, shape: &[usize], eps: f32, (x, gamma, beta, dy): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)) {
    let d = *shape.last().unwrap();
    let r: usize = shape[..shape.len() - 1].iter().product();
    let gx = gpu.upload_f32(shape, &x).unwrap();
    let gg = gpu.upload_f32(&[d], &gamma).unwrap();
    let gb = gpu.upload_f32(&[d], &beta).unwrap();
    let gdy = gpu.upload_f32(shape, &dy).unwrap();
    let what = format!("layernorm {shape:?} eps {eps}");

    poison_pool(gpu, &[shape, &[r], &[r]]);
    let (y, mean, rstd) = layernorm_forward(gpu, &gx, &gg, &gb, eps).unwrap();
    assert_eq!(y.shape, shape);
    assert_eq!(mean.shape, [r]);
    let (wy, wmean, wrstd) = reference::layernorm_forward(&f64s(&x), &f64s(&gamma), &f64s(&beta), r, d, eps as f64);
    let t = tol_row(d);
    let xmax = x.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let rmax = wrstd.iter().fold(0.0f64, |m, &v| m.max(v));
    let cond = 8.0 * 2f64.powi(-24) * xmax * rmax;
    assert_close(&format!("{what} y"), &gpu.read_f32(&y).unwrap(), &wy, t + cond, t);
    assert_close(&format!("{what} mean"), &gpu.read_f32(&mean).unwrap(), &wmean, t, t);
    assert_close(&format!("{what} rstd"), &gpu.read_f32(&rstd).unwrap(), &wrstd, 0.0, t);

    let nchunks = r.div_ceil(64);
    poison_pool(gpu, &[shape, &[nchunks, d], &[nchunks, d], &[d], &[d]]);
    let (dx, dgamma, dbeta) = layernorm_backward(gpu, &gdy, &gx, &gg, &mean, &rstd).unwrap();
    // The reference backward from the reference statistics: the GPU's own μ, rstd differ
    // from them by the forward's tolerance, which the backward's tolerance covers.
    let (wdx, wdgamma, wdbeta) =
        reference::layernorm_backward(&f64s(&dy), &f64s(&x), &f64s(&gamma), &wmean, &wrstd, r, d);
    assert_close(
        &format!("{what} dx"),
        &gpu.read_f32(&dx).unwrap(),
        &wdx,
        t + cond * rmax * (1.0 + (d as f64).sqrt()),
        t,
    );
    let ts = tol_sum(r) + t;
    assert_close(&format!("{what} dgamma"), &gpu.read_f32(&dgamma).unwrap(), &wdgamma, ts, ts);
    assert_close(&format!("{what} dbeta"), &gpu.read_f32(&dbeta).unwrap(), &wdbeta, ts, ts);
}

#[test]
fn layernorm_forward_backward_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for r in ROWS {
        for d in WIDTHS {
            check(&gpu, &mut rng, &[r, d], 1e-5);
        }
    }
}

#[test]
fn layernorm_leading_dims_and_eps() {
    let gpu = gpu();
    let mut rng = rng();
    check(&gpu, &mut rng, &[2, 3, 7], 1e-6); // (B, T, D): 6 rows
    check(&gpu, &mut rng, &[4, 65, 33], 1e-6);
    check(&gpu, &mut rng, &[5, 1, 3], 0.5); // a large eps changes rstd visibly
    check(&gpu, &mut rng, &[7], 1e-6); // one row without leading dims
}

/// More rows than 65,535 workgroups of 64 hold (the 2-D grid, D = 4: one invocation per row),
/// and dγ, dβ summed over 4M rows in four stages. Rows (c ± v₁, c ± v₂) with |v| in [0.5, 1]:
/// a spread far above √eps, so the conditioning term stays small and any row the grid
/// misses shows.
#[test]
fn layernorm_many_rows() {
    let gpu = gpu();
    let mut rng = rng();
    let r = 64 * 65_535 + 37;
    let mut x = Vec::with_capacity(4 * r);
    for _ in 0..r {
        let c = rng.random_range(-4.0f32..4.0);
        for _ in 0..2 {
            let v = rng.random_range(0.5f32..1.0) * if rng.random::<bool>() { 1.0 } else { -1.0 };
            x.extend([c + v, c - v]);
        }
    }
    let inputs = (x, randn(&mut rng, 4), randn(&mut rng, 4), randn(&mut rng, 4 * r));
    check_inputs(&gpu, &[r, 4], 1e-5, inputs);
}

#[test]
fn layernorm_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    for (r, d, eps) in [(3, 7, 1e-5), (2, 5, 0.3), (1, 2, 1e-6)] {
        let (x, gamma, beta, dy) = inputs(&mut rng, r, d);
        let (x, gamma, beta, dy) = (f64s(&x), f64s(&gamma), f64s(&beta), f64s(&dy));
        let (_, mean, rstd) = reference::layernorm_forward(&x, &gamma, &beta, r, d, eps);
        let (dx, dgamma, dbeta) = reference::layernorm_backward(&dy, &x, &gamma, &mean, &rstd, r, d);
        let loss = |x: &[f64], g: &[f64], b: &[f64]| {
            sop_reference::dot(&reference::layernorm_forward(x, g, b, r, d, eps).0, &dy)
        };
        let fx = sop_reference::finite_difference(&x, |v| loss(v, &gamma, &beta));
        let fg = sop_reference::finite_difference(&gamma, |v| loss(&x, v, &beta));
        let fb = sop_reference::finite_difference(&beta, |v| loss(&x, &gamma, v));
        // Central differences with h = 1e-6 in f64: truncation O(h²·f''') and cancellation
        // O(1e-16/h) both below 1e-8 for these O(1)..O(1/√eps)-curvature functions.
        let what = format!("r {r} d {d} eps {eps}");
        assert_close_f64(&format!("{what} dx"), &dx, &fx, 1e-6, 1e-6);
        assert_close_f64(&format!("{what} dgamma"), &dgamma, &fg, 1e-7, 1e-6);
        assert_close_f64(&format!("{what} dbeta"), &dbeta, &fb, 1e-7, 1e-6);
    }
}

#[test]
fn layernorm_rejects_bad_shapes() {
    let gpu = gpu();
    let x = gpu.zeros(&[4, 5], DType::F32).unwrap();
    let g5 = gpu.zeros(&[5], DType::F32).unwrap();
    let g4 = gpu.zeros(&[4], DType::F32).unwrap();
    let err = layernorm_forward(&gpu, &x, &g4, &g5, 1e-5).unwrap_err().to_string();
    assert!(err.contains("gamma"), "{err}");
    let err = layernorm_forward(&gpu, &x, &g5, &g4, 1e-5).unwrap_err().to_string();
    assert!(err.contains("beta"), "{err}");
    let (_, mean, rstd) = layernorm_forward(&gpu, &x, &g5, &g5, 1e-5).unwrap();
    let dy = gpu.zeros(&[5, 4], DType::F32).unwrap();
    let err = layernorm_backward(&gpu, &dy, &x, &g5, &mean, &rstd).unwrap_err().to_string();
    assert!(err.contains("dy"), "{err}");
    let err = layernorm_backward(&gpu, &x, &x, &g5, &g4.reshape(&[4]).unwrap(), &g5).unwrap_err().to_string();
    assert!(err.contains("rstd"), "{err}");
}

/// `layernorm_backward_onto`: dx lands on a gradient x already holds, the bits of `add(prev,
/// dx)` after the plain backward (the same arithmetic), aligned and unaligned widths, the
/// output poisoned; dγ and dβ are those of the plain backward, and prev is left as it was.
#[test]
fn layernorm_backward_onto_gives_the_bits_of_backward_then_add() {
    use sop::ops::elementwise::add;
    use sop::ops::layernorm::layernorm_backward_onto;
    let gpu = gpu();
    let mut rng = rng();
    for &(r, d) in &[(1, 1), (5, 12), (67, 33)] {
        let x = gpu.upload_f32(&[r, d], &randn(&mut rng, r * d)).unwrap();
        let gamma = gpu.upload_f32(&[d], &randn(&mut rng, d)).unwrap();
        let beta = gpu.upload_f32(&[d], &randn(&mut rng, d)).unwrap();
        let dy = gpu.upload_f32(&[r, d], &randn(&mut rng, r * d)).unwrap();
        let prev_host = randn(&mut rng, r * d);
        let prev = gpu.upload_f32(&[r, d], &prev_host).unwrap();
        let (_, mean, rstd) = layernorm_forward(&gpu, &x, &gamma, &beta, 1e-5).unwrap();
        let (dx, dg, db) = layernorm_backward(&gpu, &dy, &x, &gamma, &mean, &rstd).unwrap();
        let want = gpu.read_u32(&add(&gpu, &prev, &dx).unwrap()).unwrap();
        poison_pool(&gpu, &[&[r, d]]);
        let (onto, dg2, db2) = layernorm_backward_onto(&gpu, &dy, &x, &gamma, &mean, &rstd, Some(&prev)).unwrap();
        let what = format!("layernorm_backward_onto {r}x{d}");
        assert_eq!(gpu.read_u32(&onto).unwrap(), want, "{what}: dx");
        assert_eq!(gpu.read_u32(&dg2).unwrap(), gpu.read_u32(&dg).unwrap(), "{what}: dgamma");
        assert_eq!(gpu.read_u32(&db2).unwrap(), gpu.read_u32(&db).unwrap(), "{what}: dbeta");
        assert_eq!(gpu.read_f32(&prev).unwrap(), prev_host, "{what}: prev changed");
    }
}
