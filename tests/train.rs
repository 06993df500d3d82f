//! `sop train` end to end on tiny settings (the bundled Fashion-MNIST subset at 8 px):
//! resume equivalence, the EMA rule, bank FIFO bookkeeping, refusal of corrupt checkpoints,
//! and the stop on a non-finite loss.

use std::path::{Path, PathBuf};

use sop::checkpoint;
use sop::train::config::TrainConfig;
use sop::train::{state, train};

fn gpu() -> sop::Gpu {
    sop::Gpu::new(None).unwrap_or_else(|e| panic!("training tests need a GPU adapter: {e}"))
}

fn tiny(out: &Path) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.data.path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    c.model.dim = 16;
    c.model.depth = 1;
    c.model.heads = 2;
    c.model.patch_size = 4;
    c.model.img_size = 8;
    c.model.head_hidden = 16;
    c.model.head_bottleneck = 16;
    c.model.drop_path = 0.1;
    c.augment.global_size = 8;
    c.augment.local_size = 4;
    c.augment.local_crops = 1;
    c.augment.mask.patch_size = 4;
    c.data.batch_size = 8;
    c.data.threads = 2;
    c.sop.cls_bank_size = 64;
    c.sop.patch_bank_size = 48;
    c.sop.cls.anchors = 8;
    c.sop.cls.experts = 3;
    c.sop.cls.tasks = 2;
    c.sop.patch.anchors = 8;
    c.optim.epochs = 1;
    c.optim.warmup_epochs = 0;
    c.run.out = out.to_path_buf();
    c.run.no_eval = true;
    c.run.checkpoint_every = 0;
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sop-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn weights(path: &Path) -> checkpoint::TensorMap {
    checkpoint::read(path).unwrap().tensors
}

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
            assert!((t.data[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{n}[{i}]: teacher {} vs EMA {want}", t.data[i]);
        }
        moved |= t.data != t0[n].data;
    }
    assert!(moved, "the teacher moved");
    // One step wrote B = 8 rows into each bank at the start of the ring.
    let st = checkpoint::read(&dir.join(state::STATE)).unwrap();
    assert_eq!(st.metadata["cls_bank_ptr"], "8");
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
    let err = train(&gpu, cfg, None, false).unwrap_err().to_string();
    assert!(err.contains("step 2: the loss is not finite"), "{err}");
    // The checkpoint of step 1 (finite loss) is kept as it was.
    for f in [state::STUDENT, state::TEACHER, state::STATE] {
        let meta = checkpoint::read_metadata(&dir.join(f)).unwrap();
        assert_eq!(meta["step"], "1", "{f}");
    }
}
