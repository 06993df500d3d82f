//! The `ibot` objective (`sop::ibot`) and its weight-normalised prototype layer against the
//! f64 reference (`sop_reference::ibot_objective`), on awkward shapes (K not a multiple of
//! 4 or 64, local views, an image with no masked patch) with poisoned output buffers; the
//! reference backwards against central finite differences.
//!
//! PyTorch is not installed on the development machine, so unlike the SOP objective there
//! is no fixture from an independent PyTorch implementation: the reference follows the
//! authors' `iBOTLoss` line by line (its header gives the formulas).
//!
//! Tolerances. Logits are cosines (|s| ≤ 1, as the prototype layer gives), so the student
//! exponents are at most 2/τ_s = 20 and the teacher's (t − c)/τ_t at most 2/0.04 = 50: f32
//! softmax rounding is about u·(50 + K) relative (u = 2⁻²⁴), below 1e-5 for K ≤ 130. Losses
//! get 5e-5 relative. Gradients (w/τ_s)(p·Σq − q) pass through dp = −w·q/p and the softmax
//! backward, so they get 2e-4 of the largest entry plus 1e-3 relative. Centres are one f32
//! sum and EMA: 1e-6 absolute. A wrong weight, pairing, temperature or centre gives errors
//! of order 1e-1.

use crate::common::*;
use rand::Rng;
use sop::gpu::Gpu;
use sop::model::vit::Weights;
use sop::sop::ibot::{ibot_objective_tensors, prototype_logits, Centers, IbotStep, WEIGHT_V};
use sop::sop::objective::Embeddings;
use sop::tape::Tape;
use sop_reference::ibot_objective::{
    ibot_objective, prototype_logits as ref_logits, prototype_logits_backward, IbotInputs,
};
use sop_reference::{dot, finite_difference};

fn uniform(rng: &mut impl Rng, n: usize, a: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

fn random_inputs(rng: &mut impl Rng, k: usize, b: usize, l: usize, n: usize) -> IbotInputs {
    let mut masks: Vec<u8> = (0..2 * b * n).map(|_| rng.random_bool(0.4) as u8).collect();
    masks[n..2 * n].iter_mut().for_each(|m| *m = 0); // image 1 of view 0: nothing masked
    masks[0] = 1;
    IbotInputs {
        prototypes: k,
        batch: b,
        local_views: l,
        patches: n,
        student_cls: uniform(rng, (2 + l) * b * k, 1.0),
        teacher_cls: uniform(rng, 2 * b * k, 1.0),
        student_patch: uniform(rng, 2 * b * n * k, 1.0),
        teacher_patch: uniform(rng, 2 * b * n * k, 1.0),
        masks,
        center: uniform(rng, k, 0.3),
        center_patch: uniform(rng, k, 0.3),
        student_temp: 0.1,
        teacher_temp: 0.04,
        teacher_patch_temp: 0.07,
        center_momentum: 0.9,
    }
}

#[test]
fn ibot_reference_backward_matches_finite_differences() {
    let mut rng = rng();
    let x = random_inputs(&mut rng, 7, 2, 1, 3);
    let out = ibot_objective(&x);
    let loss = |x: &IbotInputs| {
        let o = ibot_objective(x);
        o.loss_cls + o.loss_mim
    };
    let fd_cls = finite_difference(&x.student_cls, |v| loss(&IbotInputs { student_cls: v.to_vec(), ..x.clone() }));
    assert_close_f64("d loss / d student_cls", &out.dstudent_cls, &fd_cls, 1e-7, 1e-5);
    let fd_patch =
        finite_difference(&x.student_patch, |v| loss(&IbotInputs { student_patch: v.to_vec(), ..x.clone() }));
    assert_close_f64("d loss / d student_patch", &out.dstudent_patch, &fd_patch, 1e-7, 1e-5);
    // The unmasked image's patches and the loss terms' scale: unmasked rows get no gradient.
    let (k, n) = (x.prototypes, x.patches);
    assert!(out.dstudent_patch[n * k..2 * n * k].iter().all(|&g| g == 0.0));
    assert!(out.loss_cls > 0.0 && out.loss_mim > 0.0);
}

#[test]
fn prototype_layer_reference_backward_matches_finite_differences() {
    let mut rng = rng();
    let (r, w, k) = (3, 5, 4);
    let z = uniform(&mut rng, r * w, 1.0);
    let v = uniform(&mut rng, k * w, 1.0);
    let dy = uniform(&mut rng, r * k, 1.0);
    let (dz, dv) = prototype_logits_backward(&dy, &z, &v, r, w, k);
    let fz = finite_difference(&z, |z| dot(&ref_logits(z, &v, r, w, k), &dy));
    let fv = finite_difference(&v, |v| dot(&ref_logits(&z, v, r, w, k), &dy));
    assert_close_f64("dz", &dz, &fz, 1e-8, 1e-6);
    assert_close_f64("dv", &dv, &fv, 1e-8, 1e-6);
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

fn rel(got: f32, want: f64) -> f64 {
    (got as f64 - want).abs() / want.abs()
}

fn check_gpu(gpu: &Gpu, x: &IbotInputs) {
    let (k, b, l, n) = (x.prototypes, x.batch, x.local_views, x.patches);
    let what = format!("ibot K {k} B {b} L {l} N {n}");
    let up = |shape: &[usize], v: &[f64]| gpu.upload_f32(shape, &f32s(v)).unwrap();
    let student_cls = up(&[(2 + l) * b, k], &x.student_cls);
    let teacher_cls = up(&[2 * b, k], &x.teacher_cls);
    let student_patch = up(&[2 * b, n, k], &x.student_patch);
    let teacher_patch = up(&[2 * b, n, k], &x.teacher_patch);
    let centers = Centers { cls: up(&[k], &x.center), patch: up(&[k], &x.center_patch) };
    let e = Embeddings {
        student_cls: &student_cls,
        teacher_cls: &teacher_cls,
        student_patch: &student_patch,
        teacher_patch: &teacher_patch,
        masks: &x.masks,
        batch: b,
        local_views: l,
    };
    let hp = IbotStep {
        student_temp: x.student_temp as f32,
        teacher_temp: x.teacher_temp as f32,
        teacher_patch_temp: x.teacher_patch_temp as f32,
        center_momentum: x.center_momentum as f32,
    };
    poison_pool(gpu, &[&[(2 + l) * b, k], &[2 * b * n, k], &[2 * b, n, k], &[k], &[1]]);
    let out = ibot_objective_tensors(gpu, &hp, &e, &centers).unwrap().finish(gpu).unwrap();
    let want = ibot_objective(x);
    eprintln!("{what}: loss_cls {} vs {}, loss_mim {} vs {}", out.loss_cls, want.loss_cls, out.loss_mim, want.loss_mim);
    assert!(rel(out.loss_cls, want.loss_cls) < 5e-5, "{what}: loss_cls {} vs {}", out.loss_cls, want.loss_cls);
    assert!(rel(out.loss_mim, want.loss_mim) < 5e-5, "{what}: loss_mim {} vs {}", out.loss_mim, want.loss_mim);
    let grad_close = |name: &str, got: &sop::Tensor, want: &[f64]| {
        let max = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert_close(&format!("{what} {name}"), &gpu.read_f32(got).unwrap(), want, 2e-4 * max, 1e-3);
    };
    grad_close("dstudent_cls", &out.dstudent_cls, &want.dstudent_cls);
    grad_close("dstudent_patch", &out.dstudent_patch, &want.dstudent_patch);
    assert_close(&format!("{what} center"), &gpu.read_f32(&centers.cls).unwrap(), &want.center, 1e-6, 0.0);
    assert_close(&format!("{what} center2"), &gpu.read_f32(&centers.patch).unwrap(), &want.center_patch, 1e-6, 0.0);
}

#[test]
fn gpu_ibot_objective_matches_the_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for (k, b, l, n) in [(37, 3, 1, 5), (130, 2, 0, 4), (5, 1, 2, 7)] {
        let x = random_inputs(&mut rng, k, b, l, n);
        check_gpu(&gpu, &x);
    }
}

/// The prototype layer as the trainer builds it on the tape (l2norm of v's rows, then a
/// linear): logits and both gradients against the reference.
#[test]
fn gpu_prototype_layer_matches_the_reference() {
    let gpu = gpu();
    let mut rng = rng();
    for (r, w, k) in [(5, 9, 37), (66, 16, 130)] {
        let z: Vec<f32> = randn(&mut rng, r * w);
        let v: Vec<f32> = randn(&mut rng, k * w).iter().map(|x| 0.06 * x).collect();
        let dy: Vec<f32> = randn(&mut rng, r * k);
        let weights = Weights::upload(&gpu, &[(WEIGHT_V.to_string(), vec![k, w], v.clone())]).unwrap();
        poison_pool(&gpu, &[&[r, k], &[k, w], &[r, w]]);
        let mut tape = Tape::new(&gpu);
        let p = weights.leaves(&mut tape, true);
        let zv = tape.leaf(gpu.upload_f32(&[r, w], &z).unwrap(), true);
        let y = prototype_logits(&mut tape, &p, &zv).unwrap();
        let what = format!("prototype layer R {r} W {w} K {k}");
        let (z64, v64) = (f64s(&z), f64s(&v));
        // Cosines of width ≤ 16 summed in f32: 1e-5 absolute.
        assert_close(
            &format!("{what} logits"),
            &gpu.read_f32(&y.value).unwrap(),
            &ref_logits(&z64, &v64, r, w, k),
            1e-5,
            1e-5,
        );
        let mut g = tape.backward(vec![(&y, gpu.upload_f32(&[r, k], &dy).unwrap())]).unwrap();
        let (wdz, wdv) = prototype_logits_backward(&f64s(&dy), &z64, &v64, r, w, k);
        let gz = g.take(&zv).unwrap();
        let gv = g.take(&p.vars[0]).unwrap();
        // Sums of up to K (dz) or R (dv) products; dv is divided by ‖v‖ ≈ 0.2: 1e-4 absolute.
        assert_close(&format!("{what} dz"), &gpu.read_f32(&gz).unwrap(), &wdz, 1e-4, 1e-4);
        assert_close(&format!("{what} dv"), &gpu.read_f32(&gv).unwrap(), &wdv, 1e-4, 1e-4);
    }
}
