//! ema_update against the f64 reference over 3 consecutive steps with fresh students.
//!
//! Tolerance: each step is two products and a sum of values in [-1, 1] (~3 roundings,
//! ≤ 2e-7); the GPU's teacher is stored in f32 between steps: atol 1e-6 after 3 steps. A
//! swapped or mis-scaled momentum moves the teacher by ≥ (1 − m)·|s − t| ~ 1e-3.

use crate::common::*;
use sop::gpu::DType;
use sop::ops::ema::ema_update;

#[test]
fn ema_update_matches_reference_over_three_steps() {
    let gpu = gpu();
    let mut rng = rng();
    for n in [1, 3, 63, 65, 257, 1000] {
        let teacher = randn(&mut rng, n);
        let gt = gpu.upload_f32(&[n], &teacher).unwrap();
        let mut t64 = f64s(&teacher);
        for momentum in [0.996f32, 0.9, 0.5] {
            let student = randn(&mut rng, n);
            ema_update(&gpu, &gt, &gpu.upload_f32(&[n], &student).unwrap(), momentum).unwrap();
            sop_reference::ema::ema_update(&mut t64, &f64s(&student), momentum as f64);
            assert_close(&format!("teacher n {n} momentum {momentum}"), &gpu.read_f32(&gt).unwrap(), &t64, 1e-6, 0.0);
        }
    }
}

#[test]
fn ema_update_end_points_are_exact() {
    let gpu = gpu();
    let mut rng = rng();
    let (teacher, student) = (randn(&mut rng, 70), randn(&mut rng, 70));
    let gt = gpu.upload_f32(&[70], &teacher).unwrap();
    let gs = gpu.upload_f32(&[70], &student).unwrap();
    ema_update(&gpu, &gt, &gs, 1.0).unwrap(); // frozen teacher
    assert_eq!(gpu.read_f32(&gt).unwrap(), teacher);
    ema_update(&gpu, &gt, &gs, 0.0).unwrap(); // copy of the student
    assert_eq!(gpu.read_f32(&gt).unwrap(), student);
}

#[test]
fn ema_rejects_bad_arguments() {
    let gpu = gpu();
    let t = gpu.zeros(&[4], DType::F32).unwrap();
    let s = gpu.zeros(&[4], DType::F32).unwrap();
    let s_bad = gpu.zeros(&[5], DType::F32).unwrap();
    assert!(ema_update(&gpu, &t, &s, 1.5).unwrap_err().to_string().contains("momentum"));
    assert!(ema_update(&gpu, &t, &s_bad, 0.9).is_err());
    assert!(ema_update(&gpu, &t, &t, 0.9).is_err());
}
