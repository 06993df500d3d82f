//! Every matmul variant (matmul.wgsl, matmul_subgroup.wgsl, matmul_blocked.wgsl with split-K) against the f64 reference, and the reference backward
//! against finite differences.
//!
//! Tolerance: f32 accumulation over K terms of products of values in [-1, 1] gives an
//! absolute error growing like sqrt(K)·2⁻²⁴·K in the worst case; 1e-5·K is a safe bound
//! for K ≤ 300 while still catching any indexing mistake (those give O(1) errors).

use crate::common::*;
use sop::ops::matmul::{Matmul, MatmulVariant};
use sop_reference::matmul::{matmul_backward, matmul_forward};

// One case of the matmul contract: its shape and its flags, each a parameter.
#[allow(clippy::too_many_arguments)]
fn check(
    gpu: &sop::Gpu,
    rng: &mut impl rand::Rng,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    b_batched: bool,
    bias: bool,
    acc: bool,
) {
    let a = randn(rng, batch * m * k);
    let bn = if b_batched { batch } else { 1 };
    let b = randn(rng, bn * k * n);
    let bias_v = randn(rng, n);
    let c0 = randn(rng, batch * m * n);
    let a_shape = if ta { vec![batch, k, m] } else { vec![batch, m, k] };
    let mut b_shape = if tb { vec![n, k] } else { vec![k, n] };
    if b_batched {
        b_shape.insert(0, batch);
    }
    let ga = gpu.upload_f32(&a_shape, &a).unwrap();
    let gb = gpu.upload_f32(&b_shape, &b).unwrap();
    let gbias = gpu.upload_f32(&[n], &bias_v).unwrap();
    let alpha = 0.75f32;
    let mut want = matmul_forward(
        &f64s(&a),
        &f64s(&b),
        bias.then_some(&f64s(&bias_v)[..]),
        batch,
        m,
        n,
        k,
        ta,
        tb,
        b_batched,
        alpha as f64,
    );
    if acc {
        for (w, c) in want.iter_mut().zip(&c0) {
            *w += *c as f64;
        }
    }
    for v in tested_variants(gpu) {
        let out = gpu.upload_f32(&[batch, m, n], &c0).unwrap();
        if !acc {
            gpu.fill_f32(&out, f32::NAN).unwrap(); // poison
        }
        let mut mm = Matmul::new(&ga, &gb).alpha(alpha).variant(v);
        mm.trans_a = ta;
        mm.trans_b = tb;
        if bias {
            mm = mm.bias(&gbias);
        }
        mm.run_into(gpu, &out, acc).unwrap();
        let got = gpu.read_f32(&out).unwrap();
        let what = format!("matmul {} batch {batch} M {m} N {n} K {k} ta {ta} tb {tb} bias {bias} acc {acc}", v.name());
        assert_close(&what, &got, &want, 1e-5 * k as f64 + 1e-6, 1e-5);
    }
}

/// Every variant the adapter can run; on lavapipe that must include the subgroup one (so
/// its test cannot pass by being skipped).
fn tested_variants(gpu: &sop::Gpu) -> Vec<MatmulVariant> {
    let vs = MatmulVariant::available_on(gpu);
    if gpu.adapter_name().contains("llvmpipe") {
        assert!(vs.contains(&MatmulVariant::Subgroup16x4), "lavapipe should offer subgroups: {}", gpu.adapter_name());
    }
    vs
}

#[test]
fn matmul_forward_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (63, 65, 17), (65, 63, 64), (1, 257, 3), (130, 67, 257), (100, 80, 33)] {
        check(&gpu, &mut rng, 1, m, n, k, false, false, false, false, false);
    }
}

#[test]
fn matmul_forward_transposes_bias_accumulate_batch() {
    let gpu = gpu();
    let mut rng = rng();
    for &(ta, tb) in &[(true, false), (false, true), (true, true)] {
        check(&gpu, &mut rng, 1, 33, 65, 19, ta, tb, false, false, false);
    }
    check(&gpu, &mut rng, 3, 17, 9, 65, false, true, true, false, false);
    check(&gpu, &mut rng, 2, 65, 3, 5, false, false, false, true, false);
    check(&gpu, &mut rng, 2, 9, 70, 33, true, false, true, true, true);
}

/// Split-K (blocked variants; batch 1, few output tiles, long K): a short last slice, both
/// transposes, bias and accumulate go through the reduction pass. Tolerance as above with
/// K = 700: the slices sum in a different order, still within 1e-5·K.
#[test]
fn matmul_split_k_weight_gradient_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    let (m, n, k) = (33, 65, 700);
    for v in [MatmulVariant::Blocked128, MatmulVariant::Blocked64] {
        let chunk = v.split_k(1, m, n, k).expect("this shape is split");
        assert!(k % chunk != 0 && k.div_ceil(chunk) >= 2, "{} slices of {chunk}", v.name());
        assert_eq!(v.split_k(2, m, n, k), None, "batched products are not split");
    }
    check(&gpu, &mut rng, 1, m, n, k, true, false, false, false, false);
    check(&gpu, &mut rng, 1, m, n, k, false, true, false, true, true);
    check(&gpu, &mut rng, 1, 130, 129, 1100, true, false, false, true, false);
}

/// The blocked variants run without naga's runtime checks (trusted shader): the same
/// products, split-K included, plain and with each epilogue (GELU, which also writes the
/// pre-activation, and GELU's backward, which reads one), built with checks on must give
/// bit-identical results.
/// What this can and cannot see: it catches a guard whose absence changes a result (an
/// out-of-range value that reaches C differs between the clamped and the unchecked read); it
/// cannot see a removed guard on A's tile loads, since those values only ever meet B's
/// zero-filled rows (checked by mutation: the test still passes then). Those guards are
/// there for memory safety on real GPUs, not for the result; correctness is the reference
/// tests' job (a wrong register row fails `matmul_forward_awkward_shapes`).
#[test]
fn trusted_matmul_equals_the_checked_build() {
    let unchecked = gpu();
    let checked = gpu();
    checked.force_runtime_checks();
    let mut rng = rng();
    for &(m, n, k, ta) in &[(1, 1, 1, false), (63, 130, 17, false), (130, 67, 257, true), (33, 65, 700, true)] {
        let a = randn(&mut rng, m * k);
        let b = randn(&mut rng, k * n);
        // GELU's input: a view of the first M rows of M + 1, so that a read past it finds
        // real values (the checked build's bounded read would then differ).
        let x_gelu = randn(&mut rng, (m + 1) * n);
        let a_shape = if ta { [k, m] } else { [m, k] };
        for v in [MatmulVariant::Blocked128, MatmulVariant::Blocked64] {
            // [plain, GELU's pre-activation, GELU, GELU-backward] outputs.
            let run = |g: &sop::Gpu| {
                let ga = g.upload_f32(&a_shape, &a).unwrap();
                let gb = g.upload_f32(&[k, n], &b).unwrap();
                let gx = g.upload_f32(&[m + 1, n], &x_gelu).unwrap().view(0, &[m, n], m * n).unwrap();
                let mut mm = Matmul::new(&ga, &gb).variant(v);
                mm.trans_a = ta;
                let (pre, gelu) = mm.run_gelu(g).unwrap();
                let outs = [mm.run(g).unwrap(), pre, gelu, mm.run_gelu_backward(g, &gx).unwrap()];
                outs.map(|t| g.read_f32(&t).unwrap())
            };
            let (x, y) = (run(&unchecked), run(&checked));
            for (i, (x, y)) in x.iter().zip(&y).enumerate() {
                let same = x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{} M {m} N {n} K {k}: output {i} (plain, pre, gelu, gelu backward) differs", v.name());
            }
        }
    }
}

#[test]
fn matmul_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    let (m, n, k) = (3, 4, 5);
    let a = f64s(&randn(&mut rng, m * k));
    let b = f64s(&randn(&mut rng, k * n));
    let bias = f64s(&randn(&mut rng, n));
    let dc = f64s(&randn(&mut rng, m * n));
    let (da, db, dbias) = matmul_backward(&a, &b, &dc, m, n, k);
    let loss = |a: &[f64], b: &[f64], bias: &[f64]| {
        sop_reference::dot(&matmul_forward(a, b, Some(bias), 1, m, n, k, false, false, false, 1.0), &dc)
    };
    let fa = sop_reference::finite_difference(&a, |x| loss(x, &b, &bias));
    let fb = sop_reference::finite_difference(&b, |x| loss(&a, x, &bias));
    let fbias = sop_reference::finite_difference(&bias, |x| loss(&a, &b, x));
    assert_close_f64("dA", &da, &fa, 1e-7, 1e-6);
    assert_close_f64("dB", &db, &fb, 1e-7, 1e-6);
    assert_close_f64("dbias", &dbias, &fbias, 1e-7, 1e-6);
}

#[test]
fn matmul_rejects_mismatched_shapes() {
    let gpu = gpu();
    let a = gpu.zeros(&[4, 5], sop::gpu::DType::F32).unwrap();
    let b = gpu.zeros(&[6, 7], sop::gpu::DType::F32).unwrap();
    let err = Matmul::new(&a, &b).run(&gpu).unwrap_err().to_string();
    assert!(err.contains("inner dimensions differ"), "{err}");
}

#[test]
fn autotune_times_every_variant_and_picks_the_fastest() {
    use sop::ops::matmul::{autotune, fastest};
    let gpu = gpu();
    let timings = autotune(&gpu, (37, 19, 41)).unwrap();
    assert_eq!(timings.iter().map(|t| t.0).collect::<Vec<_>>(), tested_variants(&gpu));
    assert!(timings.iter().all(|t| t.1.is_finite() && t.1 > 0.0), "{timings:?}");
    let (best, ms) = fastest(&timings);
    assert!(timings.iter().all(|t| t.1 >= ms) && timings.iter().any(|t| t.0 == best && t.1 == ms), "{timings:?}");
    // On a CPU adapter the rule applies without timing anything.
    if gpu.is_cpu() && std::env::var("SOP_MATMUL").is_err() {
        // Stated here, not taken from the implementation, so a changed rule fails.
        let rule = if gpu.subgroups { MatmulVariant::Subgroup16x4 } else { MatmulVariant::Tiled8x8 };
        assert_eq!(MatmulVariant::for_adapter(&gpu).unwrap(), rule);
    }
}

#[test]
fn a_pinned_variant_is_kept() {
    if std::env::var("SOP_MATMUL").is_ok() {
        return; // the override wins over any pin by design
    }
    let gpu = gpu();
    assert!(MatmulVariant::pin(&gpu, MatmulVariant::Naive));
    assert_eq!(MatmulVariant::for_adapter(&gpu).unwrap(), MatmulVariant::Naive);
    assert!(MatmulVariant::pin(&gpu, MatmulVariant::Naive));
    assert!(!MatmulVariant::pin(&gpu, MatmulVariant::TiledShared));
    assert_eq!(MatmulVariant::for_adapter(&gpu).unwrap(), MatmulVariant::Naive);
}

/// The GELU-backward epilogue (`run_gelu_backward`): every variant, split-K included, gives
/// the bits of `run` followed by `gelu_backward(x, ·)` (the same arithmetic), the output
/// poisoned; x spans both approximations of Φ and its tails.
#[test]
fn matmul_gelu_backward_epilogue_gives_the_bits_of_matmul_then_gelu_backward() {
    use rand::Rng;
    use sop::ops::gelu::gelu_backward;
    let gpu = gpu();
    let mut rng = rng();
    for &(m, n, k) in &[(1, 1, 1), (63, 65, 17), (130, 129, 1100)] {
        let a = gpu.upload_f32(&[m, k], &randn(&mut rng, m * k)).unwrap();
        let b = gpu.upload_f32(&[k, n], &randn(&mut rng, n * k)).unwrap();
        let x =
            gpu.upload_f32(&[m, n], &(0..m * n).map(|_| rng.random_range(-6.0..6.0)).collect::<Vec<f32>>()).unwrap();
        for v in tested_variants(&gpu) {
            let mm = Matmul::new(&a, &b).variant(v);
            let plain = mm.run(&gpu).unwrap();
            let want = gpu.read_u32(&gelu_backward(&gpu, &x, &plain).unwrap()).unwrap();
            poison_pool(&gpu, &[&[m, n]]);
            let got = mm.run_gelu_backward(&gpu, &x).unwrap();
            assert_eq!(gpu.read_u32(&got).unwrap(), want, "{} GELU backward {m}x{n}x{k}", v.name());
        }
    }
    let a = gpu.upload_f32(&[2, 3], &[0.0; 6]).unwrap();
    let wrong = gpu.upload_f32(&[3, 3], &[0.0; 9]).unwrap();
    let err = Matmul::new(&a, &wrong).run_gelu_backward(&gpu, &wrong).unwrap_err().to_string();
    assert!(err.contains("GELU input"), "{err}");
}

/// The GELU epilogue (`run_gelu`): every variant, split-K included (130·129·1100 splits in
/// the blocked ones), gives the pre-activation bit for bit as `run` and GELU of it bit for
/// bit as `gelu_forward` on `run`'s output (the same arithmetic); both outputs poisoned.
#[test]
fn matmul_gelu_epilogue_gives_the_bits_of_matmul_then_gelu() {
    use rand::Rng;
    use sop::ops::gelu::gelu_forward;
    let gpu = gpu();
    let mut rng = rng();
    for &(m, n, k) in &[(1, 1, 1), (63, 65, 17), (130, 129, 1100)] {
        let a = gpu.upload_f32(&[m, k], &randn(&mut rng, m * k)).unwrap();
        let b = gpu.upload_f32(&[n, k], &randn(&mut rng, n * k)).unwrap();
        let bias = gpu.upload_f32(&[n], &(0..n).map(|_| rng.random_range(-2.0..2.0)).collect::<Vec<f32>>()).unwrap();
        for v in tested_variants(&gpu) {
            let mm = Matmul::new(&a, &b).trans_b().bias(&bias).variant(v);
            poison_pool(&gpu, &[&[m, n], &[m, n]]);
            let (pre, post) = mm.run_gelu(&gpu).unwrap();
            let plain = mm.run(&gpu).unwrap();
            let want = gpu.read_u32(&gelu_forward(&gpu, &plain).unwrap()).unwrap();
            assert_eq!(gpu.read_u32(&pre).unwrap(), gpu.read_u32(&plain).unwrap(), "{} pre {m}x{n}x{k}", v.name());
            assert_eq!(gpu.read_u32(&post).unwrap(), want, "{} GELU {m}x{n}x{k}", v.name());
        }
    }
}
