//! The paper recipe end to end at its real size: ViT-S/16 at 224 px with the 2048-wide head,
//! full-size banks (65,536 and 8,192 rows) and 10 local crops of 96 px, on JPEGs the test
//! generates, at batch 2 through the `sop` binary: one step, then a resume to step 2. The
//! loss is finite, the memory plan is printed, metrics.jsonl carries the pool's peak, the
//! checkpoint carries the architecture and reloads. About 30 s of CPU per step on lavapipe.

use std::path::Path;
use std::process::Command;

fn sop(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sop")).args(args).output().expect("sop runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sop {args:?} failed:\n{stdout}\n{stderr}");
    format!("{stdout}{stderr}")
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn vit_small_16_at_224_px_trains_checkpoints_and_resumes() {
    let dir = std::env::temp_dir().join(format!("sop-test-224-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, run) = (dir.join("jpegs"), dir.join("run"));
    sop::data::synthetic::write_jpegs(&data, 4, 500, 375, 1, 7).unwrap();
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let log = sop(&[
        "train",
        "--recipe",
        "paper",
        "--data",
        d,
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--no-eval",
        "--quiet",
        "--out",
        r,
    ]);
    assert!(log.contains("memory plan:") && log.contains("M parameters"), "{log}");
    let m = metrics(&run);
    assert_eq!(m.len(), 1);
    assert!(m[0]["loss"].as_f64().unwrap().is_finite(), "{:?}", m[0]);
    // A 224 px ViT-S step holds far more than 100 MiB (the banks alone are 72 MiB).
    assert!(m[0]["peak_memory_bytes"].as_u64().unwrap() > 100 << 20, "{:?}", m[0]);

    // The checkpoint names its architecture and reloads under it.
    let student = run.join("student.safetensors");
    let meta = sop::checkpoint::read_metadata(&student).unwrap();
    let want =
        [("arch", "vit_small"), ("patch_size", "16"), ("img_size", "224"), ("head_hidden", "2048"), ("step", "1")];
    for (k, v) in want {
        assert_eq!(meta.get(k).map(String::as_str), Some(v), "{k} in {meta:?}");
    }
    let cfg = sop::checkpoint::config_from_metadata(&meta).unwrap().unwrap();
    let specs = sop::model::params::param_specs(&cfg);
    let ck = sop::checkpoint::load(&student, &specs).unwrap();
    let params: usize = ck.tensors.values().map(|t| t.data.len()).sum();
    assert!((21_000_000..28_000_000).contains(&params), "{params}");
    let saved = sop::train::state::saved_config(&run).unwrap();
    assert_eq!((saved.sop.cls_bank_size, saved.sop.patch_bank_size, saved.augment.local_crops), (65_536, 8_192, 10));

    // Resumed in place for one more step, from its own saved configuration.
    sop(&["train", "--resume", r, "--steps", "2", "--quiet"]);
    let m = metrics(&run);
    assert_eq!(m.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert!(m[1]["loss"].as_f64().unwrap().is_finite(), "{:?}", m[1]);
    assert_eq!(sop::checkpoint::read_metadata(&student).unwrap()["step"], "2");
    let _ = std::fs::remove_dir_all(&dir);
}
