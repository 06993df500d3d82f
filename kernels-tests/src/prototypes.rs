//! Reference prototype members and vote matrix (shaders/prototypes.wgsl), in f64: the two
//! entry points `prototype_members` and `prototype_votes`.

/// (rows (M), weights (M)) of the kept anchors `keep` (P'), M = P'·E, prototype-major: for
/// kept anchor a = keep[p], member p·E is the anchor perm[a] with weight 1 − s and member
/// p·E + j (j ≥ 1) is the SE perm[P + idx[a·(E−1) + j − 1]] with weight vals[a·(E−1) + j − 1].
/// idx and vals are (P, E − 1), empty when E = 1; pool positions ≥ N − P read perm[N − 1]
/// (the kernel's clamp).
pub fn prototype_members(
    perm: &[u32],
    idx: &[u32],
    vals: &[f64],
    keep: &[u32],
    anchors: usize,
    experts: usize,
    smoothing: f64,
) -> (Vec<u32>, Vec<f64>) {
    let (n, k) = (perm.len(), experts - 1);
    assert_eq!(idx.len(), anchors * k, "idx must be (P, E − 1)");
    assert_eq!(vals.len(), anchors * k, "vals must be (P, E − 1)");
    let mut rows = Vec::with_capacity(keep.len() * experts);
    let mut weights = Vec::with_capacity(keep.len() * experts);
    for &a in keep {
        let a = a as usize;
        assert!(a < anchors, "keep entry {a} out of 0..{anchors}");
        rows.push(perm[a]);
        weights.push(1.0 - smoothing);
        for j in 0..k {
            let pool_position = idx[a * k + j] as usize;
            rows.push(perm[(anchors + pool_position).min(n - 1)]);
            weights.push(vals[a * k + j]);
        }
    }
    (rows, weights)
}

/// Y (M, P') for member weights w (M), E members per prototype, p(r) = r / E:
/// Y[r, q] = (q == p(r) ? w_r : (1 − w_r)/(P' − 1)) / (w_r + (1 − w_r)).
pub fn prototype_votes(weights: &[f64], experts: usize, kept: usize) -> Vec<f64> {
    let m = kept * experts;
    assert_eq!(weights.len(), m, "weights must have P'·E entries");
    assert!(kept >= 2, "the smoothing needs P' >= 2 prototypes");
    let mut y = vec![0.0; m * kept];
    for r in 0..m {
        let w = weights[r];
        let other = (1.0 - w) / (kept as f64 - 1.0);
        for q in 0..kept {
            let v = if q == r / experts { w } else { other };
            y[r * kept + q] = v / (w + (1.0 - w));
        }
    }
    y
}

/// Weight 1/CV of each of the P anchors' SE similarities `sims` (P, k) (shaders/anchor_keep.wgsl,
/// step 1; docs/METHOD.md step 4): CV = std/mean · (1 + 1/(4·pool)), the std with k − 1 in
/// the denominator (1 when k = 1); 0 where CV is not finite and positive; all 1 when none is
/// positive.
pub fn inverse_cv_weights(sims: &[f64], anchors: usize, k: usize, pool: usize) -> Vec<f64> {
    assert_eq!(sims.len(), anchors * k, "sims must be (P, k)");
    let mut w: Vec<f64> = (0..anchors)
        .map(|a| {
            let s = &sims[a * k..(a + 1) * k];
            let mean = s.iter().sum::<f64>() / k as f64;
            let var = s.iter().map(|&v| (v - mean).powi(2)).sum::<f64>() / (k as f64 - 1.0).max(1.0);
            let cv = var.sqrt() / mean * (1.0 + 1.0 / (4.0 * pool as f64));
            if cv.is_finite() && cv > 0.0 {
                1.0 / cv
            } else {
                0.0
            }
        })
        .collect();
    if w.iter().all(|&x| x <= 0.0) {
        w.iter_mut().for_each(|x| *x = 1.0);
    }
    w
}

/// Successive weighted draws without replacement (torch.multinomial's way), one per uniform
/// u in `draws` ([0, 1)): r = u · Σ w, the first i with w_i > 0 and r < w_i after subtracting
/// the w_j before it (the last positive one when r runs past them), then w_i = 0. Returns the
/// picks in draw order.
pub fn draw_without_replacement(mut w: Vec<f64>, draws: &[f64]) -> Vec<u32> {
    let mut keep = Vec::with_capacity(draws.len());
    for &u in draws {
        let total: f64 = w.iter().sum();
        let mut r = u * total;
        let mut pick = w.iter().rposition(|&x| x > 0.0).unwrap_or(0);
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 && r < x {
                pick = i;
                break;
            }
            r -= x;
        }
        keep.push(pick as u32);
        w[pick] = 0.0;
    }
    keep
}
