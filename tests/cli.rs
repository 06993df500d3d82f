//! The `sop` binary end to end, as a user runs it: train (tiny settings), eval knn,
//! embed, attention and prototype pictures, preview, objective replay, bench, and the errors
//! a user sees for bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sop(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(args).output().expect("sop runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = sop(args);
    assert!(success, "sop {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sop-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny training config: 8 px crops of the bundled data, one block of width 16.
fn tiny_config(dir: &Path) -> PathBuf {
    let c = sop::train::config::TrainConfig::smoke(root().join("assets/fashion-mnist"), dir.join("run"));
    let path = dir.join("tiny.toml");
    std::fs::write(&path, c.to_toml()).unwrap();
    path
}

#[test]
fn train_then_evaluate_embed_and_picture_a_run() {
    let dir = tmp("train");
    let cfg = tiny_config(&dir);
    let out = ok(&["train", "--config", s(&cfg), "--steps", "3", "--quiet"]);
    assert!(out.contains("trained 3 steps") && out.contains("k-NN before") && out.contains("k-NN after"), "{out}");
    let run = dir.join("run");
    for f in ["config.toml", "metrics.jsonl", "student.safetensors", "teacher.safetensors", "train_state.safetensors"] {
        assert!(run.join(f).exists(), "{f} missing from the run folder");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in ["step", "loss", "loss_cls", "loss_mim", "lr", "teacher_temp", "images_per_sec", "agreement_cls"] {
        assert!(first.get(key).is_some(), "metrics lack {key}: {first}");
    }

    let teacher = run.join("teacher.safetensors");
    let data = root().join("assets/fashion-mnist");
    let json = ok(&["eval", "knn", "--weights", s(&teacher), "--train", s(&data), "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((v["k"].as_u64(), v["n_train"].as_u64(), v["n_val"].as_u64()), (Some(20), Some(2000), Some(500)));
    let top1 = v["top1"].as_f64().unwrap();
    assert!(top1 > 15.0 && top1 <= v["top5"].as_f64().unwrap(), "{v}");

    let emb = dir.join("emb.safetensors");
    ok(&["embed", "--weights", s(&teacher), "--data", s(&data), "--split", "test", "--out", s(&emb)]);
    let meta = sop::checkpoint::read_metadata(&emb).unwrap();
    let paths: Vec<String> = serde_json::from_str(&meta["paths"]).unwrap();
    assert_eq!(paths.len(), 500);
    let f = sop::checkpoint::read(&emb).unwrap();
    assert_eq!(f.tensors["features"].shape, vec![500, 16]);

    let png = dir.join("protos.png");
    ok(&["prototypes", "--run", s(&run), "--out", s(&png), "--n", "4", "--tile", "16"]);
    assert!(image::open(&png).is_ok());

    let img = dir.join("img.png");
    image::RgbImage::from_fn(20, 20, |x, y| image::Rgb([(x * 12) as u8, (y * 12) as u8, 90])).save(&img).unwrap();
    let att = dir.join("att.png");
    ok(&["attention", "--weights", s(&teacher), "--image", s(&img), "--out", s(&att), "--tile", "32"]);
    let a = image::open(&att).unwrap();
    assert_eq!((a.width(), a.height()), (32 * 3, 32), "image + 2 heads");

    // A fresh run refuses to overwrite this one.
    let (success, _, err) = sop(&["train", "--config", s(&cfg), "--steps", "1", "--quiet", "--no-eval"]);
    assert!(!success && err.contains("already holds a training run"), "{err}");
    // Resuming extends the run to 5 steps.
    let out = ok(&["train", "--config", s(&cfg), "--resume", s(&run), "--steps", "5", "--quiet", "--no-eval"]);
    assert!(out.contains("trained 5 steps"), "{out}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tmp("errors");
    // A truncated checkpoint.
    let bad = dir.join("bad.safetensors");
    let good = root().join("kernels-tests/fixtures/vit_tiny.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let (success, _, err) = sop(&["embed", "--weights", s(&bad), "--data", "assets/fashion-mnist", "--out", s(&dir.join("x.safetensors"))]);
    assert!(!success && err.contains("bad.safetensors") && err.contains("truncated"), "{err}");
    assert!(!dir.join("x.safetensors").exists(), "nothing written on failure");
    // Not a run folder.
    let (success, _, err) = sop(&["train", "--resume", s(&dir), "--steps", "1", "--quiet"]);
    assert!(!success && err.contains("train_state.safetensors"), "{err}");
    // An empty data folder.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (success, _, err) = sop(&["eval", "knn", "--weights", s(&good), "--train", s(&empty)]);
    assert!(!success && err.contains("empty"), "{err}");
    // A config with a typo.
    let cfg = dir.join("typo.toml");
    std::fs::write(&cfg, "[optim]\nlearning_rate = 0.1\n").unwrap();
    let (success, _, err) = sop(&["train", "--config", s(&cfg)]);
    assert!(!success && err.contains("typo.toml") && err.contains("learning_rate"), "{err}");
    // A misspelt matmul override is an error, not a silent autotune.
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(["bench", "--filter", "matmul"]).env("SOP_MATMUL", "tile").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("SOP_MATMUL") && err.contains("tiled_shared"), "{err}");
}

#[test]
fn preview_objective_and_bench_run() {
    let dir = tmp("misc");
    let png = dir.join("preview.png");
    ok(&["preview", "--data", "assets/fashion-mnist", "--out", s(&png), "--n", "2", "--global-size", "28", "--local-size", "14", "--patch-size", "7"]);
    assert!(image::open(&png).is_ok());

    let inputs = root().join("kernels-tests/fixtures/sop_objective_e4_local.inputs.safetensors");
    let out = ok(&["objective", "--inputs", s(&inputs), "--out", s(&dir.join("o.safetensors")), "--check"]);
    assert!(out.contains("vs f64 reference"), "{out}");

    let json = ok(&["bench", "--filter", "l2norm", "--json", "--reps", "1"]);
    let line: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    for key in ["kernel", "variant", "shape", "ms", "gbps", "adapter"] {
        assert!(line.get(key).is_some(), "bench JSON lacks {key}: {line}");
    }
    let info = ok(&["info"]);
    assert!(info.contains("[0]") && info.contains("max storage binding"), "{info}");

    // The per-kernel table: every kernel of a training step shows up, with its dispatches.
    let cfg = tiny_config(&dir);
    let run = dir.join("profiled");
    let out = ok(&["train", "--config", s(&cfg), "--out", s(&run), "--steps", "2", "--quiet", "--no-eval", "--profile-kernels"]);
    for kernel in ["matmul", "attention.wgsl:attention_forward", "soft_assign.wgsl:soft_assign_forward", "adamw.wgsl:adamw_step", "all kernels"] {
        assert!(out.contains(kernel), "profile lacks {kernel}: {out}");
    }
}
