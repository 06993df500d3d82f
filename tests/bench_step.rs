//! `sop bench --step` end to end: whole default-model training steps after the banks filled,
//! with the per-step counters; a steady-state step creates no buffers or bind groups and
//! never waits for the device.

use std::process::Command;

#[test]
fn bench_step_reports_steady_state_steps_and_counters() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sop")).args(["bench", "--step", "--steps", "2", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["steps_timed"], 2, "{r}");
    assert_eq!(r["batch_size"], 64, "{r}");
    assert!(r["ms_per_step"].as_f64().unwrap() > 0.0 && r["images_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["dispatches"].as_f64().unwrap() > 100.0, "{r}");
    // The pool and the cached bind groups make a steady-state step allocate nothing, and the
    // pool's fixed order makes it reuse every bind group; nothing in it waits for the device.
    assert_eq!(r["buffers_created"].as_f64().unwrap(), 0.0, "{r}");
    assert_eq!(r["bind_groups_created"].as_f64().unwrap(), 0.0, "{r}");
    assert_eq!(r["host_waits"].as_f64().unwrap(), 0.0, "{r}");
    assert!(r["host_ms"].as_f64().unwrap() > 0.0 && r["encode_ms"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn bench_step_options_need_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(["bench", "--img-size", "224"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--step"));
}

#[test]
fn bench_autotune_prints_every_variant() {
    let cache = std::env::temp_dir().join(format!("sop-bench-autotune-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_sop"))
        .args(["bench", "--autotune"])
        .env("SOP_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    for v in ["naive", "tiled_shared", "tiled_8x8", "blocked_128", "blocked_64"] {
        assert!(stdout.lines().any(|l| l.starts_with(v) && l.contains("GFLOP/s")), "{v} missing:\n{stdout}");
    }
    for v in ["tiled16", "matmul", "votes", "flash"] {
        assert!(stdout.lines().any(|l| l.starts_with(v) && l.contains("GFLOP/s")), "{v} missing:\n{stdout}");
    }
    // One fastest matmul and one fastest soft assignment.
    assert_eq!(stdout.matches("fastest").count(), 2, "{stdout}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bench_step_refuses_zero_timed_steps() {
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(["bench", "--step", "--steps", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps 0"), "{}", String::from_utf8_lossy(&out.stderr));
}
