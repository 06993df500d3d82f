//! adamw_step against the f64 reference over 3 consecutive steps with fresh gradients.
//!
//! Tolerances: the GPU keeps param, m and v in f32, the reference in f64. Per step m and v
//! pick up ~2 roundings (relative 1.2e-7) and param ~3 (|param| ≤ 2: ~4e-7 absolute); the
//! update lr·m̂/(sqrt(v̂) + eps) is ≤ ~3·lr in size with relative error ~5e-7. Over 3 steps:
//! param atol 1e-6; v (a sum of positive terms) rtol 1e-6; m rtol 1e-6 plus atol 2e-7,
//! because β1·m and (1 − β1)·g may cancel: its error is relative to the terms (≤ 1), not to
//! the result. A wrong bias correction, decay or grad scale moves param by ≥ 1e-4 with these
//! hyper-parameters.

use crate::common::*;
use rand::Rng;
use sop::gpu::DType;
use sop::ops::adamw::{adamw_step, AdamWStep};

fn run(n: usize, hp0: AdamWStep, zero_state: bool) {
    let gpu = gpu();
    let mut rng = rng();
    let param = randn(&mut rng, n);
    let (m, v): (Vec<f32>, Vec<f32>) = if zero_state {
        (vec![0.0; n], vec![0.0; n])
    } else {
        (randn(&mut rng, n), (0..n).map(|_| rng.random_range(0.0..0.5)).collect())
    };
    let (gp, gm, gv) =
        (gpu.upload_f32(&[n], &param).unwrap(), gpu.upload_f32(&[n], &m).unwrap(), gpu.upload_f32(&[n], &v).unwrap());
    let (mut p64, mut m64, mut v64) = (f64s(&param), f64s(&m), f64s(&v));
    for step in 1..=3 {
        let grad = randn(&mut rng, n);
        let gg = gpu.upload_f32(&[n], &grad).unwrap();
        let hp = AdamWStep { step, ..hp0 };
        adamw_step(&gpu, &gp, &gg, &gm, &gv, &hp).unwrap();
        sop_reference::adamw::adamw_step(
            &mut p64,
            &f64s(&grad),
            &mut m64,
            &mut v64,
            hp.lr as f64,
            hp.beta1 as f64,
            hp.beta2 as f64,
            hp.eps as f64,
            hp.weight_decay as f64,
            step,
            hp.grad_scale as f64,
        );
        let what = format!("n {n} step {step} {hp:?}");
        assert_close(&format!("param, {what}"), &gpu.read_f32(&gp).unwrap(), &p64, 1e-6, 0.0);
        assert_close(&format!("m, {what}"), &gpu.read_f32(&gm).unwrap(), &m64, 2e-7, 1e-6);
        assert_close(&format!("v, {what}"), &gpu.read_f32(&gv).unwrap(), &v64, 1e-12, 1e-6);
    }
}

const HP: AdamWStep =
    AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.04, step: 1, grad_scale: 0.7 };

#[test]
fn adamw_step_matches_reference_over_three_steps() {
    for n in [1, 3, 63, 65, 257, 1000] {
        run(n, HP, true);
    }
    run(257, HP, false);
    run(
        65,
        AdamWStep { lr: 3e-3, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.4, step: 1, grad_scale: 1.0 },
        false,
    );
}

#[test]
fn adamw_rejects_bad_arguments() {
    let gpu = gpu();
    let t = |n| gpu.zeros(&[n], DType::F32).unwrap();
    let (p, g, m, v) = (t(4), t(4), t(4), t(4));
    assert!(adamw_step(&gpu, &p, &g, &m, &v, &AdamWStep { step: 0, ..HP }).unwrap_err().to_string().contains("step"));
    assert!(adamw_step(&gpu, &p, &g, &m, &v, &AdamWStep { beta1: 1.0, ..HP }).is_err());
    assert!(adamw_step(&gpu, &p, &t(5), &m, &v, &HP).unwrap_err().to_string().contains("one shape"));
    assert!(adamw_step(&gpu, &p, &g, &m, &m, &HP).unwrap_err().to_string().contains("distinct"));
}
