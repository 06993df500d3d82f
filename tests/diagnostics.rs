//! The per-step diagnostics (`sop::diagnostics`) against plain CPU computations: the host
//! eigenvalue routine on a matrix built from known eigenvalues, the effective rank of rows built
//! from known singular values (plus a mean row that the centring must remove, through both
//! Gram branches), the targets' mean entropy and effective prototype count, and the count
//! of prototypes that are some teacher row's arg-max.
//!
//! Tolerances: the device works in f32 on values of order 1 (Gram entries are sums of ≤ 16
//! products), so the spectrum and the entropies agree to ~1e-5 relative; 1e-3 leaves room
//! (the effective rank, 1e-4) and still fails on a missing centring or a squared spectrum (errors of order 1e-1).

use rand::{Rng, SeedableRng};
use sop::sop::diagnostics::{effective_count, symmetric_eigenvalues, DiagnosticConstants, DiagnosticTensors};

fn gpu() -> sop::Gpu {
    sop::Gpu::new(None).unwrap_or_else(|e| panic!("diagnostics tests need a GPU adapter: {e}"))
}

fn rng() -> rand::rngs::StdRng {
    let seed = rand::rng().random::<u64>();
    eprintln!("seed {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// k orthonormal columns of length n (column-major, k vectors), each of zero mean when
/// `zero_mean` (Gram–Schmidt keeps the mean at zero).
fn orthonormal(rng: &mut impl Rng, n: usize, k: usize, zero_mean: bool) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::new();
    while out.len() < k {
        let mut v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        if zero_mean {
            let m = v.iter().sum::<f64>() / n as f64;
            v.iter_mut().for_each(|x| *x -= m);
        }
        for u in &out {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let nrm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if nrm > 1e-6 {
            out.push(v.iter().map(|x| x / nrm).collect());
        }
    }
    out
}

#[test]
fn eigenvalues_of_a_matrix_built_from_known_ones() {
    let mut rng = rng();
    for n in [1, 2, 7, 64] {
        let q = orthonormal(&mut rng, n, n, false);
        let lambda: Vec<f64> = (0..n).map(|i| if i % 3 == 0 { 0.0 } else { rng.random_range(0.0..5.0) }).collect();
        let a: Vec<f64> = (0..n * n).map(|ij| (0..n).map(|k| q[k][ij / n] * lambda[k] * q[k][ij % n]).sum()).collect();
        let mut got = symmetric_eigenvalues(a, n);
        let mut want = lambda.clone();
        got.sort_by(f64::total_cmp);
        want.sort_by(f64::total_cmp);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9 * (1.0 + w.abs()), "n {n}: eigenvalue {g} vs {w}");
        }
    }
}

fn entropy(p: &[f64]) -> f64 {
    p.iter().filter(|&&x| x > 0.0).map(|x| -x * x.ln()).sum()
}

/// Rows Z (R, W) = U·diag(σ)·Vᵀ + 1·μᵀ with zero-mean orthonormal U: after centring, the
/// singular values are exactly σ. `c`: the constants, kept between calls as in training.
fn check_erank(gpu: &sop::Gpu, c: &DiagnosticConstants, rng: &mut impl Rng, r: usize, w: usize, sigma: &[f64]) {
    let k = sigma.len();
    let (u, v) = (orthonormal(rng, r, k, true), orthonormal(rng, w, k, false));
    let mu: Vec<f64> = (0..w).map(|_| rng.random_range(-2.0..2.0)).collect();
    let z: Vec<f32> = (0..r * w)
        .map(|ij| (mu[ij % w] + (0..k).map(|c| u[c][ij / w] * sigma[c] * v[c][ij % w]).sum::<f64>()) as f32)
        .collect();
    let p: Vec<f64> = sigma.iter().map(|s| s / sigma.iter().sum::<f64>()).collect();
    let want = entropy(&p).exp();
    // Targets: any valid rows; this test looks at the rank only.
    let q = gpu.upload_f32(&[3, 2], &[0.5, 0.5, 1.0, 0.0, 0.25, 0.75]).unwrap();
    let d = c.diagnostics(gpu, &gpu.upload_f32(&[r, w], &z).unwrap(), &q).unwrap();
    let words = gpu.read_words(&d.tensors()).unwrap();
    let got = d.finish_words(&words).teacher_cls_erank;
    eprintln!("R {r} W {w} sigma {sigma:?}: erank {got} vs {want}");
    assert!((got - want).abs() < 1e-4 * want, "R {r} W {w}: erank {got}, want {want}");
}

#[test]
fn effective_rank_matches_known_singular_values() {
    let gpu = gpu();
    let mut rng = rng();
    // One set of constants throughout: each new R must get its own centring matrix, and a
    // repeated R reuses the kept one.
    let c = DiagnosticConstants::default();
    check_erank(&gpu, &c, &mut rng, 9, 16, &[3.0, 1.0, 0.5, 0.25]); // R ≤ W: the (R, R) Gram
    check_erank(&gpu, &c, &mut rng, 9, 16, &[1.0, 1.0, 0.5]); // R ≤ W again, kept constants
    check_erank(&gpu, &c, &mut rng, 20, 6, &[1.0, 1.0, 1.0, 1.0, 1.0]); // R > W: the (W, W) Gram
    check_erank(&gpu, &c, &mut rng, 12, 5, &[2.0]); // rows on one line: rank 1
}

#[test]
fn target_entropy_and_effective_prototypes_match_the_cpu() {
    let gpu = gpu();
    let mut rng = rng();
    let (r, p) = (10, 13);
    let mut q = vec![0f64; r * p];
    for row in q.chunks_mut(p) {
        let e: Vec<f64> = (0..p).map(|_| (5.0 * rng.random_range(-1.0..1.0f64)).exp()).collect();
        let s: f64 = e.iter().sum();
        row.iter_mut().zip(&e).for_each(|(x, y)| *x = y / s);
    }
    q[3 * p..4 * p].iter_mut().enumerate().for_each(|(k, x)| *x = (k == 4) as u8 as f64); // a one-hot row
    let mean_entropy = q.chunks(p).map(entropy).sum::<f64>() / r as f64;
    let m: Vec<f64> = (0..p).map(|k| (0..r).map(|i| q[i * p + k]).sum::<f64>() / r as f64).collect();
    let qf: Vec<f32> = q.iter().map(|&x| x as f32).collect();
    let z = gpu.upload_f32(&[4, 3], &[1.0; 12]).unwrap();
    let d = DiagnosticTensors::new(&gpu, &z, &gpu.upload_f32(&[r, p], &qf).unwrap()).unwrap();
    let got = d.finish_words(&gpu.read_words(&d.tensors()).unwrap());
    assert!((got.target_entropy - mean_entropy).abs() < 1e-3 * mean_entropy, "{got:?} vs {mean_entropy}");
    let want = entropy(&m).exp();
    assert!((got.prototypes_effective - want).abs() < 1e-3 * want, "{got:?} vs {want}");
    assert_eq!(got.teacher_cls_erank, 1.0, "identical rows have rank 1");
    // The host helper on its own: k equal masses give k, one mass gives 1.
    assert!((effective_count(&[2.0, 2.0, 2.0, 0.0]) - 3.0).abs() < 1e-12);
    assert_eq!(effective_count(&[0.0, 5.0]), 1.0);
}

/// `prototypes_used`: the distinct arg-maxes of the teacher rows, through the ibot objective
/// whose targets follow the teacher logits directly (zero centres).
#[test]
fn prototypes_used_counts_the_teacher_rows_arg_maxes() {
    use sop::sop::ibot::{ibot_objective_tensors, Centers, IbotStep};
    use sop::sop::objective::Embeddings;
    let gpu = gpu();
    let (b, k, n) = (3, 9, 2);
    // Teacher rows (view-major) peak at 2, 2, 5 | 7, 2, 5: three distinct prototypes.
    let peaks = [2, 2, 5, 7, 2, 5];
    let t_cls: Vec<f32> = (0..2 * b * k).map(|i| if i % k == peaks[i / k] { 1.0 } else { 0.0 }).collect();
    let up = |shape: &[usize], v: &[f32]| gpu.upload_f32(shape, v).unwrap();
    let zeros = |shape: &[usize]| up(shape, &vec![0.0; shape.iter().product()]);
    let (s_cls, teacher_cls) = (zeros(&[2 * b, k]), up(&[2 * b, k], &t_cls));
    let (s_patch, t_patch) = (zeros(&[2 * b, n, k]), zeros(&[2 * b, n, k]));
    let masks = vec![1u8; 2 * b * n];
    let e = Embeddings {
        student_cls: &s_cls,
        teacher_cls: &teacher_cls,
        student_patch: &s_patch,
        teacher_patch: &t_patch,
        masks: &masks,
        batch: b,
        local_views: 0,
    };
    let hp = IbotStep { student_temp: 0.1, teacher_temp: 0.04, teacher_patch_temp: 0.07, center_momentum: 0.9 };
    let out = ibot_objective_tensors(&gpu, &hp, &e, &Centers::zeros(&gpu, k).unwrap()).unwrap().finish(&gpu).unwrap();
    assert_eq!(out.prototypes_used, 3);
}
