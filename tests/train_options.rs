//! The training options off SOP.md's default path, end to end on tiny settings: KoLeo
//! (`sop.koleo_weight`) reaches the gradient and is logged, the teacher [CLS] centring
//! (`sop.center_teacher_cls`) and a warm-up in steps (`optim.warmup_steps`) change the run,
//! a step budget (`optim.max_steps`) compresses the schedules, settings that cannot work
//! are refused by name, and the centred teacher targets match a
//! host reference.

mod support;

use std::path::Path;

use sop::train::config::{Objective, TrainConfig};
use sop::train::{state, train};
use support::{gpu, tiny, tmp, weights};

/// The student's weights after 3 steps of `cfg`, and the run's metrics lines.
fn run(gpu: &sop::Gpu, mut cfg: TrainConfig, dir: &Path) -> (sop::checkpoint::TensorMap, Vec<serde_json::Value>) {
    cfg.run.out = dir.to_path_buf();
    cfg.optim.steps = Some(3);
    train(gpu, cfg, None, false).unwrap();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    (weights(&dir.join(state::STUDENT)), metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

fn differs(a: &sop::checkpoint::TensorMap, b: &sop::checkpoint::TensorMap) -> bool {
    a.iter().any(|(name, t)| t.data != b[name].data)
}

#[test]
fn koleo_centring_and_warmup_steps_change_the_run_and_are_logged() {
    let gpu = gpu();
    let base = tiny(&tmp("opt-base"));
    let (w0, m0) = run(&gpu, base.clone(), &tmp("opt-base"));
    assert!(m0.iter().all(|l| l.get("loss_koleo").is_none()), "no KoLeo term when its weight is 0");

    let mut k = base.clone();
    k.sop.koleo_weight = 0.5;
    let (wk, mk) = run(&gpu, k, &tmp("opt-koleo"));
    assert!(differs(&w0, &wk), "KoLeo's gradient reaches the student");
    for l in &mk {
        // Unit rows in groups of 8: every nearest-neighbour distance is in (0, 2], so the
        // unweighted term −(1/B)Σ ln d summed over the two views is at least −2 ln 2.
        let v = l["loss_koleo"].as_f64().expect("loss_koleo logged");
        assert!(v.is_finite() && v >= -2.0 * 2f64.ln() - 1e-6, "{l}");
    }

    let mut c = base.clone();
    c.sop.center_teacher_cls = true;
    let (wc, mc) = run(&gpu, c, &tmp("opt-center"));
    assert!(differs(&w0, &wc), "centring changes the targets");
    assert!(mc.iter().all(|l| l["loss"].as_f64().unwrap().is_finite()));

    // The smoke config warms up for 0 epochs: 2 warm-up steps give another lr at step 1.
    let mut w = base.clone();
    w.optim.warmup_steps = Some(2);
    let (_, mw) = run(&gpu, w, &tmp("opt-warmup"));
    let lr = |m: &[serde_json::Value], i: usize| m[i]["lr"].as_f64().unwrap();
    assert_eq!(lr(&mw, 0), 0.0, "step 0 of a warm-up has lr 0");
    assert!(lr(&mw, 1) > 0.0 && lr(&mw, 1) < lr(&m0, 1), "{} vs {}", lr(&mw, 1), lr(&m0, 1));
}

/// `optim.max_steps` shorter than the epochs: every schedule is compressed into the budget
/// and the run ends there; fewer steps than epochs are refused.
#[test]
fn max_steps_compresses_the_schedules_into_its_budget() {
    let gpu = gpu();
    let dir = tmp("opt-max-steps");
    let mut c = tiny(&dir);
    // 2,000 images in batches of 8: the data's epoch is 250 steps. The schedules' epoch is
    // 5 / 2 = 2 steps: a warm-up of 2 steps, then the cosine over steps 2..3.
    (c.optim.epochs, c.optim.warmup_epochs, c.optim.max_steps) = (2, 1, Some(5));
    let summary = train(&gpu, c.clone(), None, false).unwrap();
    assert_eq!(summary.steps, 4);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lr: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|l| l.get("lr").and_then(|v| v.as_f64()))
        .collect();
    assert_eq!(lr.len(), 4, "{lr:?}");
    let peak = c.optim.lr * 8.0 / 256.0;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-9);
    assert!(lr[0] == 0.0 && close(lr[1], peak / 2.0) && close(lr[2], peak), "{lr:?}");
    // min_lr is not scaled by the batch.
    assert!(close(lr[3], c.optim.min_lr), "the cosine ends at the budget: {lr:?}");

    c.optim.max_steps = Some(1);
    assert!(c.validate().unwrap_err().to_string().contains("optim.max_steps"));
}

#[test]
fn koleo_settings_that_cannot_work_are_refused() {
    let mut c = tiny(&tmp("opt-refuse"));
    c.sop.koleo_weight = -0.1;
    assert!(c.validate().unwrap_err().to_string().contains("sop.koleo_weight"));
    c.sop.koleo_weight = 0.1;
    c.objective = Objective::Ibot;
    assert!(c.validate().unwrap_err().to_string().contains("ibot"));
    c.objective = Objective::Sop;
    c.data.batch_size = 1;
    c.sop.cls_bank_size = 64;
    assert!(c.validate().unwrap_err().to_string().contains("koleo"));
}

/// `sop.center_teacher_cls`: the teacher's [CLS] targets are softmax(cos(u − c, d − c)/τ)·Y,
/// c the batch mean of the teacher [CLS] rows, d the members (a host f64 reference on a
/// crowded bank: every row shares one direction, as in the crowded phase); without the
/// option they are softmax(u·d/τ)·Y, which the same check tells apart.
#[test]
fn centred_teacher_targets_match_the_centred_cosine_reference() {
    use rand::{Rng, SeedableRng};
    use sop::sop::bank::Bank;
    use sop::sop::objective::{sop_objective_tensors, Embeddings, ObjectiveConfig, TaskDraw, TaskSet};
    use sop::sop::prototypes::PrototypeConfig;
    let gpu = gpu();
    let (b, t, w, n, p, tau, s) = (5usize, 3usize, 6usize, 19usize, 7usize, 0.04f32, 0.1f64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let shared: Vec<f64> = (0..w).map(|_| rng.random_range(-1.0..1.0)).collect();
    // Unit rows shared + 0.3·noise: mean cosine ≈ 0.9.
    let mut crowded = |rows: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * w);
        for _ in 0..rows {
            let r: Vec<f64> = shared.iter().map(|c| c + 0.3 * rng.random_range(-1.0..1.0)).collect();
            let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            out.extend(r.iter().map(|x| (x / norm) as f32));
        }
        out
    };
    let (bank_rows, teacher_rows) = (crowded(n), crowded(2 * b));
    let student_rows = crowded(2 * b);
    let patches = crowded(2 * b * t);
    let bank = Bank { vectors: gpu.upload_f32(&[n, w], &bank_rows).unwrap(), ptr: 0, sources: vec![-1; n] };
    let patch_bank = Bank::random(&gpu, n, w, 3).unwrap();
    let perm: Vec<u32> = (0..n as u32).rev().collect();
    let (t_cls, s_cls) =
        (gpu.upload_f32(&[2 * b, w], &teacher_rows).unwrap(), gpu.upload_f32(&[2 * b, w], &student_rows).unwrap());
    let s_patch = gpu.upload_f32(&[2 * b, t, w], &patches).unwrap();
    let masks = vec![1u8; 2 * b * t];
    let e = Embeddings {
        student_cls: &s_cls,
        teacher_cls: &t_cls,
        student_patch: &s_patch,
        teacher_patch: &s_patch,
        masks: &masks,
        batch: b,
        local_views: 0,
    };
    // One expert per prototype: the members are the anchors perm[..p], all kept, and
    // Y[r, r] = 1 − s, Y[r, q ≠ r] = s/(p − 1).
    let reference = |centre: bool| -> Vec<f64> {
        let row = |v: &[f32], i: usize| v[i * w..(i + 1) * w].iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let c: Vec<f64> =
            (0..w).map(|k| (0..2 * b).map(|i| teacher_rows[i * w + k] as f64).sum::<f64>() / (2 * b) as f64).collect();
        let prep = |mut x: Vec<f64>| {
            if centre {
                x.iter_mut().zip(&c).for_each(|(x, c)| *x -= c);
                let norm = x.iter().map(|x| x * x).sum::<f64>().sqrt();
                x.iter_mut().for_each(|x| *x /= norm);
            }
            x
        };
        let d: Vec<Vec<f64>> = (0..p).map(|r| prep(row(&bank_rows, perm[r] as usize))).collect();
        let mut q = Vec::new();
        for i in 0..2 * b {
            let u = prep(row(&teacher_rows, i));
            let logits: Vec<f64> =
                d.iter().map(|d| d.iter().zip(&u).map(|(a, b)| a * b).sum::<f64>() / tau as f64).collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            let a: Vec<f64> = logits.iter().map(|l| (l - max).exp() / z).collect();
            q.extend(
                (0..p)
                    .map(|col| (0..p).map(|r| a[r] * if r == col { 1.0 - s } else { s / (p - 1) as f64 }).sum::<f64>()),
            );
        }
        q
    };
    for centre in [true, false] {
        let cfg = ObjectiveConfig {
            cls: PrototypeConfig { anchors: p, experts: 1, tasks: 1 },
            patch: PrototypeConfig { anchors: 4, experts: 1, tasks: 1 },
            smoothing: s as f32,
            student_temp: 0.1,
            teacher_temp: tau,
            center_teacher_cls: centre,
        };
        let draws = [TaskDraw { perm: perm.clone(), keep: None }];
        let pdraws = [TaskDraw { perm: (0..n as u32).collect(), keep: None }];
        let (cls, patch) = (TaskSet { bank: &bank, draws: &draws }, TaskSet { bank: &patch_bank, draws: &pdraws });
        let out = sop_objective_tensors(&gpu, &cfg, &e, cls, patch, |_, _, _| unreachable!()).unwrap();
        let got = gpu.read_f32(&out.targets_cls).unwrap();
        let (want, other) = (reference(centre), reference(!centre));
        let err = |r: &[f64]| got.iter().zip(r).map(|(g, r)| (*g as f64 - r).abs()).fold(0.0, f64::max);
        // f32 dot products of unit rows over 1/τ = 25: |logit error| ~ 1e-5, so targets ~1e-5.
        assert!(err(&want) < 1e-4, "centre {centre}: max error {} against the reference", err(&want));
        assert!(err(&other) > 1e-2, "centre {centre}: the two references must differ ({})", err(&other));
    }
}
