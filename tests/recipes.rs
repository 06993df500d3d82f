//! Recipes from the command line: `sop config` prints the fully resolved configuration
//! (recipe, then --config, then --set, then the flags) and a run saves exactly that; --set is
//! typed by the schema and refuses unknown keys; a resumed run refuses recipe changes; the
//! memory plan refuses a batch that cannot fit, before any work, and `--batch-size auto`
//! picks the largest that does.

use std::path::PathBuf;
use std::process::Command;

use sop::train::config::TrainConfig;

fn sop(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(args).envs(env.iter().copied()).output().expect("sop runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn config(args: &[&str]) -> TrainConfig {
    let (ok, out, err) = sop(&[&["config"], args].concat(), &[]);
    assert!(ok, "sop config {args:?}: {err}");
    toml::from_str(&out).unwrap_or_else(|e| panic!("sop config printed no config: {e}\n{out}"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sop-recipes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn sop_config_prints_the_paper_values_and_overrides_in_order() {
    let c = config(&["--recipe", "paper", "--arch", "vit_small"]);
    let m = &c.model;
    assert_eq!((m.dim, m.depth, m.heads, m.patch_size, m.img_size, m.drop_path), (384, 12, 6, 16, 224, 0.1));
    assert_eq!((m.head_hidden, m.head_bottleneck, m.head_layers), (2048, 256, 3));
    assert_eq!((c.sop.cls_bank_size, c.sop.patch_bank_size), (65_536, 8_192));
    assert_eq!((c.sop.cls.anchors, c.sop.cls.experts, c.sop.cls.tasks), (64, 9, 4));
    assert_eq!((c.sop.patch.anchors, c.sop.patch.experts, c.sop.patch.tasks), (512, 1, 1));
    assert_eq!((c.optim.momentum_teacher, c.optim.lr, c.optim.warmup_epochs, c.optim.min_lr), (0.996, 5e-4, 10, 1e-6));
    assert_eq!((c.augment.global_scale, c.augment.blur_sigma, c.augment.local_size), ((0.14, 1.0), (0.1, 2.0), 96));
    let l = config(&["--recipe", "paper", "--arch", "vit_large"]);
    assert_eq!((l.model.dim, l.model.depth, l.model.heads), (1024, 24, 16));
    // No recipe: the small one.
    assert_eq!(config(&[]).model.dim, TrainConfig::default().model.dim);

    // A partial file merges onto the recipe; --set overrides the file; a flag overrides --set.
    let dir = tmp("order");
    let file = dir.join("c.toml");
    std::fs::write(&file, "[sop.cls]\nanchors = 16\n[optim]\nlr = 0.002\n").unwrap();
    let f = file.to_str().unwrap();
    let c = config(&[
        "--recipe",
        "paper",
        "--config",
        f,
        "--set",
        "optim.lr=0.003",
        "--set",
        "data.batch_size=7",
        "--batch-size",
        "5",
    ]);
    assert_eq!((c.sop.cls.anchors, c.sop.cls.experts, c.sop.cls_bank_size), (16, 9, 65_536));
    assert_eq!((c.optim.lr, c.data.batch_size), (0.003, 5));
}

#[test]
fn set_refuses_unknown_keys_and_wrong_types_by_name() {
    for (arg, want) in [
        ("sop.cls.anchorz=3", "anchorz"),
        ("sop.clss.anchors=3", "clss"),
        ("optim.lr=fast", "optim.lr"),
        ("data.batch_size=auto", "integer"),
        ("nokey", "key=value"),
    ] {
        let (ok, _, err) = sop(&["config", "--set", arg], &[]);
        assert!(!ok && err.contains(want), "--set {arg}: {err}");
    }
}

#[test]
fn a_run_saves_what_sop_config_prints_and_a_resume_keeps_it() {
    let dir = tmp("saved");
    let run = dir.join("run");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    let (r, d) = (run.to_str().unwrap(), data.to_str().unwrap());
    let args = ["--data", d, "--out", r, "--set", "sop.cls.anchors=16", "--steps", "0", "--no-eval"];
    let (ok, printed, err) = sop(&[&["config"], &args[..]].concat(), &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = sop(&[&["train", "--quiet"], &args[..]].concat(), &[]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), printed);
    for extra in [["--recipe", "paper"], ["--set", "optim.lr=0.1"]] {
        let (ok, _, err) = sop(&[&["train", "--resume", r, "--steps", "1"], &extra[..]].concat(), &[]);
        assert!(!ok && err.contains(extra[0]) && err.contains("keeps its own configuration"), "{err}");
    }
}

#[test]
fn a_batch_that_cannot_fit_is_refused_before_training_and_auto_fits() {
    let dir = tmp("fit");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    // 2 GiB: the paper recipe's ViT-S at batch 128 needs far more.
    let env = [("SOP_DEVICE_MEMORY", "2GiB")];
    let (ok, _, err) = sop(&["train", "--recipe", "paper", "--no-eval", "--out", r], &env);
    assert!(!ok && err.contains("batch 128 needs") && err.contains("bytes are available"), "{err}");
    assert!(!run.join("metrics.jsonl").exists(), "refused before the run started");
    let (ok, out, err) = sop(&["config", "--recipe", "paper", "--batch-size", "auto"], &env);
    assert!(ok, "{err}");
    let c: TrainConfig = toml::from_str(&out).unwrap();
    let b = c.data.batch_size;
    let usable = ((2u64 << 30) as f64 * (1.0 - sop::train::memory::MARGIN)) as u64;
    let plan = |b| sop::train::memory::plan(&c, b).total();
    assert!(b >= 1 && plan(b) <= usable && plan(b + 1) > usable, "auto chose {b}: {} / {usable}", plan(b));
    assert!(err.contains("--batch-size auto:") && err.contains("SOP_DEVICE_MEMORY"), "{err}");
}
