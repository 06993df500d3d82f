//! `sop train` end to end on tiny settings (the bundled Fashion-MNIST subset at 8 px):
//! resume equivalence, the EMA rule, bank FIFO bookkeeping, refusal of corrupt checkpoints,
//! and the stop on a non-finite loss.

mod support;

use std::path::Path;

use sop::checkpoint;
use sop::train::{state, train};
use support::{gpu, tiny, tmp, weights};

#[test]
fn resume_gives_the_same_weights_as_an_uninterrupted_run() {
    let gpu = gpu();
    let (a, b) = (tmp("straight"), tmp("resumed"));
    let mut cfg = tiny(&a);
    cfg.optim.steps = Some(6);
    let s = train(&gpu, cfg.clone(), None, false).unwrap();
    assert_eq!(s.steps, 6);
    assert!(s.final_loss.unwrap().is_finite());

    cfg.run.out = b.clone();
    cfg.optim.steps = Some(3);
    train(&gpu, cfg.clone(), None, false).unwrap();
    cfg.optim.steps = Some(6);
    let s = train(&gpu, cfg, Some(&b), false).unwrap();
    assert_eq!(s.steps, 6);
    for f in [state::STUDENT, state::TEACHER] {
        let (x, y) = (weights(&a.join(f)), weights(&b.join(f)));
        assert_eq!(x.len(), y.len());
        for (name, t) in &x {
            assert_eq!(t.data, y[name].data, "{f} {name} differs between the straight and the resumed run");
        }
    }
    let (x, y) = (weights(&a.join(state::STATE)), weights(&b.join(state::STATE)));
    assert_eq!(x["cls_bank"].data, y["cls_bank"].data, "banks differ");
    assert_eq!(x["cls_bank_sources"].data, y["cls_bank_sources"].data);
}

#[test]
fn teacher_follows_the_ema_rule_and_banks_fill_in_fifo_order() {
    let gpu = gpu();
    let dir = tmp("ema");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(0);
    train(&gpu, cfg.clone(), None, false).unwrap();
    let s0 = weights(&dir.join(state::STUDENT));
    let t0 = weights(&dir.join(state::TEACHER));
    for (n, t) in &s0 {
        assert_eq!(t.data, t0[n].data, "--steps 0 writes identical initial student and teacher ({n})");
    }
    cfg.optim.steps = Some(1);
    train(&gpu, cfg.clone(), Some(&dir), false).unwrap();
    let s1 = weights(&dir.join(state::STUDENT));
    let t1 = weights(&dir.join(state::TEACHER));
    let m = cfg.optim.momentum_teacher;
    let mut moved = false;
    for (n, t) in &t1 {
        for i in 0..t.data.len() {
            let want = m * t0[n].data[i] as f64 + (1.0 - m) * s1[n].data[i] as f64;
            assert!(
                (t.data[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{n}[{i}]: teacher {} vs EMA {want}",
                t.data[i]
            );
        }
        moved |= t.data != t0[n].data;
    }
    assert!(moved, "the teacher moved");
    // One step wrote B = 8 rows into each bank at the start of the ring.
    let st = checkpoint::read(&dir.join(state::STATE)).unwrap();
    assert_eq!(st.metadata["cls_bank_ptr"], "8");
    // The matmul variant is recorded so that a resume keeps it.
    assert!(
        sop::ops::matmul::MatmulVariant::parse(&st.metadata["matmul"]).is_some(),
        "{:?}",
        st.metadata.get("matmul")
    );
    let soft = st.metadata.get("soft_assign").and_then(|v| sop::ops::soft_assign_variant::SoftAssignVariant::parse(v));
    assert!(soft.is_some(), "{:?}", st.metadata.get("soft_assign"));
    // The attention choice is recorded for GPUs only: CPU adapters follow a rule of the shape.
    assert_eq!(st.metadata.contains_key("attention"), !gpu.is_cpu(), "{:?}", st.metadata.get("attention"));
    let src = &st.tensors["cls_bank_sources"].data;
    assert!(src[..8].iter().all(|&s| s >= 0.0) && src[8..].iter().all(|&s| s == -1.0), "{src:?}");
    let bank = &st.tensors["cls_bank"].data;
    for r in bank.chunks(16) {
        let norm: f32 = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "bank rows are unit vectors ({norm})");
    }
}

#[test]
fn corrupt_checkpoints_are_refused() {
    let gpu = gpu();
    let dir = tmp("corrupt");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(0);
    train(&gpu, cfg.clone(), None, false).unwrap();
    let student = dir.join(state::STUDENT);
    let bytes = std::fs::read(&student).unwrap();
    std::fs::write(&student, &bytes[..bytes.len() / 2]).unwrap();
    cfg.optim.steps = Some(1);
    let err = train(&gpu, cfg, Some(&dir), false).unwrap_err().to_string();
    assert!(err.contains("student.safetensors") && err.contains("truncated"), "{err}");
    // The other files are left as they were.
    assert!(checkpoint::read(&dir.join(state::TEACHER)).is_ok());

    // A train state whose recorded matmul variant is not one is refused, naming the file.
    let dir = tmp("corrupt-matmul");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(0);
    train(&gpu, cfg.clone(), None, false).unwrap();
    let path = dir.join(state::STATE);
    let mut st = checkpoint::read(&path).unwrap();
    st.metadata.insert("matmul".into(), "blocked".into());
    checkpoint::save(&path, &st.tensors, &st.metadata).unwrap();
    cfg.optim.steps = Some(1);
    let err = train(&gpu, cfg, Some(&dir), false).unwrap_err().to_string();
    assert!(err.contains("train_state.safetensors") && err.contains("blocked"), "{err}");

    // Likewise a recorded soft-assign variant that is not one.
    let dir = tmp("corrupt-soft-assign");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(0);
    train(&gpu, cfg.clone(), None, false).unwrap();
    let mut st = checkpoint::read(&dir.join(state::STATE)).unwrap();
    st.metadata.insert("soft_assign".into(), "dense".into());
    checkpoint::save(&dir.join(state::STATE), &st.tensors, &st.metadata).unwrap();
    cfg.optim.steps = Some(1);
    let err = train(&gpu, cfg, Some(&dir), false).unwrap_err().to_string();
    assert!(err.contains("train_state.safetensors") && err.contains("soft_assign"), "{err}");

    // Likewise a recorded attention variant that is not one.
    let dir = tmp("corrupt-attention");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(0);
    train(&gpu, cfg.clone(), None, false).unwrap();
    let mut st = checkpoint::read(&dir.join(state::STATE)).unwrap();
    st.metadata.insert("attention".into(), "flash3".into());
    checkpoint::save(&dir.join(state::STATE), &st.tensors, &st.metadata).unwrap();
    cfg.optim.steps = Some(1);
    let err = train(&gpu, cfg, Some(&dir), false).unwrap_err().to_string();
    assert!(err.contains("train_state.safetensors") && err.contains("flash3"), "{err}");
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint() {
    let gpu = gpu();
    let dir = tmp("nonfinite");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(4);
    cfg.optim.lr = 1e36; // the first update makes f32 activations overflow
    cfg.optim.clip_grad = 0.0;
    cfg.run.checkpoint_every = 1;
    let err = train(&gpu, cfg, None, false).unwrap_err();
    // A typed stop: which step, and which checkpoint the folder keeps.
    assert!(matches!(err, sop::SopError::TrainingStopped { step: 2, checkpoint: Some(1), .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("step 2: the loss is not finite"), "{err}");
    // The checkpoint of step 1 (finite loss) is kept as it was.
    for f in [state::STUDENT, state::TEACHER, state::STATE] {
        let meta = checkpoint::read_metadata(&dir.join(f)).unwrap();
        assert_eq!(meta["step"], "1", "{f}");
    }
}

/// The host learns of a non-finite step a step or more later (its metrics come back
/// asynchronously), but always before the next checkpoint: the checkpoint due at step 3 is
/// not written after the non-finite step 2, and metrics.jsonl holds the good step only.
#[test]
fn a_non_finite_step_found_late_stops_before_the_next_checkpoint() {
    let gpu = gpu();
    let dir = tmp("nonfinite-late");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(6);
    cfg.optim.lr = 1e36;
    cfg.optim.clip_grad = 0.0;
    cfg.run.checkpoint_every = 3;
    let err = train(&gpu, cfg, None, false).unwrap_err();
    assert!(matches!(err, sop::SopError::TrainingStopped { step: 2, checkpoint: None, .. }), "{err:?}");
    assert!(err.to_string().contains("step 2: the loss is not finite"), "{err}");
    assert!(!dir.join(state::STATE).exists() && !dir.join(state::STUDENT).exists());
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1]);
}

/// The lines of a run's metrics.jsonl.
fn metric_lines(dir: &Path) -> Vec<serde_json::Value> {
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every step gets its line, in step order, though lines are written when the step's
/// metrics come back; no step waits for the device (the waits are at the end of the run).
#[test]
fn metrics_have_one_line_per_step_in_order_and_no_step_waits() {
    let gpu = gpu();
    let dir = tmp("metrics-lines");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(7);
    train(&gpu, cfg, None, false).unwrap();
    let lines = metric_lines(&dir);
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=7).collect::<Vec<_>>());
    for l in &lines {
        assert_eq!(l["host_waits"], 0, "{l}");
        assert!(l["loss"].as_f64().unwrap().is_finite() && l["dispatches"].as_u64().unwrap() > 0, "{l}");
        assert!(l["cls_bank_cos"].as_f64().is_some() && l["pace_waits"].as_u64().is_some(), "{l}");
        assert!(l["host_ms"].as_f64().is_some() && l["encode_ms"].as_f64().is_some(), "{l}");
    }
}

/// The 1/CV anchor keep draws on the device: a step with it waits for nothing either.
#[test]
fn a_step_with_inverse_cv_sampling_waits_for_nothing() {
    let gpu = gpu();
    let dir = tmp("inverse-cv-waits");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(3);
    cfg.sop.anchor_sampling = sop::sop::prototypes::AnchorSampling::InverseCv;
    assert!(cfg.sop.cls.experts > 1, "the [CLS] tasks must keep anchors for the rule to run");
    train(&gpu, cfg, None, false).unwrap();
    let lines = metric_lines(&dir);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["host_waits"], 0, "{l}");
        assert!(l["loss"].as_f64().unwrap().is_finite(), "{l}");
    }
}

#[test]
fn a_non_finite_loss_before_any_checkpoint_says_there_is_none() {
    let gpu = gpu();
    let dir = tmp("nonfinite-first");
    let mut cfg = tiny(&dir);
    cfg.optim.steps = Some(4);
    cfg.optim.lr = 1e36;
    cfg.optim.clip_grad = 0.0;
    cfg.run.checkpoint_every = 0;
    let err = train(&gpu, cfg, None, false).unwrap_err().to_string();
    assert!(err.contains("step 2: the loss is not finite") && err.contains("no checkpoint had been written"), "{err}");
    assert!(!err.contains("kept as it was"), "{err}");
    assert!(!dir.join(state::STATE).exists());
}

/// On one fixed batch with fixed prototypes and a fixed teacher, AdamW on the student lowers
/// the SOP loss: the gradients from the objective through the tape point downhill.
#[test]
fn the_loss_is_finite_and_falls_on_a_fixed_batch() {
    use rand::{Rng, SeedableRng};
    use sop::model::params::{init_params, param_specs};
    use sop::model::vit::{ForwardOptions, Vit, Weights};
    use sop::sop::bank::Bank;
    use sop::sop::objective::{sop_objective, Embeddings, ObjectiveConfig, TaskDraw, TaskSet};
    use sop::sop::prototypes::PrototypeConfig;
    use sop::tape::Tape;
    use sop::train::optimizer::AdamW;

    let gpu = gpu();
    let cfg = tiny(Path::new("/unused")).model;
    let (b, s, n, w) = (8usize, 8usize, 4usize, cfg.head_bottleneck);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let host = init_params(&cfg, 1);
    let student = Weights::upload(&gpu, &host).unwrap();
    let teacher = Weights::upload(&gpu, &host).unwrap();
    let vit = Vit::new(cfg.clone());
    let images = gpu
        .upload_f32(
            &[2 * b, 3, s, s],
            &(0..2 * b * 3 * s * s).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(),
        )
        .unwrap();
    let mask_host: Vec<u32> = (0..2 * b * n).map(|i| (i % 3 == 0) as u32).collect();
    let mask = gpu.upload_u32(&[2 * b, n], &mask_host).unwrap();
    let masks_u8: Vec<u8> = mask_host.iter().map(|&m| m as u8).collect();
    let ocfg = ObjectiveConfig {
        cls: PrototypeConfig { anchors: 8, experts: 3, tasks: 1 },
        patch: PrototypeConfig { anchors: 8, experts: 1, tasks: 1 },
        smoothing: 0.1,
        student_temp: 0.1,
        teacher_temp: 0.04,
        center_teacher_cls: false,
    };
    let cls_bank = Bank::random(&gpu, 32, w, 2).unwrap();
    let patch_bank = Bank::random(&gpu, 32, w, 3).unwrap();
    let perm = |seed: u64| {
        let mut p: Vec<u32> = (0..32).collect();
        rand::seq::SliceRandom::shuffle(&mut p[..], &mut rand::rngs::StdRng::seed_from_u64(seed));
        p
    };
    let cls_draws = [TaskDraw { perm: perm(7), keep: Some(vec![0, 2, 4, 6]) }];
    let patch_draws = [TaskDraw { perm: perm(8), keep: None }];
    let (t_cls, t_patch) = {
        let mut tape = Tape::no_grad(&gpu);
        let p = teacher.leaves(&mut tape, false);
        let x = tape.constant(images.clone());
        let tok = vit.backbone(&mut tape, &p, &x, &ForwardOptions::default()).unwrap();
        let h = vit.head(&mut tape, &p, &tok).unwrap();
        let (c, r) = tape.tokens_split(&h).unwrap();
        (c.value, r.value)
    };
    let specs = param_specs(&cfg);
    let mut opt = AdamW::new(&gpu, &student, specs.iter().map(|s| s.decay).collect()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..12 {
        let mut tape = Tape::new(&gpu);
        let p = student.leaves(&mut tape, true);
        let x = tape.constant(images.clone());
        let tok = vit.backbone(&mut tape, &p, &x, &ForwardOptions { mask: Some(&mask), drop_path: None }).unwrap();
        let h = vit.head(&mut tape, &p, &tok).unwrap();
        let (c, r) = tape.tokens_split(&h).unwrap();
        let emb = Embeddings {
            student_cls: &c.value,
            teacher_cls: &t_cls,
            student_patch: &r.value,
            teacher_patch: &t_patch,
            masks: &masks_u8,
            batch: b,
            local_views: 0,
        };
        let (cls, patch) =
            (TaskSet { bank: &cls_bank, draws: &cls_draws }, TaskSet { bank: &patch_bank, draws: &patch_draws });
        let out = sop_objective(&gpu, &ocfg, &emb, cls, patch, |_, _, _| unreachable!()).unwrap();
        assert!(out.loss.is_finite(), "loss {}", out.loss);
        losses.push(out.loss);
        let mut g = tape.backward(vec![(&c, out.dstudent_cls), (&r, out.dstudent_patch)]).unwrap();
        let grads: Vec<_> = p.vars.iter().map(|v| g.take(v)).collect();
        opt.step(&gpu, &student, &grads, 2e-3, 0.0, None).unwrap();
    }
    eprintln!("losses on a fixed batch: {losses:?}");
    assert!(losses[11] < losses[0] - 0.05, "the loss did not fall: {losses:?}");
    assert!(losses.windows(2).filter(|w| w[1] < w[0]).count() >= 8, "mostly downhill: {losses:?}");
}

/// The banks' crowding diagnostic (`metrics.jsonl`: cls_bank_cos, patch_bank_cos) is the mean
/// cosine over distinct pairs of rows, from one reduction on the device.
#[test]
fn bank_mean_cosine_matches_the_pairwise_mean() {
    use sop::sop::bank::Bank;
    let gpu = gpu();
    let (n, w) = (37, 16);
    let bank = Bank::random(&gpu, n, w, 3).unwrap();
    let rows = gpu.read_f32(&bank.vectors).unwrap();
    let mut sum = 0.0f64;
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i) {
            sum += (0..w).map(|k| rows[i * w + k] as f64 * rows[j * w + k] as f64).sum::<f64>();
        }
    }
    let want = sum / (n * (n - 1)) as f64;
    let s = gpu.read_f32(&bank.sum_norm_sq(&gpu).unwrap()).unwrap()[0] as f64;
    let got = Bank::mean_cosine(s, n);
    // f32 sums of 37 unit rows: |error of s| ~ 1e-5, divided by N(N−1) = 1332.
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    // Identical rows: cosine 1.
    let same = gpu.upload_f32(&[n, w], &rows[..w].repeat(n)).unwrap();
    let crowded = Bank { vectors: same, ptr: 0, sources: vec![-1; n] };
    let s = gpu.read_f32(&crowded.sum_norm_sq(&gpu).unwrap()).unwrap()[0] as f64;
    assert!((Bank::mean_cosine(s, n) - 1.0).abs() < 1e-5);
}

/// A train state whose recorded rank count is damaged ("0", or not a number) is refused
/// naming the file, never a panic or a batch of 0 images.
#[test]
fn a_damaged_rank_count_is_refused_naming_the_file() {
    let gpu = gpu();
    for bad in ["0", "two"] {
        let dir = tmp(&format!("corrupt-ranks-{bad}"));
        let mut cfg = tiny(&dir);
        cfg.optim.steps = Some(0);
        train(&gpu, cfg.clone(), None, false).unwrap();
        let path = dir.join(state::STATE);
        let mut st = checkpoint::read(&path).unwrap();
        st.metadata.insert("ranks".into(), bad.into());
        checkpoint::save(&path, &st.tensors, &st.metadata).unwrap();
        cfg.optim.steps = Some(1);
        let err = train(&gpu, cfg, Some(&dir), false).unwrap_err().to_string();
        assert!(err.contains("train_state.safetensors") && err.contains("ranks"), "{bad}: {err}");
    }
}
