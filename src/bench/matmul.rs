//! Matmul benchmark cases: 256³, 512³, 1024³ and the ViT shapes, each for every variant;
//! on GPUs also 4096³ and the weight gradients of ViT-S/16 at batch 128 (dW = dYᵀ·X with
//! K = 128 · 197 tokens: the split-K case).
//! Validation compares 16 sampled rows with the f64 reference (a full reference of 1024³
//! costs seconds of CPU and adds nothing: any indexing error shows in every row).

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::matmul::{Matmul, MatmulVariant};

/// (M, K, N): C (M, N) = A (M, K) · B (K, N).
const SHAPES: [(usize, usize, usize); 6] =
    [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (4096, 192, 576), (4096, 192, 768), (4096, 768, 192)];

/// (M, K, N, A transposed) run on GPUs only (minutes on a CPU adapter): 4096³, and ViT-S/16
/// weight gradients at batch 128 (qkv, fc1, fc2: A = dY stored (K, M)).
const GPU_SHAPES: [(usize, usize, usize, bool); 4] =
    [(4096, 4096, 4096, false), (1152, 25216, 384, true), (1536, 25216, 384, true), (384, 25216, 1536, true)];

pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cases = Vec::new();
    let gpu_shapes = if gpu.is_cpu() { &GPU_SHAPES[..0] } else { &GPU_SHAPES[..] };
    for (m, k, n, ta) in SHAPES.iter().map(|&(m, k, n)| (m, k, n, false)).chain(gpu_shapes.iter().copied()) {
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ga = std::rc::Rc::new(gpu.upload_f32(&if ta { [k, m] } else { [m, k] }, &a)?);
        let gb = std::rc::Rc::new(gpu.upload_f32(&[k, n], &b)?);
        let out = std::rc::Rc::new(gpu.empty(&[m, n], crate::gpu::DType::F32)?);
        let (a, b) = (std::rc::Rc::new(a), std::rc::Rc::new(b));
        for v in MatmulVariant::available_on(gpu) {
            let (ga2, gb2, out2) = (ga.clone(), gb.clone(), out.clone());
            let (ga3, gb3, out3, a3, b3) = (ga.clone(), gb.clone(), out.clone(), a.clone(), b.clone());
            cases.push(Case {
                kernel: "matmul",
                variant: v.name().to_string(),
                shape: if ta { format!("({k}x{m})ᵀ·{k}x{n}") } else { format!("{m}x{k}·{k}x{n}") },
                work: Work::Flops(2.0 * (m * n * k) as f64),
                run: Box::new(move |gpu| product(&ga2, &gb2, v, ta).run_into(gpu, &out2, false)),
                validate: Box::new(move |gpu| {
                    gpu.fill_f32(&out3, f32::NAN)?;
                    product(&ga3, &gb3, v, ta).run_into(gpu, &out3, false)?;
                    let got = gpu.read_f32(&out3)?;
                    validate_rows(&a3, &b3, &got, m, n, k, ta)
                }),
            });
        }
    }
    Ok(cases)
}

fn product<'a>(a: &'a Tensor, b: &'a Tensor, v: MatmulVariant, trans_a: bool) -> Matmul<'a> {
    let mm = Matmul::new(a, b).variant(v);
    if trans_a {
        mm.trans_a()
    } else {
        mm
    }
}

/// Rows of C against the reference; `ta`: A is stored (K, M).
fn validate_rows(a: &[f32], b: &[f32], got: &[f32], m: usize, n: usize, k: usize, ta: bool) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(m as u64 * 31 + n as u64);
    let rows: Vec<usize> = (0..16).map(|_| rng.random_range(0..m)).chain([m - 1]).collect();
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    for i in rows {
        let a_row: Vec<f64> = (0..k).map(|kk| if ta { a[kk * m + i] } else { a[i * k + kk] } as f64).collect();
        let want = sop_reference::matmul::matmul_forward(&a_row, &b64, None, 1, 1, n, k, false, false, false, 1.0);
        for j in 0..n {
            let g = got[i * n + j] as f64;
            // Written so that a NaN fails.
            let close = (g - want[j]).abs() <= 1e-5 * k as f64 + 1e-5 * want[j].abs();
            if !close {
                return Err(SopError::Invalid(format!("C[{i}, {j}] = {g}, reference {}", want[j])));
            }
        }
    }
    Ok(())
}
