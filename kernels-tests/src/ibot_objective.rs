//! Reference iBOT objective (the `ibot` baseline of `sop train --objective ibot`; Zhou et
//! al., ICLR 2022, the authors' `iBOTLoss`) in f64 plain loops, with analytic gradients
//! with respect to the student logits, and the weight-normalised prototype layer (DINO's
//! `last_layer` with g ≡ 1) with its backward. Both backwards are checked against finite
//! differences; the GPU objective (`src/sop/ibot.rs`) is checked against this file.
//!
//! Legend: B images, L local views, N patches per view, K prototypes, W head width, τ_s
//! the student, τ_t and τ_t2 the teacher's [CLS] and patch temperatures, m the centre
//! momentum.
//!
//! Prototype layer: logits[r, k] = z_r · v_k / ‖v_k‖ (z (R, W) head outputs, v (K, W)).
//!
//! Targets: q[j, b] = softmax((t_cls[j, b] − c) / τ_t), q2[v, b, n] = softmax((t_patch[v, b, n]
//! − c2) / τ_t2), with the centres c, c2 (K) before this step's update.
//! Student: log p = log_softmax(s / τ_s) for every student row.
//! Losses, H(q, log p) = −Σ_k q_k log p_k:
//! - L_cls = 1/(2 + 2L) Σ_{v ∈ 0..2+L} Σ_{j ∈ {0,1}, j ≠ v} (1/B) Σ_b H(q[j, b], log p[v, b]);
//! - L_mim = 1/(2B) Σ_{v ∈ {0,1}} Σ_b (1/max(1, |Ω_vb|)) Σ_{n ∈ Ω_vb} H(q2[v, b, n], log p2[v, b, n]),
//!   Ω_vb the masked patches of view v of image b.
//!
//! Gradient of H(Q, log_softmax(s/τ)) in s: (1/τ)(softmax(s/τ)·Σ_k Q_k − Q).
//! Centres after the step: c ← m·c + (1 − m)·mean over the 2B rows of t_cls; c2 ← m·c2 +
//! (1 − m)·mean over the 2B·N rows of t_patch (iBOT's mean over patches, then over images,
//! which is the same since every image has N patches).

/// Everything the objective reads. Rows are view-major (row v·B + b), global views first.
#[derive(Clone, Debug)]
pub struct IbotInputs {
    pub prototypes: usize,
    pub batch: usize,
    pub local_views: usize,
    pub patches: usize,
    /// ((2+L)·B, K) student [CLS] logits.
    pub student_cls: Vec<f64>,
    /// (2B, K) teacher [CLS] logits.
    pub teacher_cls: Vec<f64>,
    /// (2B, N, K) student patch logits (masked views), teacher patch logits (unmasked).
    pub student_patch: Vec<f64>,
    pub teacher_patch: Vec<f64>,
    /// (2B, N), 1 = masked.
    pub masks: Vec<u8>,
    /// (K) the [CLS] and patch centres before the step.
    pub center: Vec<f64>,
    pub center_patch: Vec<f64>,
    pub student_temp: f64,
    pub teacher_temp: f64,
    pub teacher_patch_temp: f64,
    pub center_momentum: f64,
}

#[derive(Clone, Debug)]
pub struct IbotOutputs {
    pub loss_cls: f64,
    pub loss_mim: f64,
    /// d(loss_cls + loss_mim) / d student logits, same shapes as the inputs.
    pub dstudent_cls: Vec<f64>,
    pub dstudent_patch: Vec<f64>,
    /// The centres after the step.
    pub center: Vec<f64>,
    pub center_patch: Vec<f64>,
}

/// softmax((x − c) / τ) of one row.
fn softmax_centered(x: &[f64], c: &[f64], tau: f64) -> Vec<f64> {
    let z: Vec<f64> = x.iter().zip(c).map(|(a, b)| (a - b) / tau).collect();
    let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// H(q, log_softmax(s/τ)) and its gradient in s.
fn cross_entropy(q: &[f64], s: &[f64], tau: f64) -> (f64, Vec<f64>) {
    let zero = vec![0.0; s.len()];
    let p = softmax_centered(s, &zero, tau);
    let z: Vec<f64> = s.iter().map(|v| v / tau).collect();
    let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    let h = -q.iter().zip(&z).map(|(qk, zk)| qk * (zk - lse)).sum::<f64>();
    let mass: f64 = q.iter().sum();
    let g = p.iter().zip(q).map(|(pk, qk)| (pk * mass - qk) / tau).collect();
    (h, g)
}

/// Column means of a (R, K) matrix.
fn row_mean(x: &[f64], k: usize) -> Vec<f64> {
    let r = x.len() / k;
    (0..k).map(|j| (0..r).map(|i| x[i * k + j]).sum::<f64>() / r as f64).collect()
}

pub fn ibot_objective(x: &IbotInputs) -> IbotOutputs {
    let (k, b, l, n) = (x.prototypes, x.batch, x.local_views, x.patches);
    let row = |v: &[f64], i: usize| v[i * k..(i + 1) * k].to_vec();
    let q: Vec<Vec<f64>> =
        (0..2 * b).map(|i| softmax_centered(&row(&x.teacher_cls, i), &x.center, x.teacher_temp)).collect();
    let pairs = (2 + 2 * l) as f64;
    let mut loss_cls = 0.0;
    let mut dcls = vec![0.0; (2 + l) * b * k];
    for v in 0..2 + l {
        for j in 0..2 {
            if j == v {
                continue;
            }
            for i in 0..b {
                let (h, g) = cross_entropy(&q[j * b + i], &row(&x.student_cls, v * b + i), x.student_temp);
                let w = 1.0 / (pairs * b as f64);
                loss_cls += w * h;
                for (d, gk) in dcls[(v * b + i) * k..(v * b + i + 1) * k].iter_mut().zip(g) {
                    *d += w * gk;
                }
            }
        }
    }
    let mut loss_mim = 0.0;
    let mut dpatch = vec![0.0; 2 * b * n * k];
    for img in 0..2 * b {
        let mask = &x.masks[img * n..(img + 1) * n];
        let count = mask.iter().filter(|&&m| m != 0).count().max(1) as f64;
        for (t, _) in mask.iter().enumerate().filter(|(_, &m)| m != 0) {
            let r = img * n + t;
            let q2 = softmax_centered(&row(&x.teacher_patch, r), &x.center_patch, x.teacher_patch_temp);
            let (h, g) = cross_entropy(&q2, &row(&x.student_patch, r), x.student_temp);
            let w = 1.0 / (count * 2.0 * b as f64);
            loss_mim += w * h;
            for (d, gk) in dpatch[r * k..(r + 1) * k].iter_mut().zip(g) {
                *d += w * gk;
            }
        }
    }
    let m = x.center_momentum;
    let ema = |c: &[f64], mean: Vec<f64>| c.iter().zip(mean).map(|(a, b)| m * a + (1.0 - m) * b).collect();
    IbotOutputs {
        loss_cls,
        loss_mim,
        dstudent_cls: dcls,
        dstudent_patch: dpatch,
        center: ema(&x.center, row_mean(&x.teacher_cls, k)),
        center_patch: ema(&x.center_patch, row_mean(&x.teacher_patch, k)),
    }
}

/// The weight-normalised prototype layer: logits (R, K) = z (R, W) · (v / ‖v‖ per row)ᵀ.
pub fn prototype_logits(z: &[f64], v: &[f64], r: usize, w: usize, k: usize) -> Vec<f64> {
    let vn = normalized_rows(v, w);
    let mut y = vec![0.0; r * k];
    for i in 0..r {
        for j in 0..k {
            y[i * k + j] = (0..w).map(|c| z[i * w + c] * vn[j * w + c]).sum();
        }
    }
    y
}

fn normalized_rows(v: &[f64], w: usize) -> Vec<f64> {
    v.chunks(w)
        .flat_map(|row| {
            let nrm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
            row.iter().map(move |a| a / nrm)
        })
        .collect()
}

/// Backward of `prototype_logits`: (dz (R, W), dv (K, W)) from dy (R, K). With v̂ = v/‖v‖,
/// dz = dy·v̂ and dv̂ = dyᵀ·z, then dv_k = (dv̂_k − v̂_k (v̂_k · dv̂_k)) / ‖v_k‖.
pub fn prototype_logits_backward(
    dy: &[f64],
    z: &[f64],
    v: &[f64],
    r: usize,
    w: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    let vn = normalized_rows(v, w);
    let mut dz = vec![0.0; r * w];
    let mut dvn = vec![0.0; k * w];
    for i in 0..r {
        for j in 0..k {
            let g = dy[i * k + j];
            for c in 0..w {
                dz[i * w + c] += g * vn[j * w + c];
                dvn[j * w + c] += g * z[i * w + c];
            }
        }
    }
    let mut dv = vec![0.0; k * w];
    for j in 0..k {
        let nrm = v[j * w..(j + 1) * w].iter().map(|a| a * a).sum::<f64>().sqrt();
        let dot: f64 = (0..w).map(|c| vn[j * w + c] * dvn[j * w + c]).sum();
        for c in 0..w {
            dv[j * w + c] = (dvn[j * w + c] - vn[j * w + c] * dot) / nrm;
        }
    }
    (dz, dv)
}
