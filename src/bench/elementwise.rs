//! Benchmark cases of the memory-bound kernels: layernorm (4096, 384), gelu on 4096×1536
//! elements, softmax (4096, 197), sum_squares on 22M elements (a ViT-S gradient norm) and
//! l2norm (4096, 256), forward and backward. Each case is validated against the f64
//! reference first. Work is the minimum memory traffic: every input read once and every
//! output written once (re-reads of a row that a kernel does from cache are not counted).

use std::rc::Rc;

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::{gelu, l2norm, layernorm, reduce, softmax};

fn random(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * rng.random_range(-1.0f32..1.0)).collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Err naming the worst element when |got − want| > atol + rtol·|want| anywhere.
fn close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) -> Result<()> {
    if got.len() != want.len() {
        return Err(SopError::Invalid(format!("{what}: {} elements, reference {}", got.len(), want.len())));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if g.is_nan() || (g - w).abs() > atol + rtol * w.abs() {
            return Err(SopError::Invalid(format!("{what}[{i}] = {g}, reference {w}")));
        }
    }
    Ok(())
}

fn case(
    kernel: &'static str,
    variant: &str,
    shape: String,
    bytes: usize,
    run: impl Fn(&Gpu) -> Result<()> + 'static,
    validate: impl Fn(&Gpu) -> Result<()> + 'static,
) -> Case {
    Case {
        kernel,
        variant: variant.to_string(),
        shape,
        work: Work::Bytes(bytes as f64),
        run: Box::new(run),
        validate: Box::new(validate),
    }
}

pub fn layernorm_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let (r, d, eps) = (4096, 384, 1e-6f32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (x, gamma, beta, dy) = (
        random(&mut rng, r * d, 2.0),
        random(&mut rng, d, 1.0),
        random(&mut rng, d, 1.0),
        random(&mut rng, r * d, 1.0),
    );
    let gx = Rc::new(gpu.upload_f32(&[r, d], &x)?);
    let gg = Rc::new(gpu.upload_f32(&[d], &gamma)?);
    let gb = Rc::new(gpu.upload_f32(&[d], &beta)?);
    let gdy = Rc::new(gpu.upload_f32(&[r, d], &dy)?);
    let (_, mean, rstd) = layernorm::layernorm_forward(gpu, &gx, &gg, &gb, eps)?;
    let (mean, rstd) = (Rc::new(mean), Rc::new(rstd));
    let (wy, wmean, wrstd) =
        sop_reference::layernorm::layernorm_forward(&f64s(&x), &f64s(&gamma), &f64s(&beta), r, d, eps as f64);
    let (wdx, wdg, wdb) =
        sop_reference::layernorm::layernorm_backward(&f64s(&dy), &f64s(&x), &f64s(&gamma), &wmean, &wrstd, r, d);
    let shape = format!("{r}x{d}");
    // Tolerances as in kernels-tests/tests/kernels/layernorm.rs: f32 sums over D = 384 terms.
    let t = 2e-7 * (d + 8) as f64;
    let mut cases = Vec::new();
    {
        let (gx, gg, gb) = (gx.clone(), gg.clone(), gb.clone());
        let (vx, vg, vb) = (gx.clone(), gg.clone(), gb.clone());
        cases.push(case(
            "layernorm",
            "forward",
            shape.clone(),
            4 * (2 * r * d + 2 * d + 2 * r),
            move |gpu| layernorm::layernorm_forward(gpu, &gx, &gg, &gb, eps).map(|_| ()),
            move |gpu| {
                let (y, _, _) = layernorm::layernorm_forward(gpu, &vx, &vg, &vb, eps)?;
                close("layernorm y", &gpu.read_f32(&y)?, &wy, 4.0 * t, t)
            },
        ));
    }
    let (vdy, vx, vg, vm, vr) = (gdy.clone(), gx.clone(), gg.clone(), mean.clone(), rstd.clone());
    cases.push(case(
        "layernorm",
        "backward",
        shape,
        4 * (3 * r * d + 3 * d + 2 * r),
        move |gpu| layernorm::layernorm_backward(gpu, &gdy, &gx, &gg, &mean, &rstd).map(|_| ()),
        move |gpu| {
            let (dx, dg, db) = layernorm::layernorm_backward(gpu, &vdy, &vx, &vg, &vm, &vr)?;
            close("layernorm dx", &gpu.read_f32(&dx)?, &wdx, 4.0 * t, t)?;
            let ts = 8e-6 * ((r + 8) as f64).sqrt();
            close("layernorm dgamma", &gpu.read_f32(&dg)?, &wdg, ts, ts)?;
            close("layernorm dbeta", &gpu.read_f32(&db)?, &wdb, ts, ts)
        },
    ));
    Ok(cases)
}

pub fn gelu_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let n = 4096 * 1536;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (x, dy) = (random(&mut rng, n, 6.0), random(&mut rng, n, 1.0));
    let gx = Rc::new(gpu.upload_f32(&[4096, 1536], &x)?);
    let gdy = Rc::new(gpu.upload_f32(&[4096, 1536], &dy)?);
    // Validate a strided sample of 65,536 elements: the f64 erf series is slow on 6M.
    let sample: Vec<usize> = (0..n).step_by(n / 65_536).collect();
    let xs: Vec<f64> = sample.iter().map(|&i| x[i] as f64).collect();
    let dys: Vec<f64> = sample.iter().map(|&i| dy[i] as f64).collect();
    let wy = sop_reference::gelu::gelu_forward(&xs);
    let wdx = sop_reference::gelu::gelu_backward(&xs, &dys);
    let pick = move |v: Vec<f32>, idx: &[usize]| -> Vec<f32> { idx.iter().map(|&i| v[i]).collect() };
    let shape = "4096x1536".to_string();
    let (vx, s1) = (gx.clone(), sample.clone());
    let fx = gx.clone();
    let mut cases = vec![case(
        "gelu",
        "forward",
        shape.clone(),
        4 * 2 * n,
        move |gpu| gelu::gelu_forward(gpu, &fx).map(|_| ()),
        move |gpu| {
            let y = gelu::gelu_forward(gpu, &vx)?;
            // erf to ~1e-7 (see shaders/gelu.wgsl): 1e-6·(1 + |x|) with |x| ≤ 6.
            close("gelu y", &pick(gpu.read_f32(&y)?, &s1), &wy, 7e-6, 1e-6)
        },
    )];
    let (vx, vdy) = (gx.clone(), gdy.clone());
    cases.push(case(
        "gelu",
        "backward",
        shape,
        4 * 3 * n,
        move |gpu| gelu::gelu_backward(gpu, &gx, &gdy).map(|_| ()),
        move |gpu| {
            let dx = gelu::gelu_backward(gpu, &vx, &vdy)?;
            close("gelu dx", &pick(gpu.read_f32(&dx)?, &sample), &wdx, 7e-6, 1e-6)
        },
    ));
    Ok(cases)
}

pub fn softmax_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let (r, c, scale) = (4096, 197, 0.125f32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let (x, dy) = (random(&mut rng, r * c, 8.0), random(&mut rng, r * c, 1.0));
    let gx = Rc::new(gpu.upload_f32(&[r, c], &x)?);
    let gdy = Rc::new(gpu.upload_f32(&[r, c], &dy)?);
    let gy = Rc::new(softmax::softmax_forward(gpu, &gx, scale)?);
    let wy = sop_reference::softmax::softmax_forward(&f64s(&x), r, c, scale as f64);
    let wdx = sop_reference::softmax::softmax_backward(&wy, &f64s(&dy), r, c, scale as f64);
    // As in kernels-tests/tests/kernels/softmax.rs: relative 4u·(max|scale·x| + C).
    let kappa = 4.0 * (1.0 / 16_777_216.0) * (8.0 * scale as f64 + c as f64);
    let shape = format!("{r}x{c}");
    let (fx, vx) = (gx.clone(), gx.clone());
    let mut cases = vec![case(
        "softmax",
        "forward",
        shape.clone(),
        4 * 2 * r * c,
        move |gpu| softmax::softmax_forward(gpu, &fx, scale).map(|_| ()),
        move |gpu| close("softmax y", &gpu.read_f32(&softmax::softmax_forward(gpu, &vx, scale)?)?, &wy, 1e-9, kappa),
    )];
    let (vy, vdy) = (gy.clone(), gdy.clone());
    cases.push(case(
        "softmax",
        "backward",
        shape,
        4 * 3 * r * c,
        move |gpu| softmax::softmax_backward(gpu, &gy, &gdy, scale).map(|_| ()),
        move |gpu| {
            close(
                "softmax dx",
                &gpu.read_f32(&softmax::softmax_backward(gpu, &vy, &vdy, scale)?)?,
                &wdx,
                2.0 * scale as f64 * kappa,
                kappa,
            )
        },
    ));
    Ok(cases)
}

pub fn reduce_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let n = 22_000_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let x = random(&mut rng, n, 1.0);
    let gx = Rc::new(gpu.upload_f32(&[n], &x)?);
    let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let vx = gx.clone();
    Ok(vec![case(
        "sum_squares",
        "forward",
        "22M".to_string(),
        4 * n,
        move |gpu| reduce::sum_squares(gpu, &gx).map(|_| ()),
        move |gpu| {
            let got = gpu.read_f32(&reduce::sum_squares(gpu, &vx)?)?;
            // Positive terms, ≤ 256 per partial over 4 stages: worst case ~(3·255 + 2)·u
            // relative; 2e-5 is below that bound and ~100× the typical error.
            close("sum_squares", &got, &[want], 0.0, 2e-5)
        },
    )])
}

pub fn l2norm_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let (r, c, eps) = (4096, 256, 1e-6f32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let (x, dy) = (random(&mut rng, r * c, 1.0), random(&mut rng, r * c, 1.0));
    let gx = Rc::new(gpu.upload_f32(&[r, c], &x)?);
    let gdy = Rc::new(gpu.upload_f32(&[r, c], &dy)?);
    let (_, norm) = l2norm::l2norm_forward(gpu, &gx, eps)?;
    let norm: Rc<Tensor> = Rc::new(norm);
    let (wy, wnorm) = sop_reference::l2norm::l2norm_forward(&f64s(&x), r, c, eps as f64);
    let wdx = sop_reference::l2norm::l2norm_backward(&f64s(&dy), &f64s(&x), &wnorm, r, c, eps as f64);
    // As in kernels-tests/tests/kernels/l2norm.rs: f32 sums of C = 256 terms; norms here are ≈ 9.
    let t = 2.0 * (1.0 / 16_777_216.0) * (c + 8) as f64;
    let shape = format!("{r}x{c}");
    let (fx, vx) = (gx.clone(), gx.clone());
    let mut cases = vec![case(
        "l2norm",
        "forward",
        shape.clone(),
        4 * (2 * r * c + r),
        move |gpu| l2norm::l2norm_forward(gpu, &fx, eps).map(|_| ()),
        move |gpu| close("l2norm y", &gpu.read_f32(&l2norm::l2norm_forward(gpu, &vx, eps)?.0)?, &wy, 1e-12, t),
    )];
    let (vdy, vx, vn) = (gdy.clone(), gx.clone(), norm.clone());
    cases.push(case(
        "l2norm",
        "backward",
        shape,
        4 * (3 * r * c + r),
        move |gpu| l2norm::l2norm_backward(gpu, &gdy, &gx, &norm, eps).map(|_| ()),
        move |gpu| close("l2norm dx", &gpu.read_f32(&l2norm::l2norm_backward(gpu, &vdy, &vx, &vn, eps)?)?, &wdx, t, t),
    ));
    Ok(cases)
}
