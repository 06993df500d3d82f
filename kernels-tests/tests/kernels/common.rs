//! Shared test helpers: the GPU (or a loud failure with the install hint), fresh random
//! inputs, poisoned outputs and tolerance checks that print the worst element.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use sop::gpu::Gpu;
use std::path::PathBuf;

/// The adapter the tests run on. No adapter is a failure, never a silent pass.
pub fn gpu() -> Gpu {
    match Gpu::new(None) {
        Ok(g) => g,
        Err(e) => panic!("kernel tests need a GPU adapter: {e}"),
    }
}

/// A fresh RNG per run; the seed is printed so a failure can be replayed with SOP_TEST_SEED.
pub fn rng() -> rand::rngs::StdRng {
    let seed =
        std::env::var("SOP_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("SOP_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn randn(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Assert |got - want| <= atol + rtol·|want| elementwise, reporting the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        assert!(g.is_finite(), "{what}[{i}] = {g} is not finite (poison left in the output?), want {w}");
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!("{what}: element {i} is {} but the reference says {} (atol {atol}, rtol {rtol})", got[i], want[i]);
    }
}

/// Same as `assert_close` for f64 pairs (CPU backward vs finite differences).
pub fn assert_close_f64(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}[{i}]: {g} vs finite difference {w}");
    }
}

/// Fill pool buffers of these shapes with NaN and release them: the next allocations of
/// the same sizes (the op's outputs) start poisoned, so an unwritten element fails.
pub fn poison_pool(gpu: &Gpu, shapes: &[&[usize]]) {
    let held: Vec<_> = shapes
        .iter()
        .map(|s| {
            let t = gpu.empty(s, sop::gpu::DType::F32).unwrap();
            gpu.fill_f32(&t, f32::NAN).unwrap();
            t
        })
        .collect();
    drop(held);
}

/// A committed fixture in kernels-tests/fixtures/ (made by the scripts/make-*-fixtures scripts).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels-tests").join("fixtures").join(name)
}
