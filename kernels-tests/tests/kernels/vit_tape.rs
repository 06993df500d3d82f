//! The whole ViT + head on the GPU tape against the f64 reference (`sop_reference::vit`):
//! forward values, the gradient of a scalar of the output with respect to every parameter
//! and the input (against central finite differences of the reference), and flat memory
//! across training-shaped steps.
//!
//! Tolerances: the forward runs ~10 f32 layers of width ≤ 48, so values agree to ~1e-5;
//! 1e-4 absolute leaves room without hiding a wrong formula (those give O(0.1) errors).
//! Gradients: f32 backward vs f64 finite differences (h = 1e-6·max(|x|,1)); we allow 2e-3 of
//! the tensor's largest gradient plus 2% relative.

use crate::common::*;
use rand::Rng;
use sop::model::config::VitConfig;
use sop::model::params::param_specs;
use sop::model::vit::{ForwardOptions, Vit, Weights};
use sop::tape::Tape;
use sop_reference::vit::{vit_forward, Params};

fn tiny() -> VitConfig {
    VitConfig { drop_path: 0.0, ..VitConfig::micro() }
}

/// Random values for every parameter (LayerNorm weights around 1).
fn random_params(cfg: &VitConfig, rng: &mut impl Rng) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    param_specs(cfg)
        .into_iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let is_ln_weight = s.name.ends_with("weight") && s.shape.len() == 1;
            let v =
                (0..n)
                    .map(|_| {
                        if is_ln_weight {
                            1.0 + rng.random_range(-0.3f32..0.3)
                        } else {
                            rng.random_range(-0.5f32..0.5)
                        }
                    })
                    .collect();
            (s.name, s.shape, v)
        })
        .collect()
}

fn as_reference(host: &[(String, Vec<usize>, Vec<f32>)]) -> Params {
    host.iter().map(|(n, s, v)| (n.clone(), (s.clone(), f64s(v)))).collect()
}

/// Head outputs (B, T, O) on the GPU (optionally with a mask), and the final tokens.
fn gpu_forward(
    gpu: &sop::Gpu,
    vit: &Vit,
    w: &Weights,
    x: &[f32],
    b: usize,
    s: usize,
    mask: Option<&[u32]>,
) -> (Vec<f32>, Vec<f32>) {
    let mut tape = Tape::no_grad(gpu);
    let p = w.leaves(&mut tape, false);
    let xv = tape.constant(gpu.upload_f32(&[b, 3, s, s], x).unwrap());
    let n = (s / vit.cfg.patch_size).pow(2);
    let m = mask.map(|m| gpu.upload_u32(&[b, n], m).unwrap());
    let tokens = vit.backbone(&mut tape, &p, &xv, &ForwardOptions { mask: m.as_ref(), drop_path: None }).unwrap();
    let head = vit.head(&mut tape, &p, &tokens).unwrap();
    (gpu.read_f32(&head.value).unwrap(), gpu.read_f32(&tokens.value).unwrap())
}

#[test]
fn vit_forward_matches_reference_with_mask_and_interpolated_positions() {
    let gpu = gpu();
    let mut rng = rng();
    let cfg = tiny();
    let host = random_params(&cfg, &mut rng);
    let w = Weights::upload(&gpu, &host).unwrap();
    let vit = Vit::new(cfg.clone());
    let params = as_reference(&host);
    // Native grid (2x2) with a mask, then a 12-px input (3x3 grid: bicubic positions).
    for &(b, s, masked) in &[(2usize, 8usize, true), (3, 12, false), (1, 8, false)] {
        let x = randn(&mut rng, b * 3 * s * s);
        let n = (s / cfg.patch_size).pow(2);
        let mask: Vec<u32> = (0..b * n).map(|i| (masked && i % 3 == 1) as u32).collect();
        let mask_b: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
        let (head, tokens) = gpu_forward(&gpu, &vit, &w, &x, b, s, masked.then_some(&mask[..]));
        let r = vit_forward(&params, cfg.heads, &f64s(&x), b, s, masked.then_some(&mask_b[..]));
        assert_close(&format!("tokens b {b} s {s}"), &tokens, &r.tokens, 1e-4, 1e-4);
        assert_close(&format!("head b {b} s {s}"), &head, &r.head, 1e-4, 1e-4);
    }
}

#[test]
fn vit_gradients_match_finite_differences() {
    let gpu = gpu();
    let mut rng = rng();
    let cfg = tiny();
    let host = random_params(&cfg, &mut rng);
    let (b, s) = (2usize, 8usize);
    let n = (s / cfg.patch_size).pow(2);
    let x = randn(&mut rng, b * 3 * s * s);
    let mask: Vec<u32> = (0..b * n).map(|i| (i % 4 == 2) as u32).collect();
    let mask_b: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
    let t = 1 + n;
    let c = randn(&mut rng, b * t * cfg.head_bottleneck); // L = Σ c ⊙ head

    // GPU: tape backward seeded with c.
    let w = Weights::upload(&gpu, &host).unwrap();
    let vit = Vit::new(cfg.clone());
    let mut tape = Tape::new(&gpu);
    let p = w.leaves(&mut tape, true);
    let xv = tape.leaf(gpu.upload_f32(&[b, 3, s, s], &x).unwrap(), true);
    let m = gpu.upload_u32(&[b, n], &mask).unwrap();
    let tokens = vit.backbone(&mut tape, &p, &xv, &ForwardOptions { mask: Some(&m), drop_path: None }).unwrap();
    let head = vit.head(&mut tape, &p, &tokens).unwrap();
    let seed = gpu.upload_f32(&head.value.shape, &c).unwrap();
    let mut grads = tape.backward(vec![(&head, seed)]).unwrap();
    assert!(tape.is_empty(), "backward leaves no records behind");

    let params = as_reference(&host);
    let c64 = f64s(&c);
    let loss = |params: &Params, x: &[f64]| {
        sop_reference::dot(&vit_forward(params, cfg.heads, x, b, s, Some(&mask_b)).head, &c64)
    };
    let check = |name: &str, got: Vec<f32>, fd: Vec<f64>| {
        let scale = fd.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert_close(&format!("d{name}"), &got, &fd, 2e-3 * scale + 1e-7, 2e-2);
    };
    for (i, (name, _, _)) in host.iter().enumerate() {
        let got = gpu.read_f32(&grads.take(&p.vars[i]).unwrap_or_else(|| panic!("no gradient for {name}"))).unwrap();
        let base = params[name].1.clone();
        let fd = sop_reference::finite_difference(&base, |v| {
            let mut q = params.clone();
            q.get_mut(name).unwrap().1 = v.to_vec();
            loss(&q, &f64s(&x))
        });
        check(name, got, fd);
    }
    let dx = gpu.read_f32(&grads.take(&xv).expect("input gradient")).unwrap();
    check("x", dx, sop_reference::finite_difference(&f64s(&x), |v| loss(&params, v)));
}

#[test]
fn training_shaped_steps_allocate_no_new_buffers_after_the_first() {
    let gpu = gpu();
    let mut rng = rng();
    let cfg = VitConfig { drop_path: 0.1, ..tiny() };
    let host = random_params(&cfg, &mut rng);
    let w = Weights::upload(&gpu, &host).unwrap();
    let vit = Vit::new(cfg.clone());
    let (b, s) = (4usize, 8usize);
    let n = (s / cfg.patch_size).pow(2);
    let x = gpu.upload_f32(&[b, 3, s, s], &randn(&mut rng, b * 3 * s * s)).unwrap();
    let mask = gpu.upload_u32(&[b, n], &(0..b * n).map(|i| (i % 2) as u32).collect::<Vec<_>>()).unwrap();
    let dp: Vec<[sop::Tensor; 2]> = (0..cfg.depth)
        .map(|_| [gpu.upload_f32(&[b], &[1.1, 0.0, 1.1, 1.1]).unwrap(), gpu.upload_f32(&[b], &[1.1; 4]).unwrap()])
        .collect();
    let seed =
        gpu.upload_f32(&[b, 1 + n, cfg.head_bottleneck], &randn(&mut rng, b * (1 + n) * cfg.head_bottleneck)).unwrap();
    let mut counts = Vec::new();
    for _ in 0..10 {
        let mut tape = Tape::new(&gpu);
        let p = w.leaves(&mut tape, true);
        let xv = tape.constant(x.clone());
        let tokens =
            vit.backbone(&mut tape, &p, &xv, &ForwardOptions { mask: Some(&mask), drop_path: Some(&dp) }).unwrap();
        let head = vit.head(&mut tape, &p, &tokens).unwrap();
        let grads = tape.backward(vec![(&head, seed.clone())]).unwrap();
        drop(grads);
        gpu.sync().unwrap();
        counts.push(gpu.buffers_created());
    }
    assert!(counts[1] > 0);
    assert_eq!(counts[1], counts[9], "buffers created after each step: {counts:?}");
}
