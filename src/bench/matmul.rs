//! Matmul benchmark cases: 256³, 512³, 1024³ and the ViT shapes, each for every variant.
//! Validation compares 16 sampled rows with the f64 reference (a full reference of 1024³
//! costs seconds of CPU and adds nothing: any indexing error shows in every row).

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::ops::matmul::{Matmul, MatmulVariant};

/// (M, K, N): C (M, N) = A (M, K) · B (K, N).
const SHAPES: [(usize, usize, usize); 6] =
    [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (4096, 192, 576), (4096, 192, 768), (4096, 768, 192)];

pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cases = Vec::new();
    for (m, k, n) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ga = std::rc::Rc::new(gpu.upload_f32(&[m, k], &a)?);
        let gb = std::rc::Rc::new(gpu.upload_f32(&[k, n], &b)?);
        let out = std::rc::Rc::new(gpu.empty(&[m, n], crate::gpu::DType::F32)?);
        let (a, b) = (std::rc::Rc::new(a), std::rc::Rc::new(b));
        for v in MatmulVariant::available_on(gpu) {
            let (ga2, gb2, out2) = (ga.clone(), gb.clone(), out.clone());
            let (ga3, gb3, out3, a3, b3) = (ga.clone(), gb.clone(), out.clone(), a.clone(), b.clone());
            cases.push(Case {
                kernel: "matmul",
                variant: v.name().to_string(),
                shape: format!("{m}x{k}·{k}x{n}"),
                work: Work::Flops(2.0 * (m * n * k) as f64),
                run: Box::new(move |gpu| Matmul::new(&ga2, &gb2).variant(v).run_into(gpu, &out2, false)),
                validate: Box::new(move |gpu| {
                    gpu.fill_f32(&out3, f32::NAN)?;
                    Matmul::new(&ga3, &gb3).variant(v).run_into(gpu, &out3, false)?;
                    let got = gpu.read_f32(&out3)?;
                    validate_rows(&a3, &b3, &got, m, n, k)
                }),
            });
        }
    }
    Ok(cases)
}

fn validate_rows(a: &[f32], b: &[f32], got: &[f32], m: usize, n: usize, k: usize) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(m as u64 * 31 + n as u64);
    let rows: Vec<usize> = (0..16).map(|_| rng.random_range(0..m)).chain([m - 1]).collect();
    for i in rows {
        let a_row: Vec<f64> = a[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect();
        let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        let want = sop_reference::matmul::matmul_forward(&a_row, &b64, None, 1, 1, n, k, false, false, false, 1.0);
        for j in 0..n {
            let g = got[i * n + j] as f64;
            if !((g - want[j]).abs() <= 1e-5 * k as f64 + 1e-5 * want[j].abs()) {
                return Err(SopError::Invalid(format!("C[{i}, {j}] = {g}, reference {}", want[j])));
            }
        }
    }
    Ok(())
}
