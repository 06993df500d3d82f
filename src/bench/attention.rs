//! Attention benchmark cases, every variant (fused, flash2, unfused, subgroup where it fits)
//! forward and backward, at
//! the ViT-S (H = 6) and ViT-Ti (H = 3) shapes (T = 197 tokens, head width Dh = 64; B = 64
//! images, 8 on CPU adapters where one ViT-S backward at B = 64 takes tens of seconds) and
//! at the default model's (B 64, T 17, H 2, Dh 32), where the rule takes `subgroup` on CPUs.
//! Work: the forward's two matmuls are 4·B·H·T²·Dh flops; the backward counts 2.5× that
//! (five matmuls' worth, the usual flash-attention accounting; the P recomputation is not
//! counted). Validation compares two whole images (b = 0 and b = B − 1, every head and row)
//! with the f64 reference, which materialises the softmax; a full reference would cost
//! seconds of CPU and any indexing error shows in every image.

use std::rc::Rc;

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::attention::{attention_backward_with, attention_forward_with, AttentionVariant};
use sop_reference::attention::{self as reference, Attn};

/// (name, B, T, H, Dh) on GPUs.
const SHAPES: [(&str, usize, usize, usize, usize); 3] =
    [("vit-s", 64, 197, 6, 64), ("vit-ti", 64, 197, 3, 64), ("default", 64, 17, 2, 32)];
/// (name, B, T, H, Dh) on CPU adapters.
const CPU_SHAPES: [(&str, usize, usize, usize, usize); 2] = [("vit-s", 8, 197, 6, 64), ("default", 64, 17, 2, 32)];

/// Validation bound: the tests see errors ≤ 2e-6 at these sizes on lavapipe; GPUs with
/// approximate exp/log may differ more, an indexing error gives O(0.1).
const TOL: f64 = 1e-4;

struct Inputs {
    a: Attn,
    qkv: Vec<f32>,
    dout: Vec<f32>,
    gqkv: Tensor,
    gdout: Tensor,
    out: Tensor,
    lse: Tensor,
}

pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut cases = Vec::new();
    let shapes = if gpu.is_cpu() { &CPU_SHAPES[..] } else { &SHAPES[..] };
    for &(name, b, t, h, dh) in shapes {
        let a = Attn { b, t, h, dh };
        let d = a.d();
        // q, k in ±2.45 so the scaled scores have std ≈ 2 (softmaxes neither flat nor one-hot).
        let qkv: Vec<f32> = (0..b * t * 3 * d)
            .map(|i| rng.random_range(-1.0f32..1.0) * if (i / d) % 3 < 2 { 2.45 } else { 1.0 })
            .collect();
        let dout: Vec<f32> = (0..b * t * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let gqkv = gpu.upload_f32(&[b, t, 3 * d], &qkv)?;
        let gdout = gpu.upload_f32(&[b, t, d], &dout)?;
        let (out, lse) = attention_forward_with(gpu, &gqkv, h, AttentionVariant::Fused)?;
        let inp = Rc::new(Inputs { a, qkv, dout, gqkv, gdout, out, lse });
        let shape = format!("{name} B{b} T{t} H{h} Dh{dh}");
        for v in AttentionVariant::ALL {
            cases.extend(variant_cases(gpu, &inp, &shape, v));
        }
    }
    Ok(cases)
}

/// The forward and backward cases of variant `v` (none where it does not fit).
fn variant_cases(gpu: &Gpu, inp: &Rc<Inputs>, shape: &str, v: AttentionVariant) -> Vec<Case> {
    let Attn { b, t, h, dh } = inp.a;
    let d = h * dh;
    if let Err(e) = v.check_fits(gpu, &inp.a_dims()) {
        log::warn!("attention {} {shape}: not run ({e})", v.name());
        return Vec::new();
    }
    let fwd_flops = 4.0 * (b * h * t * t * dh) as f64;
    let mut cases = Vec::new();
    let (run_in, val_in) = (inp.clone(), inp.clone());
    cases.push(Case {
        kernel: "attention",
        variant: format!("forward/{}", v.name()),
        shape: shape.to_string(),
        work: Work::Flops(fwd_flops),
        run: Box::new(move |gpu| attention_forward_with(gpu, &run_in.gqkv, run_in.a.h, v).map(|_| ())),
        validate: Box::new(move |gpu| {
            let i = &val_in;
            let (out, lse) = attention_forward_with(gpu, &i.gqkv, i.a.h, v)?;
            let (out, lse) = (gpu.read_f32(&out)?, gpu.read_f32(&lse)?);
            for bi in [0, i.a.b - 1] {
                let one = Attn { b: 1, ..i.a };
                let (want_out, want_lse) = reference::attention_forward(&slice(&i.qkv, bi, one.t * 3 * d), one);
                compare("out", bi, &out[bi * t * d..(bi + 1) * t * d], &want_out)?;
                compare("lse", bi, &lse[bi * h * t..(bi + 1) * h * t], &want_lse)?;
            }
            Ok(())
        }),
    });

    let (run_in, val_in) = (inp.clone(), inp.clone());
    cases.push(Case {
        kernel: "attention",
        variant: format!("backward/{}", v.name()),
        shape: shape.to_string(),
        work: Work::Flops(2.5 * fwd_flops),
        run: Box::new(move |gpu| {
            let i = &run_in;
            attention_backward_with(gpu, [&i.gqkv, &i.out, &i.lse, &i.gdout], i.a.h, v).map(|_| ())
        }),
        validate: Box::new(move |gpu| {
            let i = &val_in;
            let dqkv = attention_backward_with(gpu, [&i.gqkv, &i.out, &i.lse, &i.gdout], i.a.h, v)?;
            let dqkv = gpu.read_f32(&dqkv)?;
            for bi in [0, i.a.b - 1] {
                let one = Attn { b: 1, ..i.a };
                let want =
                    reference::attention_backward(&slice(&i.qkv, bi, t * 3 * d), &slice(&i.dout, bi, t * d), one);
                compare("dqkv", bi, &dqkv[bi * t * 3 * d..(bi + 1) * t * 3 * d], &want)?;
            }
            Ok(())
        }),
    });
    cases
}

impl Inputs {
    fn a_dims(&self) -> crate::ops::attention::Dims {
        let Attn { b, t, h, dh } = self.a;
        crate::ops::attention::Dims { b, t, h, d: h * dh, dh }
    }
}

/// Image `b` of a batch with `len` values per image, in f64.
fn slice(x: &[f32], b: usize, len: usize) -> Vec<f64> {
    x[b * len..(b + 1) * len].iter().map(|&v| v as f64).collect()
}

fn compare(what: &str, b: usize, got: &[f32], want: &[f64]) -> Result<()> {
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if g.is_nan() || (g - w).abs() > TOL * (1.0 + w.abs()) {
            return Err(SopError::Invalid(format!("{what} of image {b}, element {j}: {g}, reference {w}")));
        }
    }
    Ok(())
}
