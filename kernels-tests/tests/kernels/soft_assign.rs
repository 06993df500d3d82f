//! soft_assign forward and backward against the f64 reference, and the reference backward
//! against finite differences of the reference forward.
//!
//! Tolerances (f32 kernels vs f64 reference; logits in [-1, 1] like cosine similarities, Y
//! and dp in [-1, 1]):
//! - forward: p_k = Σ_m a_m Y[m, k] with Σ a_m = 1. WGSL's exp is accurate to 3 + 2|x| ULP;
//!   the arguments reach −2/τ = −50, where a_m < e^-40 no longer matters, and where a_m is
//!   large |x| is small, so the weighted relative error of a is ~1e-6; the M-term f32
//!   accumulation adds at most M·2⁻²⁴ (worst case). atol = 1e-5 + M·6e-8; an indexing
//!   mistake moves p by O(0.1).
//! - backward: dlogits_m = (1/τ)·a_m·(g_m − ḡ) with |g| ≤ G = max_m |g_m| ≤ K. The relative
//!   errors of a (~1e-5 worst) and of g (K-term sums: K·6e-8·G) scale with (1/τ)·G:
//!   atol = (1/τ)·G·(2e-5 + K·1.2e-7), rtol 1e-4.

use crate::common::*;
use sop::gpu::{DType, Gpu};
use sop::ops::soft_assign::{
    soft_assign_backward, soft_assign_backward_with, soft_assign_forward, soft_assign_forward_with, LogitsRoute, Votes,
};
use sop::ops::soft_assign_variant::{assign_backward, assign_forward, autotune, fastest, fitting, SoftAssignVariant};
use sop_reference::soft_assign as reference;

/// Poison the next few allocations of `shape` (the output checked next), not only the
/// first: an op may allocate an intermediate of the same size first (the (R, M) logits
/// when M = K, dlogits when M = W), which would take a single poisoned buffer.
fn poison(gpu: &Gpu, shape: &[usize]) {
    poison_pool(gpu, &[shape; 4]);
}

fn check(gpu: &Gpu, rng: &mut impl rand::Rng, r: usize, m: usize, k: usize, tau: f32) {
    let logits = randn(rng, r * m);
    let y = randn(rng, m * k);
    let dp = randn(rng, r * k);
    let (l64, y64, dp64) = (f64s(&logits), f64s(&y), f64s(&dp));
    let what = format!("R {r} M {m} K {k} tau {tau}");
    let gl = gpu.upload_f32(&[r, m], &logits).unwrap();
    let gy = gpu.upload_f32(&[m, k], &y).unwrap();
    let gdp = gpu.upload_f32(&[r, k], &dp).unwrap();

    poison(gpu, &[r, k]);
    let p = soft_assign_forward(gpu, &gl, &gy, tau).unwrap();
    assert_eq!(p.shape, vec![r, k]);
    let want = reference::soft_assign_forward(&l64, &y64, r, m, k, tau as f64);
    assert_close(&format!("p, {what}"), &gpu.read_f32(&p).unwrap(), &want, 1e-5 + m as f64 * 6e-8, 0.0);

    poison(gpu, &[r, m]);
    let dlogits = soft_assign_backward(gpu, &gl, &gy, tau, &gdp).unwrap();
    assert_eq!(dlogits.shape, vec![r, m]);
    let want = reference::soft_assign_backward(&l64, &y64, &dp64, r, m, k, tau as f64);
    let g_max = (0..r * m)
        .map(|i| {
            let (row, mm) = (i / m, i % m);
            (0..k).map(|kk| dp64[row * k + kk] * y64[mm * k + kk]).sum::<f64>().abs()
        })
        .fold(0.0, f64::max);
    let atol = g_max / tau as f64 * (2e-5 + k as f64 * 1.2e-7) + 1e-30;
    assert_close(&format!("dlogits, {what}"), &gpu.read_f32(&dlogits).unwrap(), &want, atol, 1e-4);
}

#[test]
fn soft_assign_forward_backward_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for &(r, m, k, tau) in &[
        (1, 1, 1, 0.1),
        (3, 5, 7, 0.04),
        (63, 17, 65, 0.1),
        (65, 257, 3, 1.0),
        (257, 33, 16, 0.04),
        (2, 300, 40, 0.1),
        (5, 16, 17, 0.5),
        (70, 31, 32, 0.04),
    ] {
        check(&gpu, &mut rng, r, m, k, tau);
    }
}

#[test]
fn soft_assign_leading_dims_carry_over() {
    let gpu = gpu();
    let mut rng = rng();
    let (b, t, m, k) = (2, 3, 9, 5);
    let logits = randn(&mut rng, b * t * m);
    let y = randn(&mut rng, m * k);
    let gl = gpu.upload_f32(&[b, t, m], &logits).unwrap();
    let gy = gpu.upload_f32(&[m, k], &y).unwrap();
    let p = soft_assign_forward(&gpu, &gl, &gy, 0.1).unwrap();
    assert_eq!(p.shape, vec![b, t, k]);
    let want = reference::soft_assign_forward(&f64s(&logits), &f64s(&y), b * t, m, k, 0.1);
    assert_close("p (B, T, K)", &gpu.read_f32(&p).unwrap(), &want, 1e-5, 0.0);
}

#[test]
fn soft_assign_backward_reference_matches_finite_differences() {
    let mut rng = rng();
    let (r, m, k) = (2, 5, 3);
    for tau in [0.5, 0.1, 0.04] {
        let logits = f64s(&randn(&mut rng, r * m));
        let y = f64s(&randn(&mut rng, m * k));
        let dp = f64s(&randn(&mut rng, r * k));
        let dlogits = reference::soft_assign_backward(&logits, &y, &dp, r, m, k, tau);
        let fd = sop_reference::finite_difference(&logits, |l| {
            sop_reference::dot(&reference::soft_assign_forward(l, &y, r, m, k, tau), &dp)
        });
        // Central differences: truncation h²·f'''/6 with f''' ~ 1/τ³ ≤ 2e4 and h = 1e-6 gives
        // ~1e-8; rounding ~1e-16/h = 1e-10.
        assert_close_f64(&format!("dlogits tau {tau}"), &dlogits, &fd, 1e-7, 1e-6);
    }
}

#[test]
fn soft_assign_rejects_bad_arguments() {
    let gpu = gpu();
    let l = gpu.zeros(&[4, 6], DType::F32).unwrap();
    let y = gpu.zeros(&[6, 3], DType::F32).unwrap();
    let y_bad = gpu.zeros(&[5, 3], DType::F32).unwrap();
    let dp_bad = gpu.zeros(&[4, 4], DType::F32).unwrap();
    assert!(soft_assign_forward(&gpu, &l, &y_bad, 0.1).unwrap_err().to_string().contains("differs"));
    assert!(soft_assign_forward(&gpu, &l, &y, 0.0).unwrap_err().to_string().contains("tau"));
    assert!(soft_assign_forward(&gpu, &l, &y, f32::NAN).is_err());
    assert!(soft_assign_backward(&gpu, &l, &y, 0.1, &dp_bad).unwrap_err().to_string().contains("dp"));
}

/// SOP's vote matrix in f32 (M = K·E) for random member weights in (−0.5, 1): every entry off
/// a row's owner column is the same f32, as prototypes.wgsl writes it.
fn owned_y(rng: &mut impl rand::Rng, k: usize, e: usize) -> Vec<f32> {
    let w: Vec<f64> = (0..k * e).map(|_| rng.random_range(-0.5..1.0)).collect();
    reference::owned_votes(&w, k, e).iter().map(|&v| v as f32).collect()
}

/// Rows of unit length, like the head's outputs and the bank's vectors.
fn unit_rows(rng: &mut impl rand::Rng, r: usize, w: usize) -> Vec<f32> {
    let mut x = randn(rng, r * w);
    for row in x.chunks_mut(w) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        row.iter_mut().for_each(|v| *v /= n);
    }
    x
}

/// The `matmul` and `votes` routes on logits, against the reference: `matmul` with any Y,
/// `votes` with owned Y (E = 1, 3, 5), shapes off every tile size, outputs poisoned.
/// Tolerances as `check` (the same error budget: a (normalised) M-term sum for the forward,
/// K-term sums of g scaled by (1/τ)·G for the backward).
#[test]
fn soft_assign_routes_match_the_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for &(r, k, e, tau, owned) in &[
        (1, 2, 1, 0.1, true),
        (65, 17, 3, 0.04, true),
        (70, 31, 5, 0.1, true),
        (3, 130, 1, 0.5, true),
        (33, 7, 9, 0.04, true),
        (63, 65, 1, 0.1, false),
        (5, 17, 3, 0.04, false),
    ] {
        let m = k * e;
        let logits = randn(&mut rng, r * m);
        let y = if owned { owned_y(&mut rng, k, e) } else { randn(&mut rng, m * k) };
        let dp = randn(&mut rng, r * k);
        let (l64, y64, dp64) = (f64s(&logits), f64s(&y), f64s(&dp));
        let gl = gpu.upload_f32(&[r, m], &logits).unwrap();
        let gy = gpu.upload_f32(&[m, k], &y).unwrap();
        let gdp = gpu.upload_f32(&[r, k], &dp).unwrap();
        let votes = if owned { Votes::Owned { y: &gy, experts: e } } else { Votes::Dense(&gy) };
        let routes: &[LogitsRoute] =
            if owned { &[LogitsRoute::Votes, LogitsRoute::Matmul] } else { &[LogitsRoute::Matmul] };
        let want_p = reference::soft_assign_forward(&l64, &y64, r, m, k, tau as f64);
        let want_dl = reference::soft_assign_backward(&l64, &y64, &dp64, r, m, k, tau as f64);
        let g_max = (0..r * m)
            .map(|i| (0..k).map(|kk| dp64[(i / m) * k + kk] * y64[(i % m) * k + kk]).sum::<f64>().abs())
            .fold(0.0, f64::max);
        for &route in routes {
            let what = format!("{route:?} R {r} M {m} K {k} E {e} tau {tau}");
            poison(&gpu, &[r, k]);
            let p = soft_assign_forward_with(&gpu, route, &gl, votes, tau).unwrap();
            assert_close(&format!("p, {what}"), &gpu.read_f32(&p).unwrap(), &want_p, 1e-5 + m as f64 * 6e-8, 0.0);
            poison(&gpu, &[r, m]);
            let dl = soft_assign_backward_with(&gpu, route, &gl, votes, tau, &gdp).unwrap();
            let atol = g_max / tau as f64 * (2e-5 + k as f64 * 1.2e-7) + 1e-30;
            assert_close(&format!("dlogits, {what}"), &gpu.read_f32(&dl).unwrap(), &want_dl, atol, 1e-4);
        }
    }
}

#[test]
fn soft_assign_votes_route_refuses_a_dense_or_misshapen_y() {
    let gpu = gpu();
    let l = gpu.zeros(&[4, 6], DType::F32).unwrap();
    let y = gpu.zeros(&[6, 3], DType::F32).unwrap();
    let dense = soft_assign_forward_with(&gpu, LogitsRoute::Votes, &l, Votes::Dense(&y), 0.1);
    assert!(dense.unwrap_err().to_string().contains("owned"));
    let bad = soft_assign_forward_with(&gpu, LogitsRoute::Votes, &l, Votes::Owned { y: &y, experts: 3 }, 0.1);
    assert!(bad.unwrap_err().to_string().contains("M = K·E"));
}

/// Every variant of the whole assignment u → p and dp → du against the f64 reference, with
/// unit rows u and D (so logits are cosines) and SOP's owned Y; outputs poisoned.
/// Tolerances: the f32 logits add an error of up to W·6e-8 (a W-term dot product of unit
/// vectors), which 1/τ turns into a relative error of a: the forward's atol grows by
/// 2·W·6e-8/τ, the backward's relative budget by the same, and du = Σ_m dlogits_m·D_m
/// sums M terms (Σ_m |dlogits_m| ≤ 2G/τ, |D| ≤ 1).
#[test]
fn soft_assign_variants_whole_assignment_match_the_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for &(r, k, e, w, tau) in &[(1, 2, 1, 3, 0.1), (13, 17, 3, 70, 0.04), (70, 65, 1, 37, 0.1), (9, 16, 5, 130, 0.1)] {
        let m = k * e;
        let u = unit_rows(&mut rng, r, w);
        let d = unit_rows(&mut rng, m, w);
        let y = owned_y(&mut rng, k, e);
        let dp = randn(&mut rng, r * k);
        let (u64_, d64, y64, dp64) = (f64s(&u), f64s(&d), f64s(&y), f64s(&dp));
        let want_p = reference::assign_forward(&u64_, &d64, &y64, r, m, k, w, tau as f64);
        let want_du = reference::assign_backward(&u64_, &d64, &y64, &dp64, r, m, k, w, tau as f64);
        let g_max = (0..r * m)
            .map(|i| (0..k).map(|kk| dp64[(i / m) * k + kk] * y64[(i % m) * k + kk]).sum::<f64>().abs())
            .fold(0.0, f64::max);
        let (gu, gd) = (gpu.upload_f32(&[r, w], &u).unwrap(), gpu.upload_f32(&[m, w], &d).unwrap());
        let (gy, gdp) = (gpu.upload_f32(&[m, k], &y).unwrap(), gpu.upload_f32(&[r, k], &dp).unwrap());
        let votes = Votes::Owned { y: &gy, experts: e };
        let z_err = 2.0 * w as f64 * 6e-8 / tau as f64;
        for v in SoftAssignVariant::ALL {
            let what = format!("{} R {r} M {m} K {k} W {w} tau {tau}", v.name());
            poison(&gpu, &[r, k]);
            let (p, saved) = assign_forward(&gpu, v, &gu, &gd, votes, tau).unwrap();
            assert_close(
                &format!("p, {what}"),
                &gpu.read_f32(&p).unwrap(),
                &want_p,
                1e-5 + m as f64 * 6e-8 + z_err,
                0.0,
            );
            poison(&gpu, &[r, w]);
            let du = assign_backward(&gpu, v, &gu, &gd, votes, tau, &p, &saved, &gdp).unwrap();
            let atol = 2.0 * g_max / tau as f64 * (2e-5 + k as f64 * 1.2e-7 + m as f64 * 6e-8 + z_err) + 1e-30;
            assert_close(&format!("du, {what}"), &gpu.read_f32(&du).unwrap(), &want_du, atol, 1e-4);
        }
    }
}

/// The flash kernel is a trusted shader (no naga checks): the same inputs on a device that
/// compiles it with checks on must give the same bits, on shapes that leave partial row
/// blocks, member tiles and u slices.
#[test]
fn trusted_flash_equals_the_checked_build() {
    let unchecked = gpu();
    let checked = gpu();
    checked.force_runtime_checks();
    let mut rng = rng();
    for &(r, m, k, w) in &[(1, 1, 1, 1), (9, 65, 3, 70), (17, 130, 33, 129)] {
        let (u, d, y, dp) =
            (randn(&mut rng, r * w), randn(&mut rng, m * w), randn(&mut rng, m * k), randn(&mut rng, r * k));
        let run = |g: &sop::Gpu| {
            let (gu, gd) = (g.upload_f32(&[r, w], &u).unwrap(), g.upload_f32(&[m, w], &d).unwrap());
            let (gy, gdp) = (g.upload_f32(&[m, k], &y).unwrap(), g.upload_f32(&[r, k], &dp).unwrap());
            let votes = Votes::Dense(&gy);
            let (p, saved) = assign_forward(g, SoftAssignVariant::Flash, &gu, &gd, votes, 0.5).unwrap();
            let du = assign_backward(g, SoftAssignVariant::Flash, &gu, &gd, votes, 0.5, &p, &saved, &gdp).unwrap();
            [g.read_f32(&p).unwrap(), g.read_f32(&du).unwrap()]
        };
        let (a, b) = (run(&unchecked), run(&checked));
        for (x, y) in a.iter().zip(&b) {
            assert!(x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits()), "R {r} M {m} K {k} W {w}");
        }
    }
}

#[test]
fn assignment_reference_backward_matches_finite_differences() {
    let mut rng = rng();
    let (r, m, k, w) = (2, 6, 3, 4);
    for tau in [0.5, 0.1] {
        let u = f64s(&randn(&mut rng, r * w));
        let d = f64s(&randn(&mut rng, m * w));
        let y = f64s(&randn(&mut rng, m * k));
        let dp = f64s(&randn(&mut rng, r * k));
        let du = reference::assign_backward(&u, &d, &y, &dp, r, m, k, w, tau);
        let fd = sop_reference::finite_difference(&u, |x| {
            sop_reference::dot(&reference::assign_forward(x, &d, &y, r, m, k, w, tau), &dp)
        });
        // As the soft-assign test: truncation ~h²/τ³ with logits of size ~|u||D| ≤ 4.
        assert_close_f64(&format!("du tau {tau}"), &du, &fd, 1e-6, 1e-5);
    }
}

/// The choice: the autotune times every variant and `fastest` takes the least; on CPU
/// adapters the rule (`votes`) applies untimed; a pin is kept; logits too large for one
/// storage binding send a variant that stores them to `flash`.
#[test]
fn soft_assign_variant_choice() {
    let gpu = gpu();
    let timings = autotune(&gpu, (37, 19, 19, 23)).unwrap();
    assert_eq!(timings.iter().map(|t| t.0).collect::<Vec<_>>(), SoftAssignVariant::ALL);
    assert!(timings.iter().all(|t| t.1.is_finite() && t.1 > 0.0), "{timings:?}");
    let best = fastest(&timings);
    let best_ms = timings.iter().find(|t| t.0 == best).unwrap().1;
    assert!(timings.iter().all(|t| t.1 >= best_ms), "{timings:?}");
    if std::env::var("SOP_SOFT_ASSIGN").is_err() {
        if gpu.is_cpu() {
            // Stated here, not taken from the implementation, so a changed rule fails.
            assert_eq!(SoftAssignVariant::for_adapter(&gpu).unwrap(), SoftAssignVariant::Votes);
        }
        let other = crate::common::gpu();
        assert!(SoftAssignVariant::pin(&other, SoftAssignVariant::Matmul));
        assert!(!SoftAssignVariant::pin(&other, SoftAssignVariant::Flash));
        assert_eq!(SoftAssignVariant::for_adapter(&other).unwrap(), SoftAssignVariant::Matmul);
    }
    let limit = gpu.limits.max_storage_buffer_binding_size as usize;
    let m = 512;
    let rows_fit = limit / 4 / m;
    assert_eq!(fitting(&gpu, SoftAssignVariant::Votes, rows_fit, m), SoftAssignVariant::Votes);
    assert_eq!(fitting(&gpu, SoftAssignVariant::Votes, rows_fit + 1, m), SoftAssignVariant::Flash);
    assert_eq!(fitting(&gpu, SoftAssignVariant::Tiled16, rows_fit + 1, m), SoftAssignVariant::Flash);
}
