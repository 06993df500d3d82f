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
    let files = ["config.toml", "metrics.jsonl", "plot.png", "student.safetensors", "teacher.safetensors"];
    for f in files.iter().chain(&["train_state.safetensors"]) {
        assert!(run.join(f).exists(), "{f} missing from the run folder");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["step"], 0, "the k-NN before training comes first: {}", lines[0]);
    assert!(lines[0]["knn_top1"].is_number(), "{}", lines[0]);
    let first = &lines[1];
    for key in [
        "step",
        "loss",
        "loss_cls",
        "loss_mim",
        "lr",
        "teacher_temp",
        "images_per_sec",
        "agreement_cls",
        "teacher_cls_erank",
        "target_entropy",
        "prototypes_effective",
        "prototypes_used",
    ] {
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
    let (success, _, err) =
        sop(&["embed", "--weights", s(&bad), "--data", "assets/fashion-mnist", "--out", s(&dir.join("x.safetensors"))]);
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
    let out = Command::new(env!("CARGO_BIN_EXE_sop"))
        .args(["bench", "--filter", "matmul"])
        .env("SOP_MATMUL", "tile")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("SOP_MATMUL") && err.contains("tiled_shared"), "{err}");
    // Likewise the soft-assign override.
    let out = Command::new(env!("CARGO_BIN_EXE_sop"))
        .args(["bench", "--filter", "soft_assign"])
        .env("SOP_SOFT_ASSIGN", "vote")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("SOP_SOFT_ASSIGN") && err.contains("votes"), "{err}");

    // Likewise the attention override, refused before `train` writes its run folder.
    let dir = tmp("bad-attention");
    let run = dir.join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_sop"))
        .args(["train", "--steps", "1", "--out", s(&run)])
        .env("SOP_ATTENTION", "flash3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("SOP_ATTENTION") && err.contains("unfused"), "{err}");
    assert!(!run.exists(), "a refused start writes no run folder");

    // A new run does not replace a plot.png it did not draw.
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("plot.png"), b"the user's").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_sop")).args(["train", "--steps", "1", "--out", s(&run)]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("plot.png"), "{err}");
    assert_eq!(std::fs::read(run.join("plot.png")).unwrap(), b"the user's");
}

#[test]
fn preview_objective_and_bench_run() {
    let dir = tmp("misc");
    let png = dir.join("preview.png");
    ok(&[
        "preview",
        "--data",
        "assets/fashion-mnist",
        "--out",
        s(&png),
        "--n",
        "2",
        "--global-size",
        "28",
        "--local-size",
        "14",
        "--patch-size",
        "7",
    ]);
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
    let out = ok(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&run),
        "--steps",
        "2",
        "--quiet",
        "--no-eval",
        "--profile-kernels",
    ]);
    for kernel in [
        "matmul",
        "attention",   // the adapter's variant: attention_subgroup.wgsl on lavapipe, attention.wgsl elsewhere
        "soft_assign", // the adapter's variant: soft_assign.wgsl or soft_assign_flash.wgsl
        "adamw.wgsl:adamw_multi",
        "all kernels",
    ] {
        assert!(out.contains(kernel), "profile lacks {kernel}: {out}");
    }
}

// ---------------------------------------------------------------------------------------
// Issue 11: bad input that used to lose work or report a wrong number with exit code 0.

/// `sop` run from `cwd`.
fn sop_in(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(args).current_dir(cwd).output().expect("sop runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `sop`, killed after `secs` seconds: (finished in time and succeeded, stderr).
fn sop_within(secs: u64, args: &[&str]) -> (bool, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sop"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sop runs");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed().as_secs() >= secs {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.is_some_and(|s| s.success()), err)
}

/// An 8x8 PNG of noise from `seed`.
fn noise_png(path: &Path, seed: u32) {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    let img = image::RgbImage::from_fn(8, 8, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *c = (x >> 24) as u8;
        }
        image::Rgb(px)
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// A labelled folder: `n` distinct noise images per class, seeds from the class index.
fn class_folder(dir: &Path, classes: &[&str], n: u32) -> PathBuf {
    for (c, name) in classes.iter().enumerate() {
        for i in 0..n {
            noise_png(&dir.join(name).join(format!("{i}.png")), 1000 * c as u32 + i);
        }
    }
    dir.to_path_buf()
}

/// A tiny config training on `data` (batch 8, 8 px) into `out`, with no k-NN.
fn tiny_config_on(dir: &Path, data: &Path, out: &Path) -> PathBuf {
    let mut c = sop::train::config::TrainConfig::smoke(data.to_path_buf(), out.to_path_buf());
    c.run.no_eval = true;
    let path = dir.join("tiny-own.toml");
    std::fs::write(&path, c.to_toml()).unwrap();
    path
}

fn step_of(dir: &Path, file: &str) -> String {
    sop::checkpoint::read_metadata(&dir.join(file)).unwrap()["step"].clone()
}

fn metric_steps(run: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// Items 1, 4 and 12: `--resume RUN` continues in RUN (not `./runs/default`), with the run's
/// own architecture and data, prints the data it uses, never repeats a step in metrics.jsonl,
/// and refuses an `--out` holding another run.
#[test]
fn resume_continues_in_its_own_folder() {
    let dir = tmp("resume-here");
    let data = class_folder(&dir.join("imgs"), &["cat", "dog"], 8);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let cfg = tiny_config_on(&dir, &data, &a);
    ok(&["train", "--config", s(&cfg), "--steps", "2", "--quiet"]);
    ok(&["train", "--config", s(&cfg), "--out", s(&b), "--steps", "2", "--quiet"]);
    let b_state = std::fs::read(b.join("train_state.safetensors")).unwrap();

    // No --config, no --arch, no --out: the run's own config and folder.
    let (success, out, err) = sop_in(&dir, &["train", "--resume", s(&a), "--steps", "3", "--quiet"]);
    assert!(success, "{out}\n{err}");
    assert!(!dir.join("runs").exists(), "a resumed run wrote into ./runs/default");
    assert_eq!(step_of(&a, "train_state.safetensors"), "3");
    let data_line = err.lines().find(|l| l.starts_with("data:")).unwrap_or_else(|| panic!("no data line: {err}"));
    assert!(data_line.contains(s(&data)) && data_line.contains(s(&a)), "{data_line}");

    // A crash after the checkpoint of step 3 left lines of steps 4 and 5; resuming drops them.
    let mut text = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    text.push_str("{\"step\":4,\"loss\":1.0}\n{\"step\":5,\"loss\":1.0}\n");
    std::fs::write(a.join("metrics.jsonl"), text).unwrap();
    ok(&["train", "--resume", s(&a), "--steps", "5", "--quiet"]);
    assert_eq!(metric_steps(&a), vec![1, 2, 3, 4, 5]);

    // --out naming a folder that holds another run is refused, and that run is untouched.
    let (success, _, err) = sop(&["train", "--resume", s(&a), "--out", s(&b), "--steps", "6", "--quiet"]);
    assert!(!success && err.contains("already holds a training run"), "{err}");
    assert_eq!(std::fs::read(b.join("train_state.safetensors")).unwrap(), b_state);
    // --out naming a new folder moves the run there, with its metrics up to the checkpoint.
    let c = dir.join("c");
    ok(&["train", "--resume", s(&a), "--out", s(&c), "--steps", "6", "--quiet"]);
    assert_eq!(step_of(&c, "teacher.safetensors"), "6");
    assert_eq!(step_of(&a, "teacher.safetensors"), "5");
    assert_eq!(metric_steps(&c), vec![1, 2, 3, 4, 5, 6]);
}

/// Items 2, 4, 5 and 12: a new run refuses a folder holding any file it would write, naming
/// it; a run stopped before its first checkpoint is described as such, both when started
/// again and when resumed; `--out` naming a file is refused in words.
#[test]
fn a_new_run_refuses_a_folder_with_files_it_would_write() {
    let dir = tmp("out-guard");
    let data = class_folder(&dir.join("imgs"), &["cat", "dog"], 8);
    let cfg = tiny_config_on(&dir, &data, &dir.join("unused"));
    for file in ["config.toml", "metrics.jsonl"] {
        let out = dir.join(format!("own-{file}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(file), "mine\n").unwrap();
        let (success, _, err) = sop(&["train", "--config", s(&cfg), "--out", s(&out), "--steps", "1", "--quiet"]);
        assert!(!success && err.contains(file), "{file}: {err}");
        assert_eq!(std::fs::read_to_string(out.join(file)).unwrap(), "mine\n", "{file} was written to");
    }
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (success, _, err) = sop(&["train", "--config", s(&cfg), "--out", s(&file), "--steps", "1", "--quiet"]);
    assert!(!success && err.contains("is a file"), "{err}");

    // A run stopped by a non-finite loss at step 2, before any checkpoint.
    let mut c = sop::train::config::TrainConfig::smoke(data.clone(), dir.join("stopped"));
    c.run.no_eval = true;
    c.optim.lr = 1e36;
    c.optim.clip_grad = 0.0;
    c.run.checkpoint_every = 0;
    let bad = dir.join("diverges.toml");
    std::fs::write(&bad, c.to_toml()).unwrap();
    let stopped = dir.join("stopped");
    let (success, _, err) = sop(&["train", "--config", s(&bad), "--steps", "4", "--quiet"]);
    assert!(!success && err.contains("not finite") && err.contains("no checkpoint had been written"), "{err}");
    assert!(!err.contains("kept as it was"), "{err}");
    assert!(stopped.join("config.toml").exists() && !stopped.join("train_state.safetensors").exists());
    let (success, _, err) = sop(&["train", "--config", s(&cfg), "--out", s(&stopped), "--steps", "1", "--quiet"]);
    assert!(!success && err.contains("config.toml") && err.contains("before its first checkpoint"), "{err}");
    let (success, _, err) = sop(&["train", "--resume", s(&stopped), "--steps", "1", "--quiet"]);
    assert!(!success && err.contains("nothing to resume") && err.contains("before its first checkpoint"), "{err}");
}

/// Item 3: no command writes over one of its inputs; an existing file needs --force.
#[test]
fn outputs_never_overwrite_inputs_and_need_force_over_files() {
    let dir = tmp("outputs");
    let data = class_folder(&dir.join("imgs"), &["cat", "dog"], 8);
    let run = dir.join("run");
    let cfg = tiny_config_on(&dir, &data, &run);
    ok(&["train", "--config", s(&cfg), "--steps", "0", "--quiet"]);
    let teacher = run.join("teacher.safetensors");
    let before = std::fs::read(&teacher).unwrap();
    for force in [false, true] {
        let mut args = vec!["embed", "--weights", s(&teacher), "--data", s(&data), "--out", s(&teacher)];
        if force {
            args.push("--force");
        }
        let (success, _, err) = sop(&args);
        assert!(!success && err.contains("is also an input"), "{err}");
        assert_eq!(std::fs::read(&teacher).unwrap(), before, "the checkpoint was overwritten");
    }
    let img = data.join("cat/0.png");
    let (success, _, err) = sop(&["attention", "--weights", s(&teacher), "--image", s(&img), "--out", s(&img)]);
    assert!(!success && err.contains("is also an input"), "{err}");
    let (success, _, err) = sop(&["preview", "--data", s(&data), "--out", s(&img)]);
    assert!(!success && err.contains("is also an input"), "{err}");

    let emb = dir.join("emb.safetensors");
    std::fs::write(&emb, "not mine to lose").unwrap();
    let (success, _, err) = sop(&["embed", "--weights", s(&teacher), "--data", s(&data), "--out", s(&emb)]);
    assert!(!success && err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&emb).unwrap(), "not mine to lose");
    ok(&["embed", "--weights", s(&teacher), "--data", s(&data), "--out", s(&emb), "--force"]);
    assert_eq!(sop::checkpoint::read(&emb).unwrap().tensors["features"].shape, vec![16, 16]);
}

/// Items 6 and 7: val classes are matched to train classes by name; a val class missing
/// from train is refused; with no held-out split nothing is reported as val accuracy.
#[test]
fn eval_matches_classes_by_name_and_needs_a_held_out_split() {
    let dir = tmp("classes");
    let train = class_folder(&dir.join("train"), &["cat", "dog"], 8);
    // val/dog holds exact copies of train/dog: k = 1 must be right on every one.
    let val = dir.join("val");
    std::fs::create_dir_all(val.join("dog")).unwrap();
    for i in 0..8 {
        std::fs::copy(train.join(format!("dog/{i}.png")), val.join(format!("dog/{i}.png"))).unwrap();
    }
    let run = dir.join("run");
    let cfg = tiny_config_on(&dir, &train, &run);
    ok(&["train", "--config", s(&cfg), "--steps", "0", "--quiet"]);
    let w = run.join("teacher.safetensors");
    let top1 = |args: &[&str]| -> f64 {
        let v: serde_json::Value = serde_json::from_str(ok(args).trim()).unwrap();
        v["top1"].as_f64().unwrap()
    };
    let t1 = top1(&["eval", "knn-pixels", "--train", s(&train), "--val", s(&val), "--size", "8", "--k", "1", "--json"]);
    assert_eq!(t1, 100.0, "knn-pixels");
    let t1 = top1(&["eval", "knn", "--weights", s(&w), "--train", s(&train), "--val", s(&val), "--k", "1", "--json"]);
    assert_eq!(t1, 100.0, "knn");
    let t1 = top1(&["eval", "linear", "--weights", s(&w), "--train", s(&train), "--val", s(&val), "--json"]);
    assert!(t1 >= 75.0, "linear: {t1}");

    let other = class_folder(&dir.join("other"), &["bird", "fish"], 2);
    for args in [
        vec!["eval", "knn-pixels", "--train", s(&train), "--val", s(&other), "--size", "8"],
        vec!["eval", "knn", "--weights", s(&w), "--train", s(&train), "--val", s(&other)],
        vec!["eval", "linear", "--weights", s(&w), "--train", s(&train), "--val", s(&other)],
    ] {
        let (success, _, err) = sop(&args);
        assert!(!success && err.contains("bird") && err.contains("fish"), "{args:?}: {err}");
    }

    // No held-out split: refused, saying how to give one.
    for args in [
        vec!["eval", "knn-pixels", "--train", s(&train), "--size", "8"],
        vec!["eval", "knn", "--weights", s(&w), "--train", s(&train)],
        vec!["eval", "linear", "--weights", s(&w), "--train", s(&train), "--val", s(&train)],
    ] {
        let (success, _, err) = sop(&args);
        assert!(!success && err.contains("--val"), "{args:?}: {err}");
    }
    let mut c = sop::train::config::TrainConfig::smoke(train.clone(), dir.join("run2"));
    c.run.no_eval = false;
    let with_eval = dir.join("eval.toml");
    std::fs::write(&with_eval, c.to_toml()).unwrap();
    let (success, _, err) = sop(&["train", "--config", s(&with_eval), "--steps", "1", "--quiet"]);
    assert!(!success && err.contains("--knn-val") && err.contains("no held-out split"), "{err}");
    let out = ok(&["train", "--config", s(&with_eval), "--knn-val", s(&val), "--steps", "1", "--quiet"]);
    assert!(out.contains("k-NN after") && out.contains("8 val"), "{out}");
}

/// Item 8: a weights file holding NaN or Inf is refused by every command that loads it,
/// naming the tensor and the index.
#[test]
fn non_finite_weights_are_refused() {
    let dir = tmp("nan");
    let data = class_folder(&dir.join("imgs"), &["cat", "dog"], 8);
    let val = class_folder(&dir.join("val"), &["cat", "dog"], 2);
    let run = dir.join("run");
    let cfg = tiny_config_on(&dir, &data, &run);
    ok(&["train", "--config", s(&cfg), "--steps", "0", "--quiet"]);
    let mut ckpt = sop::checkpoint::read(&run.join("teacher.safetensors")).unwrap();
    let name = "backbone.blocks.0.attn.qkv.weight";
    ckpt.tensors.get_mut(name).unwrap().data[16 + 3] = f32::NAN;
    let bad = dir.join("nan.safetensors");
    sop::checkpoint::save(&bad, &ckpt.tensors, &ckpt.metadata).unwrap();
    let img = data.join("cat/0.png");
    for args in [
        vec!["embed", "--weights", s(&bad), "--data", s(&data), "--out", s(&dir.join("e.safetensors"))],
        vec!["eval", "knn", "--weights", s(&bad), "--train", s(&data), "--val", s(&val)],
        vec!["eval", "linear", "--weights", s(&bad), "--train", s(&data), "--val", s(&val)],
        vec!["attention", "--weights", s(&bad), "--image", s(&img), "--out", s(&dir.join("a.png"))],
    ] {
        let (success, _, err) = sop(&args);
        assert!(!success && err.contains(name) && err.contains("NaN") && err.contains("[1, 3]"), "{args:?}: {err}");
    }
    assert!(!dir.join("e.safetensors").exists() && !dir.join("a.png").exists());
}

/// Item 10: symbolic links are followed once: a link to `..` does not loop and a link to a
/// sibling class does not put its images under the wrong label.
#[test]
fn symlinked_folders_are_visited_once() {
    let dir = tmp("links");
    let train = class_folder(&dir.join("train"), &["cat", "dog"], 8);
    std::os::unix::fs::symlink("../dog", train.join("cat/to-dog")).unwrap();
    std::os::unix::fs::symlink("..", train.join("cat/up")).unwrap();
    std::os::unix::fs::symlink("..", train.join("dog/up")).unwrap();
    std::os::unix::fs::symlink("0.png", train.join("dog/again.png")).unwrap();
    let png = dir.join("preview.png");
    let args = [
        "preview",
        "--data",
        s(&train),
        "--out",
        s(&png),
        "--n",
        "2",
        "--global-size",
        "8",
        "--local-size",
        "4",
        "--patch-size",
        "4",
    ];
    let (success, err) = sop_within(120, &args);
    assert!(success, "preview did not finish: {err}");
    assert!(err.contains("skipped") && err.contains("to-dog"), "{err}");
    let val = class_folder(&dir.join("val"), &["cat", "dog"], 8);
    let json = ok(&["eval", "knn-pixels", "--train", s(&train), "--val", s(&val), "--size", "8", "--k", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((v["n_train"].as_u64(), v["top1"].as_f64()), (Some(16), Some(100.0)), "{v}");
}

/// Item 9: parameters that made no sense are refused.
#[test]
fn senseless_parameters_are_refused() {
    let dir = tmp("senseless");
    let data = class_folder(&dir.join("train"), &["cat", "dog"], 4);
    let val = class_folder(&dir.join("val"), &["cat", "dog"], 1);
    let (success, _, err) =
        sop(&["eval", "knn-pixels", "--train", s(&data), "--val", s(&val), "--size", "8", "--temperature", "0"]);
    assert!(!success && err.contains("temperature"), "{err}");
    let run = dir.join("run");
    let tiny = tiny_config_on(&dir, &data, &run);
    ok(&["train", "--config", s(&tiny), "--steps", "0", "--quiet"]);
    let (success, _, err) = sop(&["prototypes", "--run", s(&run), "--out", s(&dir.join("p.png")), "--n", "0"]);
    assert!(!success && err.contains("--n 0"), "{err}");
    let cfg = dir.join("zero.toml");
    std::fs::write(&cfg, "[optim]\nepochs = 0\n").unwrap();
    let (success, _, err) = sop(&["train", "--config", s(&cfg), "--out", s(&dir.join("r")), "--quiet"]);
    assert!(!success && err.contains("optim.epochs"), "{err}");
}

/// Item 13: with no --data, the bundled subset is found from any working directory.
#[test]
fn the_default_data_is_found_from_any_folder() {
    let dir = tmp("anywhere");
    let (success, out, err) = sop_in(&dir, &["train", "--steps", "0", "--no-eval", "--quiet"]);
    assert!(success, "{out}\n{err}");
    assert!(err.contains("data:") && err.contains("fashion-mnist"), "{err}");
    assert!(dir.join("runs/default/teacher.safetensors").exists());
}

/// Item 12: messages that say what is wrong, once.
#[test]
fn messages_say_what_is_wrong_once() {
    let dir = tmp("messages");
    // A timm-style file (no `backbone.` prefix, no metadata) of 2 blocks of dim 32, loaded as
    // vit_small: what the file holds, not a list of missing tensors.
    let fixture = sop::checkpoint::read(&root().join("kernels-tests/fixtures/vit_tiny.safetensors")).unwrap();
    let timm: sop::checkpoint::TensorMap = fixture
        .tensors
        .into_iter()
        .filter(|(n, _)| n.starts_with("backbone.") && n != "backbone.masked_embed")
        .map(|(n, t)| (n["backbone.".len()..].to_string(), t))
        .collect();
    let path = dir.join("timm.safetensors");
    sop::checkpoint::save(&path, &timm, &Default::default()).unwrap();
    let data = class_folder(&dir.join("imgs"), &["cat", "dog"], 2);
    let out = dir.join("e.safetensors");
    let (success, _, err) =
        sop(&["embed", "--weights", s(&path), "--arch", "vit_small", "--data", s(&data), "--out", s(&out)]);
    assert!(!success && err.contains("2 blocks of dim 32") && err.contains("vit_small"), "{err}");
    assert!(!err.contains("missing tensor"), "{err}");
    // A missing file: the OS message once.
    let absent = dir.join("absent.safetensors");
    let (success, _, err) = sop(&["embed", "--weights", s(&absent), "--data", s(&data), "--out", s(&out)]);
    assert!(!success && err.matches("No such file").count() == 1, "{err}");
    // A negative count is read as a value and refused in words.
    let (success, _, err) = sop(&["train", "--batch-size", "-1"]);
    assert!(!success && err.contains("--batch-size") && err.contains("-1"), "{err}");
    assert!(!err.contains("unexpected argument"), "{err}");
}

/// A start refused before training (too few images for one step) writes no run folder, so
/// the same command with a fitting batch then starts; a `SOP_DEVICE_MEMORY` that is not a
/// size is refused by name, never replaced by another source.
#[test]
fn a_refused_start_leaves_no_folder_and_a_bad_memory_figure_is_refused() {
    let dir = tmp("refused-start");
    let out = dir.join("run");
    let (okay, _, err) =
        sop(&["train", "--quiet", "--no-eval", "--steps", "1", "--batch-size", "2001", "--out", s(&out)]);
    assert!(!okay && err.contains("fewer than one step"), "{err}");
    assert!(!out.exists(), "a refused start wrote {}", out.display());

    let cmd = Command::new(env!("CARGO_BIN_EXE_sop"))
        .args(["train", "--quiet", "--no-eval", "--steps", "1", "--batch-size", "auto", "--out", s(&out)])
        .env("SOP_DEVICE_MEMORY", "lots")
        .output()
        .expect("sop runs");
    let err = String::from_utf8_lossy(&cmd.stderr);
    assert!(!cmd.status.success() && err.contains("SOP_DEVICE_MEMORY=\"lots\""), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
