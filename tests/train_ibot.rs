//! `sop train --objective ibot` end to end on tiny settings (the bundled subset at 8 px, 13
//! prototypes): a finite loss, a resume that repeats the uninterrupted run bit for bit
//! (prototype layer and centres included), the frozen gain and first-epoch freeze of the
//! prototype layer, and the CLI: the objective saved in the run's config, the plot written,
//! and a resume that refuses to change the objective.

mod support;

use std::path::Path;
use std::process::Command;

use sop::sop::ibot::{Centers, WEIGHT_G, WEIGHT_V};
use sop::train::config::{Objective, TrainConfig};
use sop::train::{state, train};
use support::{gpu, weights as tensors};

/// The training tests' tiny run with the `ibot` objective and 13 prototypes.
fn tiny(out: &Path) -> TrainConfig {
    let mut c = support::tiny(out);
    c.objective = Objective::Ibot;
    c.ibot.prototypes = 13;
    c
}

fn tmp(name: &str) -> std::path::PathBuf {
    support::tmp(&format!("ibot-{name}"))
}

#[test]
fn ibot_trains_and_resumes_bit_for_bit() {
    let gpu = gpu();
    let (a, b) = (tmp("straight"), tmp("resumed"));
    let mut cfg = tiny(&a);
    cfg.ibot.freeze_last_layer_epochs = 0;
    cfg.optim.steps = Some(4);
    let s = train(&gpu, cfg.clone(), None, false).unwrap();
    assert!(s.final_loss.unwrap().is_finite() && s.final_loss.unwrap() > 0.0);

    cfg.run.out = b.clone();
    cfg.optim.steps = Some(2);
    train(&gpu, cfg.clone(), None, false).unwrap();
    cfg.optim.steps = Some(4);
    train(&gpu, cfg, Some(&b), false).unwrap();
    for f in [state::STUDENT, state::TEACHER] {
        let (x, y) = (tensors(&a.join(f)), tensors(&b.join(f)));
        assert_eq!(x[WEIGHT_V].shape, vec![13, 16], "{f}");
        assert!(x[WEIGHT_G].data.iter().all(|&g| g == 1.0), "{f}: the gain stays 1");
        for (name, t) in &x {
            assert_eq!(t.data, y[name].data, "{f} {name} differs between the straight and the resumed run");
        }
    }
    let (x, y) = (tensors(&a.join(state::STATE)), tensors(&b.join(state::STATE)));
    for name in Centers::NAMES {
        assert_eq!(x[name].shape, vec![13]);
        assert!(x[name].data.iter().any(|&c| c != 0.0), "{name} was never updated");
        assert_eq!(x[name].data, y[name].data, "{name} differs between the straight and the resumed run");
    }
    // No soft assignment runs in ibot: none was chosen (on a GPU that would be an autotune)
    // and none is recorded; the matmul still is.
    assert_eq!(gpu.kernel_choices.get("soft_assign"), None);
    let meta = sop::checkpoint::read(&a.join(state::STATE)).unwrap().metadata;
    assert!(!meta.contains_key("soft_assign") && meta.contains_key("matmul"), "{meta:?}");
    // The banks are not used: still the random rows they started with.
    assert!(x["cls_bank_sources"].data.iter().all(|&s| s == -1.0));
    let line = std::fs::read_to_string(a.join(state::METRICS)).unwrap();
    let last: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert!(last["cls_bank_cos"].is_null(), "no bank diagnostics for ibot: {last}");
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn the_prototype_layer_is_frozen_in_the_first_epoch() {
    let gpu = gpu();
    let out = tmp("frozen");
    let mut cfg = tiny(&out);
    cfg.optim.steps = Some(0);
    train(&gpu, cfg.clone(), None, false).unwrap();
    let before = tensors(&out.join(state::STUDENT));
    cfg.optim.steps = Some(2);
    train(&gpu, cfg, Some(&out), false).unwrap();
    let after = tensors(&out.join(state::STUDENT));
    assert_eq!(before[WEIGHT_V].data, after[WEIGHT_V].data, "trained during its frozen epoch");
    assert_ne!(before["head.mlp.0.weight"].data, after["head.mlp.0.weight"].data, "the rest trains");
    std::fs::remove_dir_all(out).unwrap();
}

fn sop(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(args).output().expect("sop runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cli_trains_ibot_writes_its_plot_and_refuses_to_change_the_objective_on_resume() {
    let dir = tmp("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = tiny(&dir.join("run"));
    cfg.objective = Objective::Sop; // the flag sets it
    let config = dir.join("tiny.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let run = dir.join("run");
    let (c, r) = (config.to_str().unwrap(), run.to_str().unwrap());
    let (ok, err) = sop(&["train", "--config", c, "--objective", "ibot", "--steps", "2", "--quiet", "--out", r]);
    assert!(ok, "{err}");
    let saved = std::fs::read_to_string(run.join(state::CONFIG)).unwrap();
    assert!(saved.starts_with("objective = \"ibot\""), "{saved}");
    assert!(run.join(state::PLOT).is_file(), "no plot.png");
    let (ok, err) = sop(&["train", "--resume", r, "--objective", "sop", "--steps", "3", "--quiet"]);
    assert!(!ok && err.contains("--objective") && err.contains("keeps its own configuration"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
