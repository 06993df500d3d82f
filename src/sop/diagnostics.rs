//! Per-step diagnostics of collapse and crowding (metrics.jsonl), computed on the device
//! from tensors the step already has and read back with the step's other scalars, then
//! finished on the host from a few small arrays:
//!
//! - `teacher_cls_erank`, the effective rank of the teacher's [CLS] head outputs of the batch
//!   (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): Z (R, W), R = B rows (the first
//!   global view of each image: views of one image would count it twice), is centred on its column mean, Zc = Z − 1·mean
//!   (one product H·Z, H = I − 11ᵀ/R); with σ_i its singular values,
//!   p_i = σ_i / Σ_j σ_j and erank = exp(−Σ_i p_i ln p_i) (σ_i below 1e-3·σ_max, the f32
//!   Gram matrix's rounding floor, count as 0: `effective_rank`), between 1 (every row on one line)
//!   and min(R − 1, W) (a spread batch; 63 for the default batch of 64). The device computes the Gram matrix of Zc, (R, R) =
//!   Zc·Zcᵀ when R ≤ W, else (W, W) = Zcᵀ·Zc (its eigenvalues are σ_i², the same either way);
//!   the host takes its eigenvalues (`symmetric_eigenvalues`: Householder then QL, n = min(R, W)).
//! - `target_entropy`, the mean over the teacher's [CLS] targets q (2B, P′) of
//!   −Σ_k q_k ln q_k, in nats: ln P′ when the targets are uniform (a flat, collapsed
//!   teacher), near 0 when each is sharp. SOP: the first [CLS] task's P′ prototypes; ibot:
//!   its K prototypes.
//! - `prototypes_effective`, the number of prototypes that receive the batch's target mass:
//!   exp of the entropy of the batch-mean target m = (1/2B) Σ_r q_r, so k prototypes sharing
//!   the mass equally give k, and a teacher that sends every image to one prototype gives
//!   1 (its maximum is P′). A threshold count ("prototypes above 1/(10·P′) of the mass")
//!   would count every SOP prototype, because the vote matrix's smoothing gives each one a
//!   share of every row.
//! - `prototypes_used` (in `ObjectiveOutput`): how many distinct prototypes are the most
//!   likely one (arg-max) of at least one teacher row; 1 means all images share one.
//!
//! The constants they need (the centring matrix H, the entropy's row weights) are uploaded
//! once per shape and kept (`DiagnosticConstants`): an upload ends the open command
//! encoder, so one per micro-step would cost a submit each. Training computes the
//! diagnostics only where metrics.jsonl is written (rank 0 of data-parallel training).
//!
//! Tests: tests/diagnostics.rs (each value against a plain CPU computation).

use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::cross_entropy::cross_entropy_forward;
use crate::ops::matmul::Matmul;
use crate::ops::reduce::sum_rows;

/// One micro-batch's diagnostics on the device, before the step's read.
pub struct DiagnosticTensors {
    /// The Gram matrix of the centred teacher [CLS] rows, (n, n), n = min(R, W).
    pub gram: Tensor,
    /// (1) mean row entropy of the targets.
    pub entropy: Tensor,
    /// (P′) column sums of the targets.
    pub mass: Tensor,
}

/// The finished values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Diagnostics {
    pub teacher_cls_erank: f64,
    pub target_entropy: f64,
    pub prototypes_effective: f64,
}

impl DiagnosticTensors {
    /// How many tensors `tensors` lists (and `finish_words` takes).
    pub const PARTS: usize = 3;

    /// Diagnostics of teacher [CLS] rows z (R, W) and targets q (R_q, P′).
    pub fn new(gpu: &Gpu, z: &Tensor, q: &Tensor) -> Result<DiagnosticTensors> {
        DiagnosticConstants::default().diagnostics(gpu, z, q)
    }

    pub fn tensors(&self) -> [&Tensor; Self::PARTS] {
        [&self.gram, &self.entropy, &self.mass]
    }

    /// The values, from the words of `tensors` read back.
    pub fn finish_words(&self, words: &[Vec<u32>]) -> Diagnostics {
        let parts: Vec<&[u32]> = words.iter().map(Vec::as_slice).collect();
        Diagnostics::from_words(self.gram.shape[0], &parts)
    }
}

/// The diagnostics' constant inputs, uploaded at first use and again only when a shape
/// changes: the centring matrix H = I − 11ᵀ/R (R, R) and the entropy's row weights 1/R_q (R_q).
#[derive(Default)]
pub struct DiagnosticConstants {
    centring: std::cell::RefCell<Option<Tensor>>,
    weights: std::cell::RefCell<Option<Tensor>>,
}

impl DiagnosticConstants {
    /// Diagnostics of teacher [CLS] rows z (R, W) and targets q (R_q, P′).
    pub fn diagnostics(&self, gpu: &Gpu, z: &Tensor, q: &Tensor) -> Result<DiagnosticTensors> {
        if z.shape.len() != 2 || q.shape.len() != 2 || z.shape[0] == 0 || q.shape[0] == 0 {
            let detail = format!("z {:?} and targets {:?}: want (R, W), (R_q, P')", z.shape, q.shape);
            return Err(SopError::shape("diagnostics", detail));
        }
        let (r, w, rq) = (z.shape[0], z.shape[1], q.shape[0]);
        // Zc = H·Z with the centring matrix H = I − 11ᵀ/R (R, R): one product.
        let h = kept(gpu, &self.centring, &[r, r], || {
            (0..r * r).map(|i| f32::from(u8::from(i / r == i % r)) - 1.0 / r as f32).collect()
        })?;
        let zc = Matmul::new(&h, z).run(gpu)?;
        let gram = if r <= w { Matmul::new(&zc, &zc).trans_b() } else { Matmul::new(&zc, &zc).trans_a() }.run(gpu)?;
        // Σ_r (1/R) · −Σ_k q ln q, by the cross-entropy of q with itself (0 ln 0 = 0: the
        // clamped log meets a zero weight).
        let weights = kept(gpu, &self.weights, &[rq], || vec![1.0 / rq as f32; rq])?;
        let entropy = cross_entropy_forward(gpu, q, q, &weights)?;
        Ok(DiagnosticTensors { gram, entropy, mass: sum_rows(gpu, q)? })
    }
}

/// The tensor in `slot` if it has `shape`, else `data()` uploaded and kept there.
fn kept(
    gpu: &Gpu,
    slot: &std::cell::RefCell<Option<Tensor>>,
    shape: &[usize],
    data: impl FnOnce() -> Vec<f32>,
) -> Result<Tensor> {
    let mut slot = slot.borrow_mut();
    match &*slot {
        Some(t) if t.shape == shape => Ok(t.clone()),
        _ => {
            let t = gpu.upload_f32(shape, &data())?;
            *slot = Some(t.clone());
            Ok(t)
        }
    }
}

impl Diagnostics {
    /// The values from the words of `DiagnosticTensors::tensors` (an (n, n) Gram matrix).
    pub fn from_words(n: usize, words: &[&[u32]]) -> Diagnostics {
        let f = |w: &[u32]| -> Vec<f64> { w.iter().map(|&x| f32::from_bits(x) as f64).collect() };
        Diagnostics {
            teacher_cls_erank: effective_rank(&symmetric_eigenvalues(f(words[0]), n)),
            target_entropy: f(words[1])[0],
            prototypes_effective: effective_count(&f(words[2])),
        }
    }
}

/// exp of the entropy of the spectrum p_i = σ_i / Σ σ_j, σ_i = √λ_i from the Gram matrix's
/// eigenvalues λ. Eigenvalues below 1e-6·λ_max count as 0: the f32 Gram matrix carries
/// rounding of ~1e-7·λ_max on its zero eigenvalues, whose square roots (~3e-4·σ_max each)
/// would otherwise raise the rank of a low-rank batch; a true σ below 1e-3·σ_max changes
/// the entropy by less than its share p_i. An all-zero spectrum (identical rows) gets 1.
pub fn effective_rank(eigenvalues: &[f64]) -> f64 {
    let top = eigenvalues.iter().fold(0.0f64, |m, &l| m.max(l));
    let s: Vec<f64> = eigenvalues.iter().map(|&l| if l > 1e-6 * top { l.sqrt() } else { 0.0 }).collect();
    effective_count(&s)
}

/// exp(−Σ p ln p) of the distribution proportional to the non-negative `mass` (1 when it
/// is all zero).
pub fn effective_count(mass: &[f64]) -> f64 {
    let total: f64 = mass.iter().map(|m| m.max(0.0)).sum();
    if total <= 0.0 {
        return 1.0;
    }
    let h: f64 = mass.iter().map(|m| m.max(0.0) / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    h.exp()
}

/// Eigenvalues of a symmetric n×n matrix (row-major; the upper and lower triangles are
/// averaged first): Householder reduction to tridiagonal form, then the implicit QL
/// iteration with Wilkinson-style shifts (Numerical Recipes' tred2 and tqli, eigenvalues
/// only). About 2n³ flops: a few milliseconds for n = 128 (cyclic Jacobi took 88 ms).
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n, "symmetric_eigenvalues: {} entries for {n}x{n}", a.len());
    for i in 0..n {
        for j in i + 1..n {
            let m = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = m;
            a[j * n + i] = m;
        }
    }
    let (mut d, mut e) = tridiagonalize(a, n);
    tridiagonal_ql(&mut d, &mut e);
    d
}

/// Householder: for each column k, the reflection H = I − 2vvᵀ (‖v‖ = 1) that zeroes
/// column k below row k + 1 is applied to the trailing block, A ← H·A·H, as
/// A ← A − 2v·qᵀ − 2q·vᵀ with p = A·v, q = p − (vᵀp)·v. Returns the diagonal d (n) and the
/// off-diagonal e (n; e[i] couples rows i and i + 1, e[n − 1] = 0).
fn tridiagonalize(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut e = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        let m = n - k - 1; // trailing block rows k+1..n
        let x: Vec<f64> = (k + 1..n).map(|i| a[i * n + k]).collect();
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        let mut v = x;
        v[0] -= alpha;
        let vn = v.iter().map(|t| t * t).sum::<f64>().sqrt();
        v.iter_mut().for_each(|t| *t /= vn);
        let at = |i: usize, j: usize| (k + 1 + i) * n + k + 1 + j;
        let p: Vec<f64> = (0..m).map(|i| (0..m).map(|j| a[at(i, j)] * v[j]).sum()).collect();
        let kk: f64 = v.iter().zip(&p).map(|(x, y)| x * y).sum();
        let q: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - kk * vi).collect();
        for i in 0..m {
            for j in 0..m {
                a[at(i, j)] -= 2.0 * (v[i] * q[j] + q[i] * v[j]);
            }
        }
        e[k] = alpha;
        for i in k + 1..n {
            a[i * n + k] = 0.0;
            a[k * n + i] = 0.0;
        }
    }
    if n >= 2 {
        e[n - 2] = a[(n - 1) * n + n - 2];
    }
    ((0..n).map(|i| a[i * n + i]).collect(), e)
}

/// Eigenvalues of the symmetric tridiagonal matrix (d, e) into d, by implicit QL sweeps on
/// each unreduced block (at most 60 per eigenvalue; converges in 2–3).
fn tridiagonal_ql(d: &mut [f64], e: &mut [f64]) {
    let n = d.len();
    for l in 0..n {
        for _iter in 0..60 {
            let mut m = l;
            while m + 1 < n && e[m].abs() > f64::EPSILON * (d[m].abs() + d[m + 1].abs()) {
                m += 1;
            }
            if m == l {
                break;
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + if g >= 0.0 { r } else { -r });
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
}
