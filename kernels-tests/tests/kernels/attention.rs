//! Every attention variant (fused, flash2, unfused: forward and backward) and the [CLS]
//! probabilities against the f64 reference that materialises the full softmax, the
//! reference backward against finite differences, and each trusted attention shader (built
//! without naga's runtime checks) against its checked build.
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
//! dqkv 1.3e-6, cls probabilities 2e-7 (fused). The unfused variant sums the same terms in
//! another order (matmul k order; D as Σ_j P_ij dP_ij instead of dO_i·O_i) and the flash2
//! variant in the fused order, so the same bounds hold for them. The bounds below are about
//! 10× those, while any indexing, layout or normalisation mistake gives errors of O(0.01..1).

use crate::common::*;
use sop::gpu::{DType, Gpu};
use sop::ops::attention::{
    attention_backward, attention_backward_with, attention_cls_probs, attention_forward, attention_forward_with,
    AttentionVariant,
};
use sop_reference::attention::{self as reference, Attn};

/// (B, T, H, Dh): a single token, odd head widths (12, 7, 24), T = 17 (the default model),
/// 37, 50, 65 and 197/257 (ViT's T at 224 px and patch 16; none a multiple of a workgroup,
/// of flash2's 16-row tiles or of the matmul's 64 × 64 tiles), Dh = 16, 24, 32 and 64.
const SHAPES: [(usize, usize, usize, usize); 9] = [
    (1, 1, 1, 8),
    (2, 3, 2, 12),
    (1, 5, 3, 7),
    (2, 17, 2, 32),
    (1, 37, 4, 16),
    (2, 50, 3, 24),
    (1, 65, 3, 32),
    (2, 197, 2, 64),
    (1, 257, 1, 64),
];

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

/// Put several NaN-filled buffers of each of these sizes in the pool, so the op's outputs
/// start poisoned even when its intermediates (the unfused variant's) take buffers of the
/// same size first.
fn poison(gpu: &Gpu, shapes: &[&[usize]]) {
    let many: Vec<&[usize]> = shapes.iter().flat_map(|&s| std::iter::repeat_n(s, 8)).collect();
    poison_pool(gpu, &many);
}

/// Whether variant `v` runs shape `a` here. Only `subgroup` may be refused at these sizes:
/// for T > 64 or on an adapter without subgroups (then said on stderr, never silently).
fn runs(gpu: &Gpu, a: Attn, v: AttentionVariant) -> bool {
    let dm = sop::ops::attention::Dims { b: a.b, t: a.t, h: a.h, d: a.d(), dh: a.dh };
    match v.check_fits(gpu, &dm) {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(v, AttentionVariant::Subgroup, "{} refused {a:?}: {e}", v.name());
            assert!(a.t > 64 || !gpu.subgroups, "subgroup refused {a:?}: {e}");
            eprintln!("{} not run on {a:?}: {e}", v.name());
            false
        }
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
        let (want_out, want_lse) = reference::attention_forward(&f64s(&qkv), a);
        for v in AttentionVariant::ALL.into_iter().filter(|&v| runs(&gpu, a, v)) {
            poison(&gpu, &[&[a.b, a.t, a.d()], &[a.b, a.h, a.t]]);
            let created = gpu.buffers_created();
            let (out, lse) = attention_forward_with(&gpu, &gqkv, a.h, v).unwrap();
            if v != AttentionVariant::Unfused {
                assert_eq!(gpu.buffers_created(), created, "outputs must come from the poisoned pool");
            }
            assert_eq!(out.shape, [a.b, a.t, a.d()]);
            assert_eq!(lse.shape, [a.b, a.h, a.t]);
            let (got_out, got_lse) = (gpu.read_f32(&out).unwrap(), gpu.read_f32(&lse).unwrap());
            let what = format!("attention_forward {} {a:?}", v.name());
            eprintln!(
                "{what}: max |Δout| {:.2e}, max |Δlse| {:.2e}",
                max_abs_err(&got_out, &want_out),
                max_abs_err(&got_lse, &want_lse)
            );
            // |out| ≤ 1 (a convex combination of v in ±1), so an absolute bound.
            assert_close(&format!("{what} out"), &got_out, &want_out, 1e-5, 0.0);
            // lse is O(1..10): the score error plus log's rounding, relative to lse.
            assert_close(&format!("{what} lse"), &got_lse, &want_lse, 1e-5, 1e-6);

            // Deterministic: a second run gives the same bits.
            let (out2, lse2) = attention_forward_with(&gpu, &gqkv, a.h, v).unwrap();
            assert_eq!(gpu.read_f32(&out2).unwrap(), got_out, "{what}: not deterministic");
            assert_eq!(gpu.read_f32(&lse2).unwrap(), got_lse, "{what}: lse not deterministic");
        }
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
        let want = reference::attention_backward(&f64s(&qkv), &f64s(&dout), a);
        for v in AttentionVariant::ALL.into_iter().filter(|&v| runs(&gpu, a, v)) {
            let (out, lse) = attention_forward_with(&gpu, &gqkv, a.h, v).unwrap();
            poison(&gpu, &[&[a.b, a.h, a.t], &[a.b, a.t, 3 * a.d()]]);
            let created = gpu.buffers_created();
            let inputs = [&gqkv, &out, &lse, &gdout];
            let dqkv = attention_backward_with(&gpu, inputs, a.h, v).unwrap();
            if v != AttentionVariant::Unfused {
                assert_eq!(gpu.buffers_created(), created, "dqkv and delta must come from the poisoned pool");
            }
            assert_eq!(dqkv.shape, [a.b, a.t, 3 * a.d()]);
            let got = gpu.read_f32(&dqkv).unwrap();
            let what = format!("attention_backward {} {a:?}", v.name());
            eprintln!(
                "{what}: max |Δdqkv| {:.2e}, max |dqkv| {:.2e}",
                max_abs_err(&got, &want),
                want.iter().fold(0.0f64, |m, x| m.max(x.abs()))
            );
            // Sums over T of P·(dP − D)·q (or k) and P·dO: errors ~1e-6 absolute at |dqkv| ≤ 2.
            assert_close(&what, &got, &want, 1e-5, 1e-5);

            let again = attention_backward_with(&gpu, inputs, a.h, v).unwrap();
            assert_eq!(gpu.read_f32(&again).unwrap(), got, "{what}: not deterministic");
        }
    }
}

/// The adapter's own choice (`attention_forward` / `attention_backward`) on a shape each rule
/// branch sees, and a backward after another variant's forward (they share the lse).
#[test]
fn attention_default_and_mixed_variants_match_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for shape in [(2, 17, 2, 32), (1, 70, 2, 16)] {
        let a = attn(shape);
        let qkv = random_qkv(&mut rng, a);
        let dout = randn(&mut rng, a.b * a.t * a.d());
        let gqkv = gpu.upload_f32(&[a.b, a.t, 3 * a.d()], &qkv).unwrap();
        let gdout = gpu.upload_f32(&[a.b, a.t, a.d()], &dout).unwrap();
        let (want_out, _) = reference::attention_forward(&f64s(&qkv), a);
        let want = reference::attention_backward(&f64s(&qkv), &f64s(&dout), a);
        let (out, lse) = attention_forward(&gpu, &gqkv, a.h).unwrap();
        assert_close(&format!("default forward {a:?}"), &gpu.read_f32(&out).unwrap(), &want_out, 1e-5, 0.0);
        let dqkv = attention_backward(&gpu, &gqkv, &out, &lse, &gdout, a.h).unwrap();
        assert_close(&format!("default backward {a:?}"), &gpu.read_f32(&dqkv).unwrap(), &want, 1e-5, 1e-5);
        for (f, b) in [
            (AttentionVariant::Fused, AttentionVariant::Unfused),
            (AttentionVariant::Unfused, AttentionVariant::Flash2),
            (AttentionVariant::Subgroup, AttentionVariant::Fused),
            (AttentionVariant::Fused, AttentionVariant::Subgroup),
        ] {
            if !runs(&gpu, a, f) || !runs(&gpu, a, b) {
                continue;
            }
            let (out, lse) = attention_forward_with(&gpu, &gqkv, a.h, f).unwrap();
            let dqkv = attention_backward_with(&gpu, [&gqkv, &out, &lse, &gdout], a.h, b).unwrap();
            let what = format!("{} backward after {} forward {a:?}", b.name(), f.name());
            assert_close(&what, &gpu.read_f32(&dqkv).unwrap(), &want, 1e-5, 1e-5);
        }
    }
}

/// The attention shaders are trusted (built without naga's bounds checks and loop bounding):
/// every variant's forward and backward, built with checks on, gives the same bits on
/// awkward shapes (rows past T, partial tiles, Dh below the private arrays' 64).
#[test]
fn trusted_attention_equals_the_checked_build() {
    let unchecked = gpu();
    let checked = gpu();
    checked.force_runtime_checks();
    let mut rng = rng();
    for shape in [(1, 1, 1, 8), (2, 37, 3, 24), (1, 64, 2, 40), (1, 70, 2, 64)] {
        let a = attn(shape);
        let qkv = random_qkv(&mut rng, a);
        let dout = randn(&mut rng, a.b * a.t * a.d());
        for v in AttentionVariant::ALL.into_iter().filter(|&v| runs(&unchecked, a, v)) {
            let run = |g: &Gpu| {
                let gqkv = g.upload_f32(&[a.b, a.t, 3 * a.d()], &qkv).unwrap();
                let gdout = g.upload_f32(&[a.b, a.t, a.d()], &dout).unwrap();
                let (out, lse) = attention_forward_with(g, &gqkv, a.h, v).unwrap();
                let dqkv = attention_backward_with(g, [&gqkv, &out, &lse, &gdout], a.h, v).unwrap();
                let probs = attention_cls_probs(g, &gqkv, a.h).unwrap();
                [out, lse, dqkv, probs].map(|t| g.read_f32(&t).unwrap())
            };
            let (x, y) = (run(&unchecked), run(&checked));
            for (i, (x, y)) in x.iter().zip(&y).enumerate() {
                // Same bits, except that an exact zero may differ in sign: with checks off the
                // fully unrolled `0.0 + x` is folded to x, so 0·(−k) stays −0 (seen with
                // `subgroup` at T = 1, where dS = P·(dP − D) is exactly 0).
                let same = x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits() || (*x == 0.0 && *y == 0.0));
                assert!(same, "{} {a:?}: output {i} (out, lse, dqkv, cls probs) differs with checks on", v.name());
            }
        }
    }
}

/// `unfused` refuses a score matrix over one storage binding, and the rule then uses `fused`.
#[test]
fn unfused_that_does_not_fit_is_refused() {
    let gpu = gpu();
    let qkv = gpu.zeros(&[1, 1, 3 * 64], DType::F32).unwrap();
    let (out, lse) = attention_forward_with(&gpu, &qkv, 1, AttentionVariant::Unfused).unwrap();
    assert_eq!((out.shape.as_slice(), lse.shape.as_slice()), (&[1, 1, 64][..], &[1, 1, 1][..]));
    let huge = sop::ops::attention::Dims { b: 4096, t: 4096, h: 16, d: 1024, dh: 64 };
    let e = AttentionVariant::Unfused.check_fits(&gpu, &huge).unwrap_err().to_string();
    assert!(e.contains("scores"), "{e}");
    assert!(AttentionVariant::Fused.check_fits(&gpu, &huge).is_ok());
    if std::env::var_os("SOP_ATTENTION").is_none() {
        assert_ne!(AttentionVariant::for_shape(&gpu, &huge).unwrap(), AttentionVariant::Unfused);
    }
}

/// `subgroup` holds at most 64 tokens and needs subgroups: longer sequences are refused with
/// the reason, and the rule never picks it there.
#[test]
fn subgroup_refuses_long_sequences() {
    let gpu = gpu();
    let dims = |t| sop::ops::attention::Dims { b: 1, t, h: 2, d: 64, dh: 32 };
    let e = AttentionVariant::Subgroup.check_fits(&gpu, &dims(65)).unwrap_err().to_string();
    assert!(e.contains("64 tokens") || e.contains("subgroup operations"), "{e}");
    assert_eq!(AttentionVariant::Subgroup.check_fits(&gpu, &dims(64)).is_ok(), gpu.subgroups);
    if std::env::var_os("SOP_ATTENTION").is_none() {
        assert_ne!(AttentionVariant::for_shape(&gpu, &dims(65)).unwrap(), AttentionVariant::Subgroup);
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
        poison(&gpu, &[&[a.b, a.h, a.t]]);
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
