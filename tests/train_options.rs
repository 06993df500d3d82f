//! The training options off SOP.md's default path, end to end on tiny settings: KoLeo
//! (`sop.koleo_weight`) reaches the gradient and is logged, the teacher [CLS] centring
//! (`sop.center_teacher_cls`) and a warm-up in steps (`optim.warmup_steps`) change the run,
//! and settings that cannot work are refused by name.

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
