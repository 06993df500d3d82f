//! Soft-assignment benchmarks at the training shapes, every variant, forward and backward:
//! - `soft_assign`: the op on stored logits (R, M) → p (R, K) (routes `tiled16`, `matmul`,
//!   `votes`); work 2·R·M·K, the dense (R, M)·(M, K) product, in either direction.
//! - `assignment`: the whole P(u) = softmax(u·Dᵀ/τ)·Y from u (R, W) (variants `tiled16`,
//!   `matmul`, `votes`: logits by the adapter's matmul, then that route; `flash`: fused); the
//!   backward from dp (R, K) to du (R, W). Work 2·R·M·(W + K) in either direction: the two
//!   dense products a plain implementation does.
//!
//! The `votes` route does O(R·(M + K)) work instead of the R·M·K it is credited with: its
//! GFLOP/s are dense-equivalent (the time a dense product of that size would have to beat).
//! Shapes (R, M, K, E, W): the default small recipe's patch and [CLS] tasks (batch 64, 16
//! patches, P′ = 128 with E = 1; P′ = 16 with E = 5) and the paper recipe's (P′ = 512 with E =
//! 1, rows cut to 2,048 of the 50,176 so lavapipe finishes; P′ = 32 with E = 9 over the 1,536
//! [CLS] rows of batch 128 with 10 local crops). Y is SOP's vote matrix (owned rows).
//! Validation compares 8 sampled rows and the last one with the f64 reference, with the
//! tolerances of kernels-tests/tests/kernels/soft_assign.rs.

use std::rc::Rc;

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::soft_assign::{soft_assign_backward_with, soft_assign_forward_with, LogitsRoute, Votes};
use crate::ops::soft_assign_variant::{assign_backward, assign_forward, SoftAssignVariant};
use sop_reference::soft_assign as reference;

/// (label, R, M, K, E, W); τ = 0.1 (the student's).
const SHAPES: [(&str, usize, usize, usize, usize, usize); 4] = [
    ("small patch", 2048, 128, 128, 1, 256),
    ("small cls", 128, 80, 16, 5, 256),
    ("paper patch", 2048, 512, 512, 1, 256),
    ("paper cls", 1536, 288, 32, 9, 256),
];
const TAU: f32 = 0.1;

struct Host {
    r: usize,
    m: usize,
    k: usize,
    w: usize,
    u: Vec<f32>,
    d: Vec<f32>,
    logits: Vec<f32>,
    y: Vec<f32>,
    dp: Vec<f32>,
}

struct Device {
    u: Tensor,
    d: Tensor,
    logits: Tensor,
    y: Tensor,
    dp: Tensor,
    experts: usize,
}

impl Device {
    fn votes(&self) -> Votes<'_> {
        Votes::Owned { y: &self.y, experts: self.experts }
    }
}

fn unit_rows(rng: &mut impl Rng, r: usize, w: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..r * w).map(|_| rng.random_range(-1.0..1.0)).collect();
    for row in x.chunks_mut(w) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        row.iter_mut().for_each(|v| *v /= n);
    }
    x
}

fn inputs(
    gpu: &Gpu,
    seed: u64,
    (r, m, k, e, w): (usize, usize, usize, usize, usize),
) -> Result<(Rc<Host>, Rc<Device>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let weights: Vec<f64> = (0..m).map(|i| if i % e == 0 { 0.9 } else { rng.random_range(0.0..1.0) }).collect();
    let y: Vec<f32> = reference::owned_votes(&weights, k, e).iter().map(|&v| v as f32).collect();
    let (u, d) = (unit_rows(&mut rng, r, w), unit_rows(&mut rng, m, w));
    let logits = (0..r * m).map(|_| rng.random_range(-1.0..1.0)).collect();
    let dp = (0..r * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let h = Host { r, m, k, w, u, d, logits, y, dp };
    let dev = Device {
        u: gpu.upload_f32(&[r, w], &h.u)?,
        d: gpu.upload_f32(&[m, w], &h.d)?,
        logits: gpu.upload_f32(&[r, m], &h.logits)?,
        y: gpu.upload_f32(&[m, k], &h.y)?,
        dp: gpu.upload_f32(&[r, k], &h.dp)?,
        experts: e,
    };
    Ok((Rc::new(h), Rc::new(dev)))
}

/// The `soft_assign` cases: stored logits, every route.
pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (i, (label, r, m, k, e, w)) in SHAPES.into_iter().enumerate() {
        let (h, dev) = inputs(gpu, 13 + i as u64, (r, m, k, e, w))?;
        for route in [LogitsRoute::Tiled16, LogitsRoute::Matmul, LogitsRoute::Votes] {
            for backward in [false, true] {
                let name = format!("{route:?}").to_lowercase();
                let once = Rc::new(move |gpu: &Gpu, dev: &Device| -> Result<Tensor> {
                    if backward {
                        soft_assign_backward_with(gpu, route, &dev.logits, dev.votes(), TAU, &dev.dp)
                    } else {
                        soft_assign_forward_with(gpu, route, &dev.logits, dev.votes(), TAU)
                    }
                });
                let (once2, dev, dev2, h) = (once.clone(), dev.clone(), dev.clone(), h.clone());
                cases.push(Case {
                    kernel: "soft_assign",
                    variant: format!("{name}_{}", if backward { "bwd" } else { "fwd" }),
                    shape: format!("{label} {r}x{m}·{m}x{k}"),
                    work: Work::Flops(2.0 * (r * m * k) as f64),
                    run: Box::new(move |gpu| once(gpu, &dev).map(|_| ())),
                    validate: Box::new(move |gpu| {
                        let got = gpu.read_f32(&once2(gpu, &dev2)?)?;
                        validate_rows(&h, &got, &h.logits, backward, false)
                    }),
                });
            }
        }
    }
    Ok(cases)
}

/// The `assignment` cases: the whole assignment from u, every variant.
pub fn assignment_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (i, (label, r, m, k, e, w)) in SHAPES.into_iter().enumerate() {
        let (h, dev) = inputs(gpu, 13 + i as u64, (r, m, k, e, w))?;
        for v in SoftAssignVariant::ALL {
            for backward in [false, true] {
                let (dev, dev2, h) = (dev.clone(), dev.clone(), h.clone());
                // The backward starts from what one forward saved (logits or lse).
                let saved = assign_forward(gpu, v, &dev.u, &dev.d, dev.votes(), TAU)?;
                let once = Rc::new(move |gpu: &Gpu, dev: &Device| -> Result<Tensor> {
                    if backward {
                        let (p, s) = &saved;
                        assign_backward(gpu, v, &dev.u, &dev.d, dev.votes(), TAU, p, s, &dev.dp)
                    } else {
                        Ok(assign_forward(gpu, v, &dev.u, &dev.d, dev.votes(), TAU)?.0)
                    }
                });
                let once2 = once.clone();
                cases.push(Case {
                    kernel: "assignment",
                    variant: format!("{}_{}", v.name(), if backward { "bwd" } else { "fwd" }),
                    shape: format!("{label} {r}x{w}·{m}x{w}·{m}x{k}"),
                    work: Work::Flops(2.0 * (r * m * (w + k)) as f64),
                    run: Box::new(move |gpu| once(gpu, &dev).map(|_| ())),
                    validate: Box::new(move |gpu| {
                        let got = gpu.read_f32(&once2(gpu, &dev2)?)?;
                        let logits = reference_logits(&h);
                        validate_rows(&h, &got, &logits, backward, true)
                    }),
                });
            }
        }
    }
    Ok(cases)
}

/// u·Dᵀ of the host inputs in f32 (only its sampled rows are used).
fn reference_logits(h: &Host) -> Vec<f32> {
    let mut l = vec![0.0; h.r * h.m];
    for i in sampled_rows(h) {
        for mm in 0..h.m {
            let (u, d) = (&h.u[i * h.w..(i + 1) * h.w], &h.d[mm * h.w..(mm + 1) * h.w]);
            l[i * h.m + mm] = u.iter().zip(d).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
        }
    }
    l
}

fn sampled_rows(h: &Host) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(h.r as u64 * 31 + h.m as u64);
    (0..8).map(|_| rng.random_range(0..h.r)).chain([h.r - 1]).collect()
}

/// Sampled rows of `got` (p (R, K) forward; dlogits (R, M), or du (R, W) when `whole`,
/// backward) against the f64 reference at `logits`.
fn validate_rows(h: &Host, got: &[f32], logits: &[f32], backward: bool, whole: bool) -> Result<()> {
    let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let (m, k, w, tau) = (h.m, h.k, h.w, TAU as f64);
    let y = f64s(&h.y);
    // The logits' own f32 error (W-term dot products of unit rows), through 1/τ.
    let z_err = if whole { 2.0 * w as f64 * 6e-8 / tau } else { 0.0 };
    for i in sampled_rows(h) {
        let l = f64s(&logits[i * m..(i + 1) * m]);
        let dp = f64s(&h.dp[i * k..(i + 1) * k]);
        let (want, got, atol, rtol) = if backward {
            let dl = reference::soft_assign_backward(&l, &y, &dp, 1, m, k, tau);
            let g_max =
                (0..m).map(|mm| (0..k).map(|kk| dp[kk] * y[mm * k + kk]).sum::<f64>().abs()).fold(0.0, f64::max);
            if whole {
                let d = f64s(&h.d);
                let du: Vec<f64> = (0..w).map(|j| (0..m).map(|mm| dl[mm] * d[mm * w + j]).sum()).collect();
                let atol = 2.0 * g_max / tau * (2e-5 + k as f64 * 1.2e-7 + m as f64 * 6e-8 + z_err);
                (du, &got[i * w..(i + 1) * w], atol, 1e-4)
            } else {
                (dl, &got[i * m..(i + 1) * m], g_max / tau * (2e-5 + k as f64 * 1.2e-7), 1e-4)
            }
        } else {
            let p = reference::soft_assign_forward(&l, &y, 1, m, k, tau);
            (p, &got[i * k..(i + 1) * k], 1e-5 + m as f64 * 6e-8 + z_err, 0.0)
        };
        for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let g = g as f64;
            let close = (g - w).abs() <= atol + rtol * w.abs(); // false for NaN
            if !close {
                return Err(SopError::Invalid(format!("row {i}, column {j}: {g}, reference {w}")));
            }
        }
    }
    Ok(())
}
