//! The device's non-finite flag inside a run: after a step whose values are not finite,
//! AdamW, the EMA and the bank writes of that step and of every later one leave the
//! student, the teacher, the moments and the banks exactly as they were, and the step's
//! metrics, read back later, say why the run stops.

use std::path::PathBuf;
use std::sync::Arc;

use super::config::TrainConfig;
use super::run::restore_or_init;
use super::step::Trainer;
use crate::data::{Batch, Dataset, Loader, LoaderConfig, Split, Views};
use crate::gpu::readback::Wait;
use crate::gpu::{DType, Gpu};

/// Every word of the run's device state: student, teacher, moments, banks.
fn state_words(gpu: &Gpu, t: &Trainer) -> Vec<Vec<u32>> {
    let m = &t.model;
    let mut all = vec![gpu.read_u32(&m.student.flat).unwrap(), gpu.read_u32(&m.teacher.flat).unwrap()];
    all.extend(t.opt.m.iter().chain(&t.opt.v).map(|x| gpu.read_u32(x).unwrap()));
    all.push(gpu.read_u32(&t.cls_bank.vectors).unwrap());
    all.push(gpu.read_u32(&t.patch_bank.vectors).unwrap());
    all
}

#[test]
fn a_non_finite_step_changes_nothing_on_the_device() {
    let gpu = Gpu::new(None).expect("a GPU adapter");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    let out = std::env::temp_dir().join(format!("sop-unit-flag-{}", std::process::id()));
    let cfg = TrainConfig::smoke(data, out.clone());
    let (model, opt, cls_bank, patch_bank, centers, _) = restore_or_init(&gpu, &cfg, None).unwrap();
    let dataset = Arc::new(Dataset::open(&cfg.data.path, Split::Train).unwrap());
    let loader_cfg = LoaderConfig {
        batch_size: cfg.data.batch_size,
        drop_last: true,
        shuffle: true,
        seed: 0,
        prefetch: 1,
        threads: 1,
        shard: (0, 1),
    };
    let mut loader = Loader::new(dataset, Views::Train(cfg.augment.clone()), loader_cfg).unwrap();
    let batches: Vec<Batch> = loader.epoch(0).take(4).map(|b| b.unwrap()).collect();
    let mut t = Trainer {
        gpu: &gpu,
        cfg: &cfg,
        model,
        opt,
        cls_bank,
        patch_bank,
        centers,
        schedule_epoch: 100,
        schedule_steps: 100,
        out,
        config_toml: String::new(),
        saved_step: None,
        flag: gpu.zeros(&[1], DType::U32).unwrap(),
        diagnostics: Some(Default::default()),
    };
    // A finite step changes the state and raises no flag.
    let before = state_words(&gpu, &t);
    let r = t.step(0, &batches[0..1]).unwrap();
    let m = r.scalars.finish(&r.read.wait(&gpu, Wait::Drain).unwrap()).unwrap();
    assert!(m.loss.is_finite() && m.grad_norm > 0.0);
    let good = state_words(&gpu, &t);
    assert!(good.iter().zip(&before).all(|(a, b)| a != b), "a finite step updates every part of the state");
    assert_eq!(gpu.read_u32(&t.flag).unwrap(), vec![0]);

    // A NaN in one student weight makes the next forward non-finite.
    let w = &t.model.student.tensors[0];
    let mut host = gpu.read_f32(w).unwrap();
    host[0] = f32::NAN;
    gpu.write_f32(w, &host).unwrap();
    let injected = state_words(&gpu, &t);
    // Two steps recorded before the host looks at either (as a run does, a step or two behind).
    let (r1, r2) = (t.step(1, &batches[1..2]).unwrap(), t.step(2, &batches[2..3]).unwrap());
    let after = state_words(&gpu, &t);
    assert!(after == injected, "the flagged steps changed the device state");
    assert_eq!(gpu.read_u32(&t.flag).unwrap(), vec![1]);
    let reason = r1.scalars.finish(&r1.read.wait(&gpu, Wait::Drain).unwrap()).unwrap_err();
    assert!(reason.contains("the loss is not finite") && reason.contains("non-finite embeddings"), "{reason}");
    // Later steps keep the flag (sticky) even if their own values were finite.
    assert!(r2.scalars.finish(&r2.read.wait(&gpu, Wait::Drain).unwrap()).is_err());
    let err = t.stop(1, reason).to_string();
    assert!(err.contains("step 2: the loss is not finite") && err.contains("no checkpoint"), "{err}");
}
