//! The kernels of a training step without readback, against the f64 references and against
//! the one-tensor kernels they replace:
//! - flat views (`gpu::flat`): upload, read, copy and kernels at non-zero offsets;
//! - `SquaresPlan` (`sum_segments`): the bits of `sum_squares` on each tensor alone (so the
//!   per-tensor tolerance is that of reduce.rs: exact on integer data), on awkward sizes
//!   (1, 3, 63, 65, 257, a 3-stage tensor of 300,001 elements, an empty one);
//! - `clip_scales` against `sop_reference::clip`: relative 1e-6 (f32 sqrt, add and divide,
//!   ~4 roundings of ≤ 6e-8; a wrong rule or norm is off by far more), exactly 1 where no
//!   clipping applies, and the flag from NaN / ±Inf in the checks or the sums only;
//! - `adamw_multi`: bit for bit what `adamw_step` gives each tensor with its factor (the
//!   same arithmetic), tensors without a gradient and slot padding untouched, nothing
//!   written while the flag is set;
//! - `ema_update_unless`, `scatter_rows_ring_unless`: exactly the plain kernels, or nothing;
//! - `finite_check`: +0.0, or a NaN when any element of any of its four inputs is not finite.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, FlatLayout, Gpu, Tensor};
use sop::ops::adamw::{adamw_multi, adamw_step, multi_table, AdamWStep};
use sop::ops::clip::{clip_scales, ClipRule};
use sop::ops::ema::{ema_update, ema_update_unless};
use sop::ops::finite::finite_check;
use sop::ops::gather::{scatter_rows_ring, scatter_rows_ring_unless};
use sop::ops::reduce::{sum_squares, SquaresPlan};
use sop_reference::clip as reference;

const SHAPES: [&[usize]; 7] = [&[1], &[3], &[63], &[5, 13], &[257], &[300_001], &[0]];

fn layout(shapes: &[&[usize]]) -> FlatLayout {
    FlatLayout::new(&shapes.iter().map(|s| s.to_vec()).collect::<Vec<_>>())
}

fn host_tensors(rng: &mut impl Rng, l: &FlatLayout, integers: bool) -> Vec<Vec<f32>> {
    (0..l.len())
        .map(|i| {
            (0..l.numel(i))
                .map(|_| if integers { rng.random_range(-8i32..=8) as f32 } else { rng.random_range(-1.0f32..1.0) })
                .collect()
        })
        .collect()
}

fn words(gpu: &Gpu, t: &Tensor) -> Vec<u32> {
    gpu.read_u32(t).unwrap()
}

#[test]
fn flat_views_hold_their_tensors_and_bind_at_their_offsets() {
    let gpu = gpu();
    let mut rng = rng();
    let l = layout(&SHAPES);
    let host = host_tensors(&mut rng, &l, false);
    let refs: Vec<&[f32]> = host.iter().map(|h| h.as_slice()).collect();
    let set = gpu.flat_upload(&l, &refs).unwrap();
    for (i, v) in set.views.iter().enumerate() {
        assert_eq!(v.shape, l.shapes[i]);
        assert_eq!(gpu.read_f32(v).unwrap(), host[i], "view {i}");
        // A kernel reading a view at a non-zero offset sees the view's elements only.
        if v.numel() > 0 {
            let want = gpu.read_f32(&sum_squares(&gpu, &gpu.duplicate(v).unwrap()).unwrap()).unwrap();
            assert_eq!(gpu.read_f32(&sum_squares(&gpu, v).unwrap()).unwrap(), want, "sum over view {i}");
        }
    }
    // The padding between slots is zero; writing one view leaves its neighbours alone.
    let flat = gpu.read_f32(&set.flat).unwrap();
    for i in 0..l.len() {
        assert!(flat[l.offsets[i] + l.numel(i)..l.offsets[i] + l.slots[i]].iter().all(|&x| x == 0.0));
    }
    gpu.fill_f32(&set.views[3], 7.0).unwrap();
    assert_eq!(gpu.read_f32(&set.views[2]).unwrap(), host[2]);
    assert_eq!(gpu.read_f32(&set.views[4]).unwrap(), host[4]);
    assert!(set.flat.view(1, &[1], 64).is_err(), "an unaligned view is refused");
    assert!(set.views[0].view(0, &[1], 64).is_err(), "a view of a view is refused");
}

#[test]
fn squares_plan_gives_the_bits_of_sum_squares_per_tensor() {
    let gpu = gpu();
    let mut rng = rng();
    let l = layout(&SHAPES);
    let plan = SquaresPlan::new(&gpu, &l).unwrap();
    for integers in [true, false] {
        let host = host_tensors(&mut rng, &l, integers);
        let refs: Vec<&[f32]> = host.iter().map(|h| h.as_slice()).collect();
        let set = gpu.flat_upload(&l, &refs).unwrap();
        gpu.fill_f32(&plan.out, f32::NAN).unwrap();
        plan.run(&gpu, &set.flat).unwrap();
        let got = gpu.read_f32(&plan.out).unwrap();
        for (i, h) in host.iter().enumerate() {
            let alone = gpu.read_f32(&sum_squares(&gpu, &gpu.upload_f32(&[h.len()], h).unwrap()).unwrap()).unwrap();
            assert_eq!(got[i].to_bits(), alone[0].to_bits(), "tensor {i} of {:?}", l.shapes[i]);
            if integers {
                assert_eq!(got[i] as f64, sop_reference::reduce::sum_squares(&f64s(h)), "tensor {i} exact");
            }
        }
    }
}

fn clip_case(gpu: &Gpu, sq: &[f32], checks: &[f32], rule: ClipRule) -> (Vec<f32>, u32) {
    let gsq = gpu.upload_f32(&[sq.len()], sq).unwrap();
    let gchecks = gpu.upload_f32(&[checks.len()], checks).unwrap();
    let flag = gpu.zeros(&[1], DType::U32).unwrap();
    let scale = gpu.empty(&[sq.len()], DType::F32).unwrap();
    gpu.fill_f32(&scale, f32::NAN).unwrap();
    clip_scales(gpu, &gsq, &gchecks, checks.len(), &flag, &scale, rule).unwrap();
    (gpu.read_f32(&scale).unwrap(), words(gpu, &flag)[0])
}

#[test]
fn clip_scales_match_the_reference_and_flag_non_finite_values() {
    let gpu = gpu();
    let mut rng = rng();
    for t in [1usize, 3, 49, 65] {
        // Norms from 0.01 to 100 around thresholds of 0.5 and 3: some clipped, some not.
        let sq: Vec<f32> = (0..t).map(|_| 10f32.powf(rng.random_range(-4.0..4.0))).collect();
        for (rule, r) in [
            (ClipRule::None, reference::Rule::None),
            (ClipRule::PerTensor(3.0), reference::Rule::PerTensor(3.0)),
            (ClipRule::Global(0.5), reference::Rule::Global(0.5)),
        ] {
            let (got, flag) = clip_case(&gpu, &sq, &[1.5, 2.0], rule);
            let want = reference::clip_scales(&f64s(&sq), r);
            assert_close(&format!("{rule:?} T {t}"), &got, &want, 0.0, 1e-6);
            for (g, w) in got.iter().zip(&want) {
                assert!(*w < 1.0 || *g == 1.0, "{rule:?}: an unclipped tensor has factor exactly 1, got {g}");
            }
            assert_eq!(flag, 0, "finite values raise no flag");
        }
    }
    // Any NaN or ±Inf among the checked words or the sums raises the flag; words past
    // n_checks are not checked.
    let sq = [1.0f32, 4.0, 9.0];
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert_eq!(clip_case(&gpu, &sq, &[0.5, bad], ClipRule::PerTensor(3.0)).1, 1, "check {bad}");
        let mut s = sq;
        s[2] = bad;
        assert_eq!(clip_case(&gpu, &s, &[0.5], ClipRule::None).1, 1, "sum {bad}");
        assert!(reference::any_non_finite(&[0.5, bad as f64]));
    }
    let gsq = gpu.upload_f32(&[3], &sq).unwrap();
    let checks = gpu.upload_f32(&[2], &[0.5, f32::NAN]).unwrap();
    let (flag, scale) = (gpu.zeros(&[1], DType::U32).unwrap(), gpu.zeros(&[3], DType::F32).unwrap());
    clip_scales(&gpu, &gsq, &checks, 1, &flag, &scale, ClipRule::None).unwrap();
    assert_eq!(words(&gpu, &flag)[0], 0, "only the first n_checks words are checked");
    // Sticky: a raised flag stays raised through a step whose values are finite.
    gpu.write_u32(&flag, &[1]).unwrap();
    clip_scales(&gpu, &gsq, &checks, 1, &flag, &scale, ClipRule::None).unwrap();
    assert_eq!(words(&gpu, &flag)[0], 1);
    assert!(clip_scales(&gpu, &gsq, &checks, 3, &flag, &scale, ClipRule::None).is_err(), "n_checks > words");
}

const HP: AdamWStep =
    AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.04, step: 3, grad_scale: 1.0 };

#[test]
fn adamw_multi_gives_the_bits_of_adamw_step_per_tensor() {
    let gpu = gpu();
    let mut rng = rng();
    let shapes: [&[usize]; 6] = [&[1], &[3], &[63], &[5, 13], &[257], &[0]];
    let l = layout(&shapes);
    let t = l.len();
    let decay: Vec<bool> = (0..t).map(|i| i % 2 == 0).collect();
    let has_grad: Vec<bool> = (0..t).map(|i| i != 1).collect();
    let up = |rng: &mut rand::rngs::StdRng, positive: bool| {
        let h: Vec<Vec<f32>> = (0..t)
            .map(|i| {
                (0..l.numel(i))
                    .map(|_| if positive { rng.random_range(0.0..0.5) } else { rng.random_range(-1.0..1.0) })
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = h.iter().map(|x| x.as_slice()).collect();
        (gpu.flat_upload(&l, &refs).unwrap(), h)
    };
    let ((p, ph), (g, gh), (m, mh), (v, vh)) =
        (up(&mut rng, false), up(&mut rng, false), up(&mut rng, false), up(&mut rng, true));
    // Poison the padding of param, m and v: adamw_multi must not touch it.
    let poison_padding = |set: &sop::gpu::FlatTensors| {
        let mut host = gpu.read_f32(&set.flat).unwrap();
        for i in 0..t {
            host[l.offsets[i] + l.numel(i)..l.offsets[i] + l.slots[i]].fill(f32::NAN);
        }
        gpu.write_f32(&set.flat, &host).unwrap();
    };
    for s in [&p, &m, &v] {
        poison_padding(s);
    }
    let scales: Vec<f32> = (0..t).map(|i| if i == 3 { 0.37 } else { 1.0 }).collect();
    let table = gpu.upload_u32(&[3 * t], &multi_table(&l, &decay, &has_grad).unwrap()).unwrap();
    let gscale = gpu.upload_f32(&[t], &scales).unwrap();
    let skip = gpu.zeros(&[1], DType::U32).unwrap();
    let before: Vec<Vec<f32>> = [&p, &m, &v].iter().map(|s| gpu.read_f32(&s.flat).unwrap()).collect();
    // Nothing changes while the flag is set.
    gpu.write_u32(&skip, &[1]).unwrap();
    adamw_multi(&gpu, &p.flat, &g.flat, &m.flat, &v.flat, &table, &gscale, &skip, &HP).unwrap();
    for (s, b) in [&p, &m, &v].iter().zip(&before) {
        assert!(gpu.read_f32(&s.flat).unwrap().iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "flag set");
    }
    gpu.write_u32(&skip, &[0]).unwrap();
    adamw_multi(&gpu, &p.flat, &g.flat, &m.flat, &v.flat, &table, &gscale, &skip, &HP).unwrap();
    for i in 0..t {
        let n = l.numel(i);
        let one =
            |h: &Vec<Vec<f32>>| gpu.upload_f32(&[n.max(1)], &if n == 0 { vec![0.0] } else { h[i].clone() }).unwrap();
        let (p1, g1, m1, v1) = (one(&ph), one(&gh), one(&mh), one(&vh));
        if has_grad[i] && n > 0 {
            let hp =
                AdamWStep { weight_decay: if decay[i] { HP.weight_decay } else { 0.0 }, grad_scale: scales[i], ..HP };
            adamw_step(&gpu, &p1, &g1, &m1, &v1, &hp).unwrap();
        }
        for (what, set, alone) in [("param", &p, &p1), ("m", &m, &m1), ("v", &v, &v1)] {
            let got = gpu.read_f32(&set.views[i]).unwrap();
            let want = &gpu.read_f32(alone).unwrap()[..n];
            assert!(
                got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what} of tensor {i}: {got:?} vs {want:?}"
            );
        }
    }
    for set in [&p, &m, &v] {
        let flat = gpu.read_f32(&set.flat).unwrap();
        for i in 0..t {
            assert!(
                flat[l.offsets[i] + l.numel(i)..l.offsets[i] + l.slots[i]].iter().all(|x| x.is_nan()),
                "padding of {i}"
            );
        }
    }
    assert!(adamw_multi(&gpu, &p.flat, &g.flat, &m.flat, &m.flat, &table, &gscale, &skip, &HP).is_err());
}

#[test]
fn ema_and_bank_writes_do_nothing_while_the_flag_is_set() {
    let gpu = gpu();
    let mut rng = rng();
    for n in [1usize, 65, 1000] {
        let (t0, s) = (randn(&mut rng, n), randn(&mut rng, n));
        let (ta, tb, gs) =
            (gpu.upload_f32(&[n], &t0).unwrap(), gpu.upload_f32(&[n], &t0).unwrap(), gpu.upload_f32(&[n], &s).unwrap());
        let skip = gpu.zeros(&[1], DType::U32).unwrap();
        ema_update_unless(&gpu, &ta, &gs, 0.9, &skip).unwrap();
        ema_update(&gpu, &tb, &gs, 0.9).unwrap();
        assert_eq!(words(&gpu, &ta), words(&gpu, &tb), "n {n}: the plain update's bits");
        gpu.write_u32(&skip, &[1]).unwrap();
        ema_update_unless(&gpu, &ta, &gs, 0.5, &skip).unwrap();
        assert_eq!(words(&gpu, &ta), words(&gpu, &tb), "n {n}: flag set");
    }
    let (n, c, r) = (7usize, 3usize, 5usize);
    let (ring, rows) = (randn(&mut rng, n * c), randn(&mut rng, r * c));
    let (a, b, src) = (
        gpu.upload_f32(&[n, c], &ring).unwrap(),
        gpu.upload_f32(&[n, c], &ring).unwrap(),
        gpu.upload_f32(&[r, c], &rows).unwrap(),
    );
    let skip = gpu.zeros(&[1], DType::U32).unwrap();
    scatter_rows_ring_unless(&gpu, &a, &src, 4, &skip).unwrap();
    scatter_rows_ring(&gpu, &b, &src, 4).unwrap();
    assert_eq!(words(&gpu, &a), words(&gpu, &b));
    gpu.write_u32(&skip, &[1]).unwrap();
    let before = words(&gpu, &a);
    scatter_rows_ring_unless(&gpu, &a, &gpu.upload_f32(&[r, c], &randn(&mut rng, r * c)).unwrap(), 1, &skip).unwrap();
    assert_eq!(words(&gpu, &a), before, "flag set");
}

#[test]
fn finite_check_finds_any_non_finite_element_of_its_inputs() {
    let gpu = gpu();
    let mut rng = rng();
    let sizes = [1usize, 63, 257, 65];
    let host: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut rng, n)).collect();
    let check = |h: &[Vec<f32>]| {
        let ts: Vec<Tensor> = h.iter().map(|x| gpu.upload_f32(&[x.len()], x).unwrap()).collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        gpu.read_f32(&finite_check(&gpu, &refs).unwrap()).unwrap()[0]
    };
    assert_eq!(check(&host).to_bits(), 0.0f32.to_bits(), "all finite: +0.0");
    assert_eq!(check(&host[..1]).to_bits(), 0.0f32.to_bits());
    for (k, &n) in sizes.iter().enumerate() {
        for at in [0, n - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut h = host.clone();
                h[k][at] = bad;
                assert!(check(&h).is_nan(), "input {k} element {at} = {bad}");
                assert!(reference::any_non_finite(&f64s(&h[k])));
            }
        }
    }
    // Large finite values (f32::MAX) are finite.
    let mut h = host.clone();
    h[2][5] = f32::MAX;
    assert_eq!(check(&h), 0.0);
    assert!(finite_check(&gpu, &[]).is_err());
}
