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
