//! Reference SOP objective (docs/METHOD.md "Memory banks", "Building the prototypes",
//! "Losses") in f64 plain loops, given explicit random draws, with analytic gradients with
//! respect to the student embeddings. It is the specification that the GPU objective
//! (`src/sop/objective.rs`) and `sop objective` are checked against, and it is itself
//! checked against finite differences and against an independent PyTorch implementation
//! (`scripts/sop_objective_torch.py`, fixtures in `kernels-tests/fixtures/`).
//!
//! Legend: B images, G global views (2), L local views, T patch tokens per view, C width
//! (256 in files, any width here), N bank rows, P anchors, E members per prototype
//! ("experts": the anchor and its E−1 support embeddings), P' kept prototypes (P/2 when
//! E > 1, else P), M = P'·E member rows, s smoothing, τ temperature.
//!
//! Per task, with perm a permutation of 0..N and keep (P/2 indices in 0..P):
//! - anchors = bank[perm[0..P]], pool = bank[perm[P..]] (pool position j = perm[P + j]);
//! - sim[a, j] = anchor_a · pool_j; the SEs of anchor a are the top-(E−1) pool positions by
//!   sim, ties broken by the lower pool position, ordered by descending sim;
//! - kept prototypes: keep[0], keep[1], ... in the order listed when E > 1, else 0..P;
//! - D (M, C): prototype-major, member 0 the anchor (weight w = 1 − s), members 1..E its SEs
//!   (weight w = sim); Y (M, P'): Y[r, p(r)] = w_r, Y[r, q] = (1 − w_r)/(P' − 1) for q ≠ p(r),
//!   each row divided by its sum;
//! - P(u) = softmax(u·Dᵀ/τ)·Y (τ = student_temp for student rows, teacher_temp for teacher rows).
//!
//! Losses, with H(q, p) = −Σ_k q_k ln p_k (p the student's mixture, q the teacher's):
//! - L_cls = mean over cls tasks, over the pairs (student view i, teacher view j), i ≠ j,
//!   i in 0..G+L, j in 0..G, and over the B images, of H(P_t(teacher_cls[j, b]), P_s(student_cls[i, b]));
//! - L_mim = mean over patch tasks, over the G views v and the B images of
//!   (Σ_{k masked} H(P_t(teacher_patch[v, b, k]), P_s(student_patch[v, b, k]))) / max(1, #masked);
//! - loss = L_cls + L_mim.
//!
//! Row layout: student_cls (G+L)·B rows, row = view·B + image (global views first);
//! teacher_cls G·B rows; student_patch / teacher_patch (G·B, T, C); masks (G·B, T).

/// One bank's contents and its random draws for every task.
#[derive(Clone, Debug)]
pub struct BankDraws {
    /// (N, C) row-major.
    pub bank: Vec<f64>,
    /// One permutation of 0..N per task; its first `anchors` entries are the anchors.
    pub perms: Vec<Vec<usize>>,
    /// Per task, the indices in 0..P of the kept anchors (P/2 of them); used only when
    /// `experts` > 1.
    pub keeps: Vec<Vec<usize>>,
    /// P.
    pub anchors: usize,
    /// E, the anchor included.
    pub experts: usize,
}

impl BankDraws {
    pub fn tasks(&self) -> usize {
        self.perms.len()
    }
}

/// Everything the objective reads (the contents of a `sop objective --inputs` file).
#[derive(Clone, Debug)]
pub struct SopInputs {
    /// C.
    pub width: usize,
    /// B.
    pub batch: usize,
    /// T, patch tokens per global view.
    pub tokens: usize,
    /// G (2 in SOP).
    pub global_views: usize,
    /// L.
    pub local_views: usize,
    /// ((G+L)·B, C).
    pub student_cls: Vec<f64>,
    /// (G·B, C).
    pub teacher_cls: Vec<f64>,
    /// (G·B, T, C).
    pub student_patch: Vec<f64>,
    /// (G·B, T, C).
    pub teacher_patch: Vec<f64>,
    /// (G·B, T), true where the student's patch was masked.
    pub masks: Vec<bool>,
    pub cls: BankDraws,
    pub patch: BankDraws,
    pub smoothing: f64,
    pub student_temp: f64,
    pub teacher_temp: f64,
}

/// The objective's value and its gradients with respect to the student embeddings.
#[derive(Clone, Debug)]
pub struct SopOutputs {
    pub loss_cls: f64,
    pub loss_mim: f64,
    pub loss: f64,
    /// ((G+L)·B, C).
    pub dstudent_cls: Vec<f64>,
    /// (G·B, T, C).
    pub dstudent_patch: Vec<f64>,
}

/// The self-organizing prototypes of one task.
#[derive(Clone, Debug)]
pub struct Prototypes {
    /// C.
    pub width: usize,
    /// P'.
    pub kept: usize,
    /// E.
    pub experts: usize,
    /// (M) bank row of each member, prototype-major (anchor first, then SEs by descending sim).
    pub members: Vec<usize>,
    /// (M) the member weights w_r: 1 − s for anchors, the similarity for SEs.
    pub weights: Vec<f64>,
    /// (M, C) the member vectors.
    pub d: Vec<f64>,
    /// (M, P') the row-normalised vote matrix.
    pub y: Vec<f64>,
}

impl Prototypes {
    /// M = P'·E.
    pub fn rows(&self) -> usize {
        self.kept * self.experts
    }
}

fn row(x: &[f64], r: usize, c: usize) -> &[f64] {
    &x[r * c..(r + 1) * c]
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Top-k of `scores` as (position, score), descending, ties broken by the lower position.
pub fn top_k(scores: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|j| (j, scores[j])).collect()
}

/// Steps 1-5 of docs/METHOD.md "Building the prototypes" for one task: anchors, top-(E−1) SEs
/// among the pool, anchor subsampling by `keep` (E > 1 only), D and Y.
pub fn build_prototypes(
    bank: &[f64],
    width: usize,
    perm: &[usize],
    keep: &[usize],
    anchors: usize,
    experts: usize,
    smoothing: f64,
) -> Prototypes {
    let n = bank.len() / width;
    assert_eq!(bank.len(), n * width, "bank is not (N, C)");
    assert_eq!(perm.len(), n, "perm must have N entries");
    assert!(experts >= 1 && anchors >= 1 && anchors + experts - 1 <= n);
    let (anchor_rows, pool_rows) = perm.split_at(anchors);
    // (P) per anchor: its members (bank row, weight), anchor first.
    let protos: Vec<Vec<(usize, f64)>> = anchor_rows
        .iter()
        .map(|&a| {
            let sims: Vec<f64> = pool_rows.iter().map(|&q| dot(row(bank, a, width), row(bank, q, width))).collect();
            let mut members = vec![(a, 1.0 - smoothing)];
            members.extend(top_k(&sims, experts - 1).into_iter().map(|(j, s)| (pool_rows[j], s)));
            members
        })
        .collect();
    let kept: Vec<usize> = if experts > 1 { keep.to_vec() } else { (0..anchors).collect() };
    let mut members = Vec::new();
    let mut weights = Vec::new();
    for &p in &kept {
        assert!(p < anchors, "keep index {p} out of 0..{anchors}");
        for &(r, w) in &protos[p] {
            members.push(r);
            weights.push(w);
        }
    }
    let d = members.iter().flat_map(|&r| row(bank, r, width).to_vec()).collect();
    let y = vote_matrix(&weights, experts, kept.len());
    Prototypes { width, kept: kept.len(), experts, members, weights, d, y }
}

/// Step 5's vote matrix Y (M, P') for member weights w (M), prototype-major with E members
/// each: Y[r, p(r)] = w_r, Y[r, q ≠ p(r)] = (1 − w_r)/(P' − 1), every row divided by its sum.
pub fn vote_matrix(weights: &[f64], experts: usize, kept: usize) -> Vec<f64> {
    let m = kept * experts;
    assert_eq!(weights.len(), m);
    let mut y = vec![0.0; m * kept];
    for r in 0..m {
        let w = weights[r];
        let yr = &mut y[r * kept..(r + 1) * kept];
        for (q, v) in yr.iter_mut().enumerate() {
            *v = if q == r / experts { w } else { (1.0 - w) / (kept as f64 - 1.0) };
        }
        let sum: f64 = yr.iter().sum();
        for v in yr.iter_mut() {
            *v /= sum;
        }
    }
    y
}

/// Step 6: a = softmax(u·Dᵀ/τ) (M) and P(u) = a·Y (P'). Returns (a, P(u)).
pub fn assign(u: &[f64], protos: &Prototypes, temp: f64) -> (Vec<f64>, Vec<f64>) {
    let (m, c, kp) = (protos.rows(), protos.width, protos.kept);
    assert_eq!(u.len(), c);
    let z: Vec<f64> = (0..m).map(|r| dot(u, row(&protos.d, r, c)) / temp).collect();
    let zmax = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|&v| (v - zmax).exp()).collect();
    let sum: f64 = e.iter().sum();
    let a: Vec<f64> = e.iter().map(|&v| v / sum).collect();
    let mut p = vec![0.0; kp];
    for (ar, yr) in a.iter().zip(protos.y.chunks(kp)) {
        for (pk, y) in p.iter_mut().zip(yr) {
            *pk += ar * y;
        }
    }
    (a, p)
}

/// Backward of `assign` given dP (P'): with g = Y·dP (M),
/// dz_r = a_r (g_r − Σ_s a_s g_s) (softmax Jacobian), du = Σ_r dz_r D_r / τ (C).
pub fn assign_backward(a: &[f64], dp: &[f64], protos: &Prototypes, temp: f64) -> Vec<f64> {
    let (m, c, kp) = (protos.rows(), protos.width, protos.kept);
    let g: Vec<f64> = (0..m).map(|r| (0..kp).map(|k| protos.y[r * kp + k] * dp[k]).sum()).collect();
    let ag: f64 = a.iter().zip(&g).map(|(x, y)| x * y).sum();
    let mut du = vec![0.0; c];
    for r in 0..m {
        let dz = a[r] * (g[r] - ag) / temp;
        for (d, x) in du.iter_mut().zip(row(&protos.d, r, c)) {
            *d += dz * x;
        }
    }
    du
}

/// H(q, p) = −Σ_k q_k ln p_k (p a mixture probability, not a log-softmax).
pub fn cross_entropy(q: &[f64], p: &[f64]) -> f64 {
    -q.iter().zip(p).map(|(a, b)| a * b.ln()).sum::<f64>()
}

/// dH/dp_k = −q_k / p_k.
pub fn cross_entropy_backward(q: &[f64], p: &[f64]) -> Vec<f64> {
    q.iter().zip(p).map(|(a, b)| -a / b).collect()
}

fn build_all(draws: &BankDraws, width: usize, smoothing: f64) -> Vec<Prototypes> {
    draws
        .perms
        .iter()
        .zip(&draws.keeps)
        .map(|(perm, keep)| build_prototypes(&draws.bank, width, perm, keep, draws.anchors, draws.experts, smoothing))
        .collect()
}

/// The whole objective: losses and their gradients with respect to student_cls and
/// student_patch (the teacher and the banks are constants).
pub fn sop_objective(inp: &SopInputs) -> SopOutputs {
    let (c, b, t, g, l) = (inp.width, inp.batch, inp.tokens, inp.global_views, inp.local_views);
    assert_eq!(inp.student_cls.len(), (g + l) * b * c);
    assert_eq!(inp.teacher_cls.len(), g * b * c);
    assert_eq!(inp.student_patch.len(), g * b * t * c);
    assert_eq!(inp.teacher_patch.len(), g * b * t * c);
    assert_eq!(inp.masks.len(), g * b * t);
    assert_eq!(inp.cls.perms.len(), inp.cls.keeps.len());
    assert_eq!(inp.patch.perms.len(), inp.patch.keeps.len());
    let (ts, tt) = (inp.student_temp, inp.teacher_temp);

    // [CLS]: pairs (i, j), i ≠ j, i over student views, j over teacher (global) views.
    let pairs: Vec<(usize, usize)> =
        (0..g + l).flat_map(|i| (0..g).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    assert!(!pairs.is_empty(), "no (student, teacher) view pair with i != j");
    let cls_protos = build_all(&inp.cls, c, inp.smoothing);
    let mut loss_cls = 0.0;
    let mut dstudent_cls = vec![0.0; inp.student_cls.len()];
    let coef = 1.0 / (cls_protos.len() * pairs.len() * b) as f64;
    for protos in &cls_protos {
        let q: Vec<Vec<f64>> = (0..g * b).map(|r| assign(row(&inp.teacher_cls, r, c), protos, tt).1).collect();
        for i in 0..g + l {
            for bi in 0..b {
                let sr = i * b + bi;
                let (a, p) = assign(row(&inp.student_cls, sr, c), protos, ts);
                let mut dp = vec![0.0; protos.kept];
                for &(pi, j) in &pairs {
                    if pi != i {
                        continue;
                    }
                    let qj = &q[j * b + bi];
                    loss_cls += coef * cross_entropy(qj, &p);
                    for (d, v) in dp.iter_mut().zip(cross_entropy_backward(qj, &p)) {
                        *d += coef * v;
                    }
                }
                let du = assign_backward(&a, &dp, protos, ts);
                for (d, v) in dstudent_cls[sr * c..(sr + 1) * c].iter_mut().zip(du) {
                    *d += v;
                }
            }
        }
    }

    // SOP-MIM: masked student patches of view v against the teacher's same view v.
    let patch_protos = build_all(&inp.patch, c, inp.smoothing);
    let mut loss_mim = 0.0;
    let mut dstudent_patch = vec![0.0; inp.student_patch.len()];
    for protos in &patch_protos {
        for img in 0..g * b {
            let masked: Vec<usize> = (0..t).filter(|&k| inp.masks[img * t + k]).collect();
            let coef = 1.0 / (patch_protos.len() * g * b * masked.len().max(1)) as f64;
            for k in masked {
                let r = img * t + k;
                let q = assign(row(&inp.teacher_patch, r, c), protos, tt).1;
                let (a, p) = assign(row(&inp.student_patch, r, c), protos, ts);
                loss_mim += coef * cross_entropy(&q, &p);
                let dp: Vec<f64> = cross_entropy_backward(&q, &p).into_iter().map(|v| coef * v).collect();
                let du = assign_backward(&a, &dp, protos, ts);
                for (d, v) in dstudent_patch[r * c..(r + 1) * c].iter_mut().zip(du) {
                    *d += v;
                }
            }
        }
    }

    SopOutputs { loss_cls, loss_mim, loss: loss_cls + loss_mim, dstudent_cls, dstudent_patch }
}
