//! Top-k benchmark: the [CLS] task's anchor-vs-bank similarity shape, 64 anchors × 65,536
//! bank vectors, k = 8 (E − 1 support embeddings). Validation compares every row with the
//! reference exactly (values are copied, not computed). Throughput counts the bytes of x
//! read once plus the outputs written.

use std::rc::Rc;

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::ops::topk::topk_forward;

/// (R, C, k).
const SHAPES: [(usize, usize, usize); 1] = [(64, 65_536, 8)];

pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut cases = Vec::new();
    for (r, c, k) in SHAPES {
        let x: Vec<f32> = (0..r * c).map(|_| rng.random_range(-1.0..1.0)).collect();
        let gx = Rc::new(gpu.upload_f32(&[r, c], &x)?);
        let x = Rc::new(x);
        let gx2 = gx.clone();
        cases.push(Case {
            kernel: "topk",
            variant: "two_pass".to_string(),
            shape: format!("{r}x{c} k={k}"),
            work: Work::Bytes((4 * r * c + 8 * r * k) as f64),
            run: Box::new(move |gpu| topk_forward(gpu, &gx, k).map(|_| ())),
            validate: Box::new(move |gpu| {
                let (values, indices) = topk_forward(gpu, &gx2, k)?;
                let (got_v, got_i) = (gpu.read_f32(&values)?, gpu.read_u32(&indices)?);
                let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let (want_v, want_i) = sop_reference::topk::topk_forward(&x64, r, c, k);
                for i in 0..r * k {
                    if got_i[i] != want_i[i] || got_v[i] as f64 != want_v[i] {
                        return Err(SopError::Invalid(format!(
                            "row {} slot {}: ({}, {}) but the reference says ({}, {})",
                            i / k,
                            i % k,
                            got_v[i],
                            got_i[i],
                            want_v[i],
                            want_i[i]
                        )));
                    }
                }
                Ok(())
            }),
        });
    }
    Ok(cases)
}
