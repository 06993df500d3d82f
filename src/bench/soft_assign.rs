//! Soft-assignment benchmark, forward and backward: the SOP-MIM patch shape (R = 2·64·196
//! patch tokens of a batch of 64, M = K = 512 patch prototypes with one SE each) and the
//! [CLS] shape (R = 256 rows, M = 32·9 = 288 SEs, K = 32 kept prototypes). Throughput
//! counts the (R, M)·(M, K) product, 2·R·M·K flops, for either direction.
//! Validation compares 16 sampled rows and the last one with the f64 reference, with the
//! tolerances of kernels-tests/tests/kernels/soft_assign.rs.

use std::rc::Rc;

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::ops::soft_assign::{soft_assign_backward, soft_assign_forward};

/// (R, M, K, τ).
const SHAPES: [(usize, usize, usize, f32); 2] = [(2 * 64 * 196, 512, 512, 0.1), (256, 288, 32, 0.1)];

struct Inputs {
    logits: Vec<f32>,
    y: Vec<f32>,
    dp: Vec<f32>,
}

pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut cases = Vec::new();
    for (r, m, k, tau) in SHAPES {
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let host = Rc::new(Inputs { logits: rand(r * m), y: rand(m * k), dp: rand(r * k) });
        let gl = Rc::new(gpu.upload_f32(&[r, m], &host.logits)?);
        let gy = Rc::new(gpu.upload_f32(&[m, k], &host.y)?);
        let gdp = Rc::new(gpu.upload_f32(&[r, k], &host.dp)?);
        for backward in [false, true] {
            let (gl, gy, gdp, host) = (gl.clone(), gy.clone(), gdp.clone(), host.clone());
            let (gl2, gy2, gdp2) = (gl.clone(), gy.clone(), gdp.clone());
            cases.push(Case {
                kernel: "soft_assign",
                variant: if backward { "backward" } else { "forward" }.to_string(),
                shape: format!("{r}x{m}·{m}x{k}"),
                work: Work::Flops(2.0 * (r * m * k) as f64),
                run: Box::new(move |gpu| {
                    if backward {
                        soft_assign_backward(gpu, &gl, &gy, tau, &gdp).map(|_| ())
                    } else {
                        soft_assign_forward(gpu, &gl, &gy, tau).map(|_| ())
                    }
                }),
                validate: Box::new(move |gpu| {
                    let got = if backward {
                        gpu.read_f32(&soft_assign_backward(gpu, &gl2, &gy2, tau, &gdp2)?)?
                    } else {
                        gpu.read_f32(&soft_assign_forward(gpu, &gl2, &gy2, tau)?)?
                    };
                    validate_rows(&host, &got, r, m, k, tau, backward)
                }),
            });
        }
    }
    Ok(cases)
}

fn validate_rows(h: &Inputs, got: &[f32], r: usize, m: usize, k: usize, tau: f32, backward: bool) -> Result<()> {
    use sop_reference::soft_assign as reference;
    let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let y = f64s(&h.y);
    let mut rng = rand::rngs::StdRng::seed_from_u64(r as u64 * 31 + m as u64);
    let rows: Vec<usize> = (0..16).map(|_| rng.random_range(0..r)).chain([r - 1]).collect();
    for i in rows {
        let logits = f64s(&h.logits[i * m..(i + 1) * m]);
        let dp = f64s(&h.dp[i * k..(i + 1) * k]);
        let (want, got, atol, rtol) = if backward {
            let want = reference::soft_assign_backward(&logits, &y, &dp, 1, m, k, tau as f64);
            let g_max =
                (0..m).map(|mm| (0..k).map(|kk| dp[kk] * y[mm * k + kk]).sum::<f64>().abs()).fold(0.0, f64::max);
            (want, &got[i * m..(i + 1) * m], g_max / tau as f64 * (2e-5 + k as f64 * 1.2e-7), 1e-4)
        } else {
            let want = reference::soft_assign_forward(&logits, &y, 1, m, k, tau as f64);
            (want, &got[i * k..(i + 1) * k], 1e-5 + m as f64 * 6e-8, 0.0)
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
