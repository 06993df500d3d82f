//! Fused attention (forward, backward, [CLS] probabilities) against the f64 reference that
//! materialises the full softmax, and the reference backward against finite differences.
//!
//! Inputs: q and k uniform in ±2.45 (variance 2), v and dout in ±1. Then the scaled scores
//! scale·q·k have a standard deviation of about 2 for every Dh, so the softmax rows are far
//! from uniform and far from one-hot (checked in `attention_cls_probs_matches_reference`):
//! both the max-subtraction and the weighting of many keys are exercised.
//!
//! Tolerances: everything runs in f32. A score is a Dh-term dot product of O(1) values, off by
//! a few ulps (~1e-6 absolute), and exp turns that into a relative error of the same size in
//! each P_ij; O, lse and the gradients are sums of T such terms with |O| ≤ 1, lse ≤ ~10 and
//! |dqkv| ≤ ~2 here. Observed worst errors over these shapes (lavapipe): out 1.1e-6, lse 2.1e-6,
//! dqkv 1.3e-6, cls probabilities 2e-7. The bounds below are about 10× those, while any
//! indexing, layout or normalisation mistake gives errors of O(0.01..1).

use crate::common::*;
use sop::gpu::{DType, Gpu};
use sop::ops::attention::{attention_backward, attention_cls_probs, attention_forward};
use sop_reference::attention::{self as reference, Attn};

/// (B, T, H, Dh): a single token, odd head widths (12, 7), T = 65 and 197/257 (ViT's T at
/// 224 px and patch 16, and a non-multiple of the workgroup size), Dh = 32 and 64.
const SHAPES: [(usize, usize, usize, usize); 6] =
    [(1, 1, 1, 8), (2, 3, 2, 12), (1, 5, 3, 7), (1, 65, 3, 32), (2, 197, 2, 64), (1, 257, 1, 64)];

fn attn((b, t, h, dh): (usize, usize, usize, usize)) -> Attn {
    Attn { b, t, h, dh }
}

/// Random qkv with q, k in ±2.45 and v in ±1 (see the header).
fn random_qkv(rng: &mut impl rand::Rng, a: Attn) -> Vec<f32> {
    let mut qkv = randn(rng, a.b * a.t * 3 * a.d());
    for (i, x) in qkv.iter_mut().enumerate() {
        if (i / a.d()) % 3 < 2 {
            *x *= 2.45;
        }
    }
    qkv
}

/// Put NaN-filled buffers of these shapes in the pool, where the next allocations of the same
/// sizes find them (the pool hands back the most recently freed buffer first).
fn poison_pool(gpu: &Gpu, shapes: &[&[usize]]) {
    let bufs: Vec<_> = shapes.iter().map(|s| gpu.empty(s, DType::F32).unwrap()).collect();
    for t in &bufs {
        gpu.fill_f32(t, f32::NAN).unwrap();
    }
}

fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}

#[test]
fn attention_forward_matches_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for shape in SHAPES {
        let a = attn(shape);
        let qkv = random_qkv(&mut rng, a);
        let gqkv = gpu.upload_f32(&[a.b, a.t, 3 * a.d()], &qkv).unwrap();
        poison_pool(&gpu, &[&[a.b, a.t, a.d()], &[a.b, a.h, a.t]]);
        let created = gpu.buffers_created();
        let (out, lse) = attention_forward(&gpu, &gqkv, a.h).unwrap();
        assert_eq!(gpu.buffers_created(), created, "outputs must come from the poisoned pool");
        assert_eq!(out.shape, [a.b, a.t, a.d()]);
        assert_eq!(lse.shape, [a.b, a.h, a.t]);
        let (got_out, got_lse) = (gpu.read_f32(&out).unwrap(), gpu.read_f32(&lse).unwrap());
        let (want_out, want_lse) = reference::attention_forward(&f64s(&qkv), a);
        eprintln!(
            "{a:?}: max |Δout| {:.2e}, max |Δlse| {:.2e}",
            max_abs_err(&got_out, &want_out),
            max_abs_err(&got_lse, &want_lse)
        );
        // |out| ≤ 1 (a convex combination of v in ±1), so an absolute bound.
        assert_close(&format!("attention_forward out {a:?}"), &got_out, &want_out, 1e-5, 0.0);
        // lse is O(1..10): the score error plus log's rounding, relative to lse.
        assert_close(&format!("attention_forward lse {a:?}"), &got_lse, &want_lse, 1e-5, 1e-6);

        // Deterministic: a second run gives the same bits.
        let (out2, lse2) = attention_forward(&gpu, &gqkv, a.h).unwrap();
        assert_eq!(gpu.read_f32(&out2).unwrap(), got_out, "forward is not deterministic");
        assert_eq!(gpu.read_f32(&lse2).unwrap(), got_lse, "lse is not deterministic");
    }
}

#[test]
fn attention_backward_matches_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for shape in SHAPES {
        let a = attn(shape);
        let qkv = random_qkv(&mut rng, a);
        let dout = randn(&mut rng, a.b * a.t * a.d());
        let gqkv = gpu.upload_f32(&[a.b, a.t, 3 * a.d()], &qkv).unwrap();
        let gdout = gpu.upload_f32(&[a.b, a.t, a.d()], &dout).unwrap();
        let (out, lse) = attention_forward(&gpu, &gqkv, a.h).unwrap();
        poison_pool(&gpu, &[&[a.b, a.h, a.t], &[a.b, a.t, 3 * a.d()]]);
        let created = gpu.buffers_created();
        let dqkv = attention_backward(&gpu, &gqkv, &out, &lse, &gdout, a.h).unwrap();
        assert_eq!(gpu.buffers_created(), created, "dqkv and delta must come from the poisoned pool");
        assert_eq!(dqkv.shape, [a.b, a.t, 3 * a.d()]);
        let got = gpu.read_f32(&dqkv).unwrap();
        let want = reference::attention_backward(&f64s(&qkv), &f64s(&dout), a);
        eprintln!(
            "{a:?}: max |Δdqkv| {:.2e}, max |dqkv| {:.2e}",
            max_abs_err(&got, &want),
            want.iter().fold(0.0f64, |m, x| m.max(x.abs()))
        );
        // Sums over T of P·(dP − D)·q (or k) and P·dO: errors ~1e-6 absolute at |dqkv| ≤ 2.
        assert_close(&format!("attention_backward dqkv {a:?}"), &got, &want, 1e-5, 1e-5);

        let again = attention_backward(&gpu, &gqkv, &out, &lse, &gdout, a.h).unwrap();
        assert_eq!(gpu.read_f32(&again).unwrap(), got, "backward is not deterministic");
    }
}

#[test]
fn attention_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    let a = Attn { b: 2, t: 3, h: 2, dh: 3 };
    let qkv = f64s(&random_qkv(&mut rng, a));
    let dout = f64s(&randn(&mut rng, a.b * a.t * a.d()));
    let dqkv = reference::attention_backward(&qkv, &dout, a);
    let fd =
        sop_reference::finite_difference(&qkv, |x| sop_reference::dot(&reference::attention_forward(x, a).0, &dout));
    // Central differences in f64 with h ~ 1e-6·|x|: truncation O(h²) and rounding ~1e-10.
    assert_close_f64("attention_backward (reference) vs finite differences", &dqkv, &fd, 1e-7, 1e-6);
}

#[test]
fn attention_cls_probs_matches_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for shape in SHAPES {
        let a = attn(shape);
        let qkv = random_qkv(&mut rng, a);
        let gqkv = gpu.upload_f32(&[a.b, a.t, 3 * a.d()], &qkv).unwrap();
        poison_pool(&gpu, &[&[a.b, a.h, a.t]]);
        let probs = attention_cls_probs(&gpu, &gqkv, a.h).unwrap();
        assert_eq!(probs.shape, [a.b, a.h, a.t]);
        let got = gpu.read_f32(&probs).unwrap();
        let want = reference::attention_cls_probs(&f64s(&qkv), a);
        eprintln!("{a:?}: max |Δp| {:.2e}", max_abs_err(&got, &want));
        // Probabilities in [0, 1], each with the relative error of exp of a score (~1e-6).
        assert_close(&format!("attention_cls_probs {a:?}"), &got, &want, 2e-6, 1e-5);
        for (bh, row) in got.chunks(a.t).enumerate() {
            let sum: f64 = row.iter().map(|&x| x as f64).sum();
            // T terms each rounded once in f32, plus the rounding of 1/l.
            assert!((sum - 1.0).abs() < 1e-5 * a.t as f64 + 1e-6, "{a:?} row {bh} sums to {sum}");
        }
        // The inputs give softmaxes that are neither uniform nor one-hot (see the header).
        if a.t >= 65 {
            let mean_max = got.chunks(a.t).map(|r| r.iter().cloned().fold(0.0f32, f32::max) as f64).sum::<f64>()
                / (a.b * a.h) as f64;
            assert!(mean_max > 3.0 / a.t as f64 && mean_max < 0.9, "{a:?}: mean max probability {mean_max}");
        }
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let gpu = gpu();
    let err = |r: sop::Result<_>| -> String {
        match r {
            Ok(_) => panic!("expected a shape error"),
            Err(e) => {
                assert!(matches!(e, sop::SopError::Shape { .. }), "not a shape error: {e}");
                e.to_string()
            }
        }
    };
    // Dh = 130 / 2 = 65 > 64.
    let wide = gpu.zeros(&[1, 2, 3 * 130], DType::F32).unwrap();
    let e = err(attention_forward(&gpu, &wide, 2).map(|_| ()));
    assert!(e.contains("head width"), "{e}");
    let e = err(attention_cls_probs(&gpu, &wide, 2).map(|_| ()));
    assert!(e.contains("head width"), "{e}");
    // D = 96 is not divisible by 5 heads; zero heads; last dim not a multiple of 3.
    let qkv = gpu.zeros(&[1, 2, 3 * 96], DType::F32).unwrap();
    let e = err(attention_forward(&gpu, &qkv, 5).map(|_| ()));
    assert!(e.contains("not divisible"), "{e}");
    err(attention_forward(&gpu, &qkv, 0).map(|_| ()));
    let odd = gpu.zeros(&[1, 2, 95], DType::F32).unwrap();
    err(attention_forward(&gpu, &odd, 1).map(|_| ()));
    // Backward with a dout of the wrong shape.
    let (out, lse) = attention_forward(&gpu, &qkv, 3).unwrap();
    let bad = gpu.zeros(&[1, 2, 95], DType::F32).unwrap();
    let e = err(attention_backward(&gpu, &qkv, &out, &lse, &bad, 3).map(|_| ()));
    assert!(e.contains("dout"), "{e}");
    let e = err(attention_backward(&gpu, &qkv, &out, &out, &out, 3).map(|_| ()));
    assert!(e.contains("lse"), "{e}");
}
