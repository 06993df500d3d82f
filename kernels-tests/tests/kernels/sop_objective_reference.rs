//! The f64 reference SOP objective against itself: its analytic gradients against central
//! finite differences, and the properties docs/METHOD.md implies (rows of Y and of P(u) sum to 1,
//! E = 1 with s = 0 is a softmax over the anchors, ties and keep order as specified).
//! CPU only; the comparison with PyTorch is in `sop_objective_torch.rs`.

use crate::common::*;
use rand::seq::SliceRandom;
use rand::Rng;
use sop_reference::finite_difference;
use sop_reference::sop_objective::*;

fn normalize(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

fn gauss(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    // Sum of uniforms: close enough to normal for test data, no extra dependency.
    (0..n).map(|_| (0..4).map(|_| rng.random_range(-1.0..1.0)).sum::<f64>()).collect()
}

/// Unit rows drawn around `clusters` centres, so that neighbours have clearly positive
/// similarities (as in a trained bank) and vote weights stay in (0, 1).
fn clustered_rows(rng: &mut impl Rng, n: usize, c: usize, clusters: usize) -> Vec<f64> {
    let centres: Vec<Vec<f64>> = (0..clusters).map(|_| gauss(rng, c)).collect();
    let mut out = Vec::with_capacity(n * c);
    for i in 0..n {
        let mut v: Vec<f64> = centres[i % clusters].iter().zip(gauss(rng, c)).map(|(a, b)| a + 0.6 * b).collect();
        normalize(&mut v);
        out.extend(v);
    }
    out
}

fn draws(rng: &mut impl Rng, bank: Vec<f64>, c: usize, tasks: usize, anchors: usize, experts: usize) -> BankDraws {
    let n = bank.len() / c;
    let mut perms = Vec::new();
    let mut keeps = Vec::new();
    for _ in 0..tasks {
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(rng);
        let mut keep: Vec<usize> = (0..anchors).collect();
        keep.shuffle(rng);
        keep.truncate(anchors / 2);
        perms.push(perm);
        keeps.push(keep);
    }
    BankDraws { bank, perms, keeps, anchors, experts }
}

struct Case {
    c: usize,
    b: usize,
    t: usize,
    locals: usize,
    // (N, P, E, tasks)
    cls: (usize, usize, usize, usize),
    patch: (usize, usize, usize, usize),
    smoothing: f64,
}

fn make_inputs(rng: &mut impl Rng, k: &Case) -> SopInputs {
    let (c, b, t, g) = (k.c, k.b, k.t, 2);
    let rows = |rng: &mut _, n| clustered_rows(rng, n, c, 3);
    let mut masks: Vec<bool> = (0..g * b * t).map(|_| rng.random_bool(0.4)).collect();
    // Image 0 of view 0 has no masked patch; image 0 of view 1 has all of them.
    masks[..t].iter_mut().for_each(|m| *m = false);
    masks[b * t..(b + 1) * t].iter_mut().for_each(|m| *m = true);
    let cls_bank = rows(rng, k.cls.0);
    let patch_bank = rows(rng, k.patch.0);
    SopInputs {
        width: c,
        batch: b,
        tokens: t,
        global_views: g,
        local_views: k.locals,
        student_cls: rows(rng, (g + k.locals) * b),
        teacher_cls: rows(rng, g * b),
        student_patch: rows(rng, g * b * t),
        teacher_patch: rows(rng, g * b * t),
        masks,
        cls: draws(rng, cls_bank, c, k.cls.3, k.cls.1, k.cls.2),
        patch: draws(rng, patch_bank, c, k.patch.3, k.patch.1, k.patch.2),
        smoothing: k.smoothing,
        student_temp: 0.1,
        teacher_temp: 0.04,
    }
}

/// Gradients w.r.t. [student_cls, student_patch] against central differences of the loss.
/// Tolerance: O(h²) truncation with h = 1e-6 plus f64 round-off of ~1e-16/h on a loss of
/// order 1 gives errors near 1e-10; 1e-7 absolute + 1e-6 relative leaves margin, while an
/// indexing or scaling mistake gives errors of the size of the gradient (1e-3..1e-1).
fn check_gradients(k: &Case) {
    let mut rng = rng();
    let inp = make_inputs(&mut rng, k);
    let out = sop_objective(&inp);
    assert!(out.loss.is_finite() && out.loss_cls > 0.0 && out.loss_mim > 0.0, "{out:?}");
    assert!((out.loss - out.loss_cls - out.loss_mim).abs() < 1e-15);
    let ncls = inp.student_cls.len();
    let x: Vec<f64> = inp.student_cls.iter().chain(&inp.student_patch).cloned().collect();
    let fd = finite_difference(&x, |x| {
        let mut i2 = inp.clone();
        i2.student_cls = x[..ncls].to_vec();
        i2.student_patch = x[ncls..].to_vec();
        sop_objective(&i2).loss
    });
    assert_close_f64("dstudent_cls", &out.dstudent_cls, &fd[..ncls], 1e-7, 1e-6);
    assert_close_f64("dstudent_patch", &out.dstudent_patch, &fd[ncls..], 1e-7, 1e-6);
    // Every student row takes part, except patches that are not masked.
    assert!(out.dstudent_cls.chunks(k.c).all(|r| r.iter().any(|&v| v != 0.0)));
    for (i, r) in out.dstudent_patch.chunks(k.c).enumerate() {
        assert_eq!(r.iter().any(|&v| v != 0.0), inp.masks[i], "patch row {i}");
    }
}

#[test]
fn gradients_one_expert_no_local_views() {
    check_gradients(&Case { c: 6, b: 2, t: 5, locals: 0, cls: (24, 6, 1, 2), patch: (20, 4, 1, 1), smoothing: 0.1 });
}

#[test]
fn gradients_several_experts_with_local_views() {
    check_gradients(&Case { c: 5, b: 2, t: 4, locals: 2, cls: (32, 8, 4, 3), patch: (24, 6, 3, 2), smoothing: 0.1 });
}

#[test]
fn gradients_several_experts_no_local_views() {
    check_gradients(&Case { c: 7, b: 3, t: 3, locals: 0, cls: (40, 8, 5, 1), patch: (20, 4, 1, 1), smoothing: 0.2 });
}

#[test]
fn gradients_one_expert_with_local_views() {
    check_gradients(&Case { c: 4, b: 1, t: 6, locals: 3, cls: (20, 4, 1, 1), patch: (30, 8, 2, 1), smoothing: 0.0 });
}

#[test]
fn image_without_masked_patch_adds_nothing_but_counts_in_the_mean() {
    let mut rng = rng();
    let k = Case { c: 5, b: 2, t: 4, locals: 0, cls: (20, 4, 1, 1), patch: (20, 4, 1, 1), smoothing: 0.1 };
    let inp = make_inputs(&mut rng, &k);
    let base = sop_objective(&inp);
    // Its teacher and student patches do not matter.
    let mut other = inp.clone();
    for v in &mut other.teacher_patch[..k.t * k.c] {
        *v = -*v;
    }
    for v in &mut other.student_patch[..k.t * k.c] {
        *v *= 3.0;
    }
    assert_eq!(sop_objective(&other).loss_mim, base.loss_mim);
    // The loss is the mean over all G·B images, the one without a masked patch counting as 0.
    let (g, b, t, c) = (2, k.b, k.t, k.c);
    let protos = build_prototypes(&inp.patch.bank, c, &inp.patch.perms[0], &inp.patch.keeps[0], 4, 1, 0.1);
    let mut want = 0.0;
    for img in 0..g * b {
        let masked: Vec<usize> = (0..t).filter(|&j| inp.masks[img * t + j]).collect();
        let mut s = 0.0;
        for &j in &masked {
            let r = (img * t + j) * c;
            let q = assign(&inp.teacher_patch[r..r + c], &protos, 0.04).1;
            let p = assign(&inp.student_patch[r..r + c], &protos, 0.1).1;
            s += cross_entropy(&q, &p);
        }
        want += s / masked.len().max(1) as f64 / (g * b) as f64;
    }
    assert!((base.loss_mim - want).abs() < 1e-12 * want, "{} vs {want}", base.loss_mim);
}

#[test]
fn vote_rows_and_assignments_sum_to_one() {
    let mut rng = rng();
    for &(n, p, e, s) in &[(20, 4, 1, 0.1), (30, 8, 4, 0.1), (40, 6, 9, 0.3), (25, 4, 2, 0.0)] {
        let c = 8;
        let bank = clustered_rows(&mut rng, n, c, 4);
        let d = draws(&mut rng, bank, c, 1, p, e);
        let protos = build_prototypes(&d.bank, c, &d.perms[0], &d.keeps[0], p, e, s);
        let kept = if e > 1 { p / 2 } else { p };
        assert_eq!((protos.kept, protos.rows()), (kept, kept * e));
        for r in protos.y.chunks(kept) {
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-14, "Y row {r:?}");
        }
        // Also with arbitrary (even negative or > 1) weights, as an unnormalised bank gives.
        let w: Vec<f64> = (0..kept * e).map(|_| rng.random_range(-0.5..1.5)).collect();
        for r in vote_matrix(&w, e, kept).chunks(kept) {
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12, "Y row {r:?}");
        }
        for _ in 0..5 {
            let u = clustered_rows(&mut rng, 1, c, 1);
            for temp in [0.04, 0.1, 1.0] {
                let (a, pu) = assign(&u, &protos, temp);
                assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-14);
                assert!((pu.iter().sum::<f64>() - 1.0).abs() < 1e-14, "P(u) {pu:?}");
                assert!(pu.iter().all(|&v| v > 0.0));
            }
        }
    }
}

#[test]
fn one_expert_without_smoothing_is_a_softmax_over_anchors() {
    let mut rng = rng();
    let (n, c, p, temp) = (30, 8, 6, 0.07);
    let bank = clustered_rows(&mut rng, n, c, 3);
    let d = draws(&mut rng, bank, c, 1, p, 1);
    let protos = build_prototypes(&d.bank, c, &d.perms[0], &d.keeps[0], p, 1, 0.0);
    assert_eq!(protos.members, d.perms[0][..p].to_vec(), "E = 1 keeps every anchor, in perm order");
    let u = clustered_rows(&mut rng, 1, c, 1);
    let z: Vec<f64> = (0..p).map(|k| sop_reference::dot(&u, &d.bank[d.perms[0][k] * c..][..c]) / temp).collect();
    let zmax = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = z.iter().map(|v| (v - zmax).exp()).sum();
    let (_, pu) = assign(&u, &protos, temp);
    for k in 0..p {
        let want = (z[k] - zmax).exp() / sum;
        assert!((pu[k] - want).abs() < 1e-14, "P(u)[{k}] = {} vs softmax {want}", pu[k]);
    }
}

#[test]
fn members_follow_keep_order_and_ties_go_to_the_lower_pool_position() {
    let c = 3;
    // Bank rows: 0 the anchor direction; rows 1..5 duplicates of one neighbour (exact ties);
    // row 5 a weaker neighbour; rows 6.. others.
    let mut bank = Vec::new();
    let mut push = |v: [f64; 3]| {
        let mut v = v.to_vec();
        normalize(&mut v);
        bank.extend(v);
    };
    push([1.0, 0.0, 0.0]); // 0 anchor A
    for _ in 0..4 {
        push([1.0, 0.5, 0.0]); // 1..=4 tied best neighbours of A
    }
    push([1.0, 1.0, 0.0]); // 5 weaker
    push([0.0, 0.0, 1.0]); // 6 anchor B
    push([0.0, 0.3, 1.0]); // 7 best neighbour of B
    push([0.0, -1.0, 0.0]); // 8
    push([-1.0, 0.0, 0.2]); // 9
                            // Anchors: rows 6, 0 (P = 2, E = 3); pool order chosen so the tied rows sit at pool
                            // positions 1 (row 4), 2 (row 1), 4 (row 3), 5 (row 2).
    let perm = vec![6, 0, 9, 4, 1, 8, 3, 2, 5, 7];
    let protos = build_prototypes(&bank, c, &perm, &[1], 2, 3, 0.1);
    // keep = [1]: the prototype of anchor 0 only; its SEs are the two lowest pool positions
    // among the tied rows: row 4 (position 1) then row 1 (position 2).
    assert_eq!(protos.members, vec![0, 4, 1]);
    let sim = 1.0 / 1.25f64.sqrt();
    assert!((protos.weights[0] - 0.9).abs() < 1e-15);
    assert!((protos.weights[1] - sim).abs() < 1e-12 && (protos.weights[2] - sim).abs() < 1e-12);
    let protos = build_prototypes(&bank, c, &perm, &[1, 0], 2, 3, 0.1);
    assert_eq!(protos.members[..3], [0, 4, 1]);
    assert_eq!(protos.members[3..5], [6, 7], "anchor B first, then its best neighbour");
    // Top-k itself: descending, ties to the lower position.
    assert_eq!(top_k(&[0.5, 0.9, 0.5, 0.9, 0.1], 3), vec![(1, 0.9), (3, 0.9), (0, 0.5)]);
}
