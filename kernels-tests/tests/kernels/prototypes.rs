//! prototype_members and prototype_votes (shaders/prototypes.wgsl) against the f64
//! reference on awkward shapes, and `build` for a Uniform-sampling task: no blocking read
//! while the prototypes are built, and the result equals the earlier host computation.
//!
//! Tolerances:
//! - rows: bank rows are copied, so they must match exactly; so must the SE weights.
//! - the anchor weight 1 − s: one f32 subtraction of an f32 s, exact in f64, so one
//!   rounding: rtol 2⁻²³ (1.2e-7).
//! - Y, against the reference fed the weights the kernel holds: 1 − w (exact for w in
//!   [0.5, 2] by Sterbenz, else one rounding), a division by P' − 1 and the final division
//!   (Vulkan allows 2.5 ULP each), the row sum w + (1 − w) (one rounding of a value ~1):
//!   about 7 ULP, rtol 1e-6. Entries that are exactly 0 (w = 1) stay 0: atol 1e-12. A
//!   misplaced column or row moves an entry by O(0.1).

use crate::common::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sop::gpu::{DType, Gpu};
use sop::ops::prototypes::prototype_members_votes;
use sop::sop::bank::Bank;
use sop::sop::prototypes::{build, sample_keep, AnchorSampling, Keep, Neighbours, PrototypeConfig};
use sop_reference::prototypes as reference;

struct Case {
    n: usize,
    p: usize,
    e: usize,
    kept: usize,
    smoothing: f32,
}

fn check(gpu: &Gpu, rng: &mut impl Rng, c: &Case) {
    let Case { n, p, e, kept, smoothing } = *c;
    let what = format!("N {n} P {p} E {e} P' {kept} s {smoothing}");
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(rng);
    let k = e - 1;
    let idx: Vec<u32> = (0..p * k).map(|_| rng.random_range(0..(n - p) as u32)).collect();
    let vals = randn(rng, p * k);
    let mut keep: Vec<u32> = (0..p as u32).collect();
    keep.shuffle(rng);
    keep.truncate(kept);

    let gperm = gpu.upload_u32(&[n], &perm).unwrap();
    let gkeep = gpu.upload_u32(&[kept], &keep).unwrap();
    let gtopk = (k > 0).then(|| (gpu.upload_f32(&[p, k], &vals).unwrap(), gpu.upload_u32(&[p, k], &idx).unwrap()));
    let m = kept * e;
    poison_pool(gpu, &[&[m], &[m], &[m, kept]]);
    let topk = gtopk.as_ref().map(|(v, i)| (v, i));
    let out = prototype_members_votes(gpu, &gperm, topk, &gkeep, p, e, smoothing).unwrap();
    assert_eq!((out.rows.shape.clone(), out.rows.dtype), (vec![m], DType::U32), "{what}");
    assert_eq!((out.weights.shape.clone(), out.weights.dtype), (vec![m], DType::F32), "{what}");
    assert_eq!((out.votes.shape.clone(), out.votes.dtype), (vec![m, kept], DType::F32), "{what}");

    let (want_rows, want_w) = reference::prototype_members(&perm, &idx, &f64s(&vals), &keep, p, e, smoothing as f64);
    assert_eq!(gpu.read_u32(&out.rows).unwrap(), want_rows, "rows, {what}");
    let w = gpu.read_f32(&out.weights).unwrap();
    assert_close(&format!("weights, {what}"), &w, &want_w, 0.0, 1.2e-7);

    let want_y = reference::prototype_votes(&f64s(&w), e, kept);
    let y = gpu.read_f32(&out.votes).unwrap();
    assert_close(&format!("votes, {what}"), &y, &want_y, 1e-12, 1e-6);
    for (r, row) in y.chunks(kept).enumerate() {
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < kept as f64 * 1e-6, "votes row {r} sums to {sum}, {what}");
    }
}

#[test]
fn prototype_members_votes_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    let case = |n, p, e, kept, smoothing| Case { n, p, e, kept, smoothing };
    for c in [
        case(5, 2, 1, 2, 0.0),
        case(10, 3, 1, 3, 0.1),
        case(200, 65, 1, 65, 0.1),
        case(12, 3, 2, 2, 0.0),
        case(40, 7, 4, 3, 0.1),
        case(300, 67, 9, 33, 0.0),
        case(1000, 130, 5, 65, 0.1),
        case(90, 63, 17, 31, 0.1),
    ] {
        check(&gpu, &mut rng, &c);
    }
}

#[test]
fn prototype_members_votes_rejects_bad_arguments() {
    let gpu = gpu();
    let perm = gpu.upload_u32(&[10], &(0..10).collect::<Vec<u32>>()).unwrap();
    let keep = gpu.upload_u32(&[2], &[0, 1]).unwrap();
    let one = gpu.upload_u32(&[1], &[0]).unwrap();
    let vals = gpu.zeros(&[4, 2], DType::F32).unwrap();
    let idx = gpu.zeros(&[4, 2], DType::U32).unwrap();
    let wrong_idx = gpu.zeros(&[4, 3], DType::U32).unwrap();
    let err = |r: sop::Result<_>| r.err().map(|e: sop::SopError| e.to_string()).unwrap_or_default();
    assert!(err(prototype_members_votes(&gpu, &perm, None, &one, 4, 1, 0.1)).contains("P'"));
    assert!(err(prototype_members_votes(&gpu, &perm, None, &keep, 4, 3, 0.1)).contains("needs the top-k"));
    assert!(err(prototype_members_votes(&gpu, &perm, Some((&vals, &idx)), &keep, 4, 1, 0.1)).contains("E = 1"));
    let wrong = Some((&vals, &wrong_idx));
    assert!(err(prototype_members_votes(&gpu, &perm, wrong, &keep, 4, 3, 0.1)).contains("expected"));
    assert!(err(prototype_members_votes(&gpu, &perm, Some((&vals, &idx)), &keep, 4, 8, 0.1)).contains("N >= P + E"));
    assert!(prototype_members_votes(&gpu, &perm, Some((&vals, &idx)), &keep, 4, 3, 0.1).is_ok());
}

/// `build` for one task with the default Uniform anchor sampling (E > 1) and with E = 1:
/// the host waits for nothing while the prototypes are built. Afterwards (reads allowed),
/// D, Y and the member rows equal what `build` computed on the host before it moved to the
/// GPU: the anchor and its SEs (`Neighbours::rows_host`, `sims_host`) per kept anchor, and
/// the f64 vote matrix of the objective's reference.
#[test]
fn build_with_uniform_sampling_does_no_blocking_read() {
    let gpu = gpu();
    let mut rng = rng();
    let (n, w, smoothing) = (300, 24, 0.1f32);
    let bank = Bank::random(&gpu, n, w, rng.random()).unwrap();
    let bank_host = gpu.read_f32(&bank.vectors).unwrap();
    let config = |anchors, experts| PrototypeConfig { anchors, experts, tasks: 1 };
    for cfg in [config(37, 5), config(11, 1)] {
        let (p, e) = (cfg.anchors, cfg.experts);
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(&mut rng);
        let keep_seed: u64 = rng.random();
        let draw = |nb: &Neighbours| {
            let mut keep_rng = rand::rngs::StdRng::seed_from_u64(keep_seed);
            match sample_keep(&gpu, nb, p, n - p, AnchorSampling::Uniform, &mut keep_rng)? {
                Keep::Listed(keep) => Ok(Keep::Listed(keep)),
                Keep::OnDevice(_) => panic!("Uniform draws on the host"),
            }
        };
        gpu.sync().unwrap();
        let before = gpu.counters();
        let proto = build(&gpu, &bank, &perm, &cfg, smoothing, draw).unwrap();
        let during = gpu.counters().since(&before);
        assert_eq!(during.host_waits, 0, "P {p} E {e}: building the prototypes waited on the device");
        assert!(during.dispatches > 0);

        // The same draws give the same keep list (Uniform does not look at the similarities).
        let keep: Vec<u32> = match draw(&proto.neighbours).unwrap() {
            Keep::Listed(keep) if e > 1 => keep,
            _ => (0..p as u32).collect(),
        };
        assert_eq!(proto.kept, keep.len());
        let (se_rows, se_sims) = (proto.neighbours.rows_host(&gpu).unwrap(), proto.se_sims_host(&gpu).unwrap());
        assert_eq!((se_rows.len(), se_sims.len()), (p * (e - 1), p * (e - 1)));
        let mut want_rows = Vec::new();
        let mut want_w = Vec::new();
        for &a in &keep {
            let a = a as usize;
            want_rows.push(perm[a]);
            want_w.push(1.0 - smoothing as f64);
            want_rows.extend_from_slice(&se_rows[a * (e - 1)..(a + 1) * (e - 1)]);
            want_w.extend(se_sims[a * (e - 1)..(a + 1) * (e - 1)].iter().map(|&s| s as f64));
        }
        let what = format!("build P {p} E {e}");
        assert_eq!(gpu.read_u32(&proto.member_rows).unwrap(), want_rows, "{what}: member rows");
        let want_d: Vec<f32> = sop_reference::gather::gather_rows(&bank_host, n, w, &want_rows);
        assert_eq!(gpu.read_f32(&proto.members).unwrap(), want_d, "{what}: D");
        // Against the earlier f64 Y: the anchor weight is now 1 − s rounded to f32, which
        // moves (1 − w)/(P' − 1) by up to 2⁻²⁴ absolute: atol 1e-7 on top of Y's rtol.
        let want_y = sop_reference::sop_objective::vote_matrix(&want_w, e, keep.len());
        assert_close(&format!("{what}: Y"), &gpu.read_f32(&proto.votes).unwrap(), &want_y, 1e-7, 1e-6);
    }
}

/// Check the device's draws `got` against the f64 walk (`reference::draw_without_replacement`)
/// draw by draw with weights `w`: a pick may differ only where the f64 r lies within
/// `tol`·Σw of the boundary between the two picks (the f32 sums' rounding); the walk then
/// goes on from the device's pick. Returns the number of such near-ties.
fn check_draws(what: &str, got: &[u32], mut w: Vec<f64>, draws: &[f64], tol: f64) -> usize {
    assert_eq!(got.len(), draws.len(), "{what}: {} picks for {} draws", got.len(), draws.len());
    let mut ties = 0;
    for (d, (&g, &u)) in got.iter().zip(draws).enumerate() {
        let want = reference::draw_without_replacement(w.clone(), &[u])[0];
        let g = g as usize;
        assert!(g < w.len() && w[g] > 0.0, "{what}: draw {d} picked {g}, not an anchor still in the pool");
        if g != want as usize {
            let total: f64 = w.iter().sum();
            let r = u * total;
            // The boundary between the two picks: the cumulative weight before the later one.
            let edge: f64 = w[..g.max(want as usize)].iter().sum();
            assert!(
                (r - edge).abs() <= tol * total,
                "{what}: draw {d} picked {g}, the f64 walk {want} (r {r}, edge {edge})"
            );
            ties += 1;
        }
        w[g] = 0.0;
    }
    ties
}

/// The 1/CV keep kernel against the f64 reference: weights on awkward P and k (P beyond two
/// anchors per invocation, k = 1 where every CV is 0 and all weights become 1), draws
/// against the f64 walk up to near-ties, both outputs poisoned. Tolerance of the weights:
/// rtol 1e-4, the f32 mean and std of k values near each other (relative rounding ~k·2⁻²⁴
/// of the mean, amplified by mean/std ≈ 5 here).
#[test]
fn anchor_keep_inverse_cv_matches_the_reference() {
    use sop::ops::anchor_keep::anchor_keep_inverse_cv;
    let gpu = gpu();
    let mut rng = rng();
    for &(p, k) in &[(2, 3), (3, 1), (13, 4), (257, 7), (600, 2), (1031, 5)] {
        let sims: Vec<f32> = (0..p * k).map(|_| rng.random_range(0.2f32..0.9)).collect();
        let draws: Vec<f64> = (0..p / 2).map(|_| rng.random::<f64>()).collect();
        let draws = if draws.is_empty() { vec![rng.random::<f64>()] } else { draws };
        let pool = p + 17;
        let draws32: Vec<f32> = draws.iter().map(|&u| u as f32).collect();
        let st = gpu.upload_f32(&[p, k], &sims).unwrap();
        let dt = gpu.upload_f32(&[draws.len()], &draws32).unwrap();
        poison_pool(&gpu, &[&[p], &[p], &[draws.len()]]);
        let out = anchor_keep_inverse_cv(&gpu, &st, &dt, pool).unwrap();
        let what = format!("anchor_keep P {p} k {k}");
        let want_w = reference::inverse_cv_weights(&f64s(&sims), p, k, pool);
        let got_w = gpu.read_f32(&out.weights).unwrap();
        assert_close(&format!("{what}: weights"), &got_w, &want_w, 0.0, 1e-4);
        let keep = gpu.read_u32(&out.keep).unwrap();
        let draws_used: Vec<f64> = draws32.iter().map(|&u| u as f64).collect();
        let ties = check_draws(&what, &keep, f64s(&got_w), &draws_used, 1e-5);
        assert!(ties * 20 <= keep.len().max(20), "{what}: {ties} near-ties in {} draws", keep.len());
        let mut sorted = keep.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), keep.len(), "{what}: an anchor drawn twice");
    }
}

/// Bad shapes are refused by name.
#[test]
fn anchor_keep_inverse_cv_checks_its_inputs() {
    use sop::ops::anchor_keep::anchor_keep_inverse_cv;
    let gpu = gpu();
    let sims = gpu.upload_f32(&[4, 2], &[0.5; 8]).unwrap();
    let draws = gpu.upload_f32(&[5], &[0.5; 5]).unwrap();
    let err = |r: sop::Result<_>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(anchor_keep_inverse_cv(&gpu, &sims, &draws, 10)).contains("1 <= P' <= P"));
    let flat = gpu.upload_f32(&[8], &[0.5; 8]).unwrap();
    assert!(err(anchor_keep_inverse_cv(&gpu, &flat, &draws, 10)).contains("want (P, k)"));
}

/// 1/CV sampling draws on the device: building a task's prototypes waits for nothing, and
/// the anchors kept are those of the earlier host computation (f64 weights from the SE
/// similarities, the same uniforms, `reference::inverse_cv_weights` and
/// `draw_without_replacement`), up to near-ties of the f32 sums.
#[test]
fn inverse_cv_sampling_waits_for_nothing_and_keeps_the_host_choice() {
    let gpu = gpu();
    let mut rng = rng();
    let n = 120;
    let bank = Bank::random(&gpu, n, 16, rng.random()).unwrap();
    let cfg = PrototypeConfig { anchors: 13, experts: 4, tasks: 1 };
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut rng);
    let keep_seed: u64 = rng.random();
    gpu.sync().unwrap();
    let before = gpu.counters();
    let proto = build(&gpu, &bank, &perm, &cfg, 0.1, |nb| {
        let mut keep_rng = rand::rngs::StdRng::seed_from_u64(keep_seed);
        sample_keep(&gpu, nb, cfg.anchors, n - cfg.anchors, AnchorSampling::InverseCv, &mut keep_rng)
    })
    .unwrap();
    assert_eq!(gpu.counters().since(&before).host_waits, 0);
    assert_eq!(proto.kept, cfg.anchors / 2);
    // The host computation this replaced: f64 weights of the similarities read back.
    let sims = f64s(&proto.se_sims_host(&gpu).unwrap());
    let w = reference::inverse_cv_weights(&sims, cfg.anchors, cfg.experts - 1, n - cfg.anchors);
    let mut keep_rng = rand::rngs::StdRng::seed_from_u64(keep_seed);
    let draws: Vec<f64> = (0..cfg.anchors / 2).map(|_| keep_rng.random::<f64>()).collect();
    // The member rows name the kept anchors: the first row of prototype j is perm[keep[j]].
    let rows = gpu.read_u32(&proto.member_rows).unwrap();
    let keep: Vec<u32> =
        (0..proto.kept).map(|j| perm.iter().position(|&r| r == rows[j * cfg.experts]).unwrap() as u32).collect();
    check_draws("inverse_cv build", &keep, w, &draws, 1e-5);
}
