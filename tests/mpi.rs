//! Data-parallel training over MPI (`cargo test --features mpi`; needs Open MPI's `mpirun`):
//! the `sop` binary on the tiny settings of tests/train.rs, 2 ranks of batch B/2 against one
//! process of batch B, the ranks' checkpoints bit for bit, a killed and a failing rank, and a
//! resume across rank counts.
//!
//! Two runs split differently add their gradients in another order, so they agree up to
//! float rounding, not bit for bit. The teacher moves by (1 − m)·Δstudent per step, far less
//! than its own rounding, so the runs are compared by their updates (weights − initial
//! weights), where a wrong split (gradients not averaged, draws keyed by the rank's place
//! rather than the global one, bank rows out of order) shows as an O(1) difference.
#![cfg(feature = "mpi")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sop::train::config::{Objective, TrainConfig};
use sop::train::state;
use support::{tiny, tmp, weights};

/// Largest relative difference of the updates allowed: float rounding of the gradient sums
/// (at most 3.0e-5 for the student and 2.5e-4 for the teacher, whose updates are near its
/// own rounding, measured on lavapipe), far below what a wrong split gives (> 1: mutations
/// of the drop-path keys or the bank rows' order).
const UPDATE_TOLERANCE: f64 = 2e-3;

fn sop_exe() -> &'static str {
    env!("CARGO_BIN_EXE_sop")
}

/// The tiny configuration as a file (every rank reads the same one).
fn config_file(dir: &Path) -> PathBuf {
    config_file_with(dir, |_| {})
}

/// `config_file` after `change`.
fn config_file_with(dir: &Path, change: impl FnOnce(&mut TrainConfig)) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("tiny.toml");
    let mut c = tiny(&dir.join("unused"));
    // Two blocks, so that the second one drops paths (rate 0.3): per-image draws matter.
    (c.model.depth, c.model.drop_path) = (2, 0.3);
    change(&mut c);
    std::fs::write(&p, c.to_toml()).unwrap();
    p
}

/// `sop` with `args` as `ranks` MPI ranks (0: no mpirun at all), every rank saving its
/// checkpoints.
fn sop_cmd(ranks: usize, args: &[&str]) -> Command {
    sop_cmd_env(ranks, &[], args)
}

/// `sop_cmd` with the environment variables `env` (`NAME=value`) set on every rank.
fn sop_cmd_env(ranks: usize, env: &[&str], args: &[&str]) -> Command {
    if ranks == 0 {
        let mut c = Command::new(sop_exe());
        c.args(args);
        return c;
    }
    let mut c = Command::new("mpirun");
    c.args(["-np", &ranks.to_string(), "--oversubscribe", "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1"]);
    for e in env {
        c.args(["-x", e]);
    }
    c.args(["-x", "SOP_SAVE_EVERY_RANK=1", sop_exe()]).args(args);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// `sop train` on the tiny config with `args`, as `ranks` MPI ranks (0: no mpirun).
fn train_cmd(ranks: usize, cfg: &Path, args: &[&str]) -> Command {
    sop_cmd(ranks, &[&["train", "--config", cfg.to_str().unwrap(), "--quiet", "--no-eval"][..], args].concat())
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e} (is Open MPI's mpirun installed?)"));
    assert!(
        out.status.success(),
        "{c:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Largest ‖Δa − Δb‖∞ / ‖Δa‖∞ over the tensors of `file`, Δ = weights − initial weights.
/// The key third of each qkv bias is left out: adding a constant to every key's logit of a
/// query leaves its softmax unchanged, so that gradient is 0 in exact arithmetic and pure
/// rounding in floats, which AdamW scales up to steps of their own.
fn update_difference(init: &Path, a: &Path, b: &Path, file: &str) -> (f64, String) {
    let (w0, wa, wb) = (weights(&init.join(file)), weights(&a.join(file)), weights(&b.join(file)));
    let mut worst = (0.0, String::new());
    for (name, t0) in &w0 {
        let n = t0.data.len();
        let key_bias = if name.ends_with("attn.qkv.bias") { n / 3..2 * n / 3 } else { 0..0 };
        let delta = |t: &[f32]| -> Vec<f64> {
            t.iter()
                .zip(&t0.data)
                .enumerate()
                .filter(|(i, _)| !key_bias.contains(i))
                .map(|(_, (x, y))| *x as f64 - *y as f64)
                .collect()
        };
        let (da, db) = (delta(&wa[name].data), delta(&wb[name].data));
        let scale = da.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if scale == 0.0 {
            assert!(db.iter().all(|x| *x == 0.0), "{file} {name}: moved in one run only");
            continue;
        }
        let diff = da.iter().zip(&db).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale;
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    worst
}

/// Student and teacher updates of runs `a` and `b` from `init` agree up to rounding (printed).
fn updates_agree(init: &Path, a: &Path, b: &Path, what: &str) {
    for file in [state::STUDENT, state::TEACHER] {
        let (d, name) = update_difference(init, a, b, file);
        println!("{file}: largest relative difference of the updates, {what}: {d:.3e} ({name})");
        assert!(d < UPDATE_TOLERANCE, "{file} {name}: updates differ by {d:.3e}");
    }
}

/// The banks of two runs' train states: rows up to rounding, sources exactly.
fn banks_difference(a: &Path, b: &Path) -> f64 {
    let (sa, sb) = (weights(&a.join(state::STATE)), weights(&b.join(state::STATE)));
    let mut worst = 0.0f64;
    for bank in ["cls_bank", "patch_bank"] {
        assert_eq!(sa[&format!("{bank}_sources")].data, sb[&format!("{bank}_sources")].data, "{bank} sources");
        for (x, y) in sa[bank].data.iter().zip(&sb[bank].data) {
            worst = worst.max((*x as f64 - *y as f64).abs() / (x.abs().max(y.abs()) as f64).max(1e-3));
        }
    }
    worst
}

fn same_bytes(a: &Path, b: &Path) {
    for f in [state::STUDENT, state::TEACHER, state::STATE] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f}: {} and {} differ", a.display(), b.display());
    }
}

/// A fresh folder `name` with the tiny config, its initial weights (`init/`) and `steps` steps
/// of one process of batch 8 without mpirun (`one/`): (folder, config, init, one).
fn reference_runs(name: &str, steps: usize) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    reference_runs_with(name, steps, |_| {})
}

/// `reference_runs` on the tiny config after `change`.
fn reference_runs_with(
    name: &str,
    steps: usize,
    change: impl FnOnce(&mut TrainConfig),
) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = tmp(name);
    let cfg = config_file_with(&dir, change);
    let (init, one) = (dir.join("init"), dir.join("one"));
    run_ok(train_cmd(0, &cfg, &["--steps", "0", "--out", init.to_str().unwrap()]));
    // Without mpirun, a --features mpi binary is one rank.
    let steps = steps.to_string();
    run_ok(train_cmd(0, &cfg, &["--steps", &steps, "--batch-size", "8", "--out", one.to_str().unwrap()]));
    (dir, cfg, init, one)
}

#[test]
fn two_ranks_of_half_the_batch_train_as_one_process_of_the_whole_batch() {
    let (dir, cfg, init, one) = reference_runs("mpi-equal", 5);
    let two = dir.join("two");
    let out = run_ok(train_cmd(2, &cfg, &["--steps", "5", "--batch-size", "4", "--out", two.to_str().unwrap()]));
    // Rank 0 alone reports the run.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("trained 5 steps").count(), 1, "{stdout}");

    // Both ranks hold the same bits.
    same_bytes(&two, &two.join("rank-1"));
    updates_agree(&init, &one, &two, "1 rank x 8 vs 2 ranks x 4");
    let d = banks_difference(&one, &two);
    println!("banks: largest relative difference of the rows: {d:.3e}");
    assert!(d < UPDATE_TOLERANCE, "banks differ by {d:.3e}");
    // The metrics (rank 0 writes them) average the loss over both ranks.
    let lines = std::fs::read_to_string(two.join(state::METRICS)).unwrap();
    assert_eq!(lines.lines().count(), 5, "{lines}");
    assert!(lines.contains("comm_ms"), "{lines}");
}

/// A change of the tiny configuration.
type ConfigChange = dyn Fn(&mut TrainConfig);

/// What is computed over the whole batch, not per image, follows the global batch on 2 ranks:
/// iBOT's centres (batch means, averaged over the ranks), SOP's [CLS] centring (likewise)
/// and KoLeo's nearest neighbours (over every rank's rows, gathered).
#[test]
fn batch_wide_terms_train_on_two_ranks_as_on_one() {
    let ibot = |c: &mut TrainConfig| {
        (c.objective, c.ibot.prototypes, c.ibot.freeze_last_layer_epochs) = (Objective::Ibot, 13, 0);
    };
    let koleo_centring = |c: &mut TrainConfig| (c.sop.koleo_weight, c.sop.center_teacher_cls) = (0.5, true);
    let cases: [(&str, &ConfigChange); 2] = [("mpi-ibot", &ibot), ("mpi-koleo-centring", &koleo_centring)];
    for (name, change) in cases {
        let (dir, cfg, init, one) = reference_runs_with(name, 3, change);
        let two = dir.join("two");
        run_ok(train_cmd(2, &cfg, &["--steps", "3", "--batch-size", "4", "--out", two.to_str().unwrap()]));
        same_bytes(&two, &two.join("rank-1"));
        updates_agree(&init, &one, &two, &format!("{name}: 1 rank x 8 vs 2 ranks x 4"));
    }
}

/// Metric lines of a run folder.
fn metric_lines(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join(state::METRICS)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_exchange_overlapped_with_the_backward_gives_the_same_bits() {
    let dir = tmp("mpi-overlap");
    let cfg = config_file(&dir);
    // Buckets of 256 elements: the tiny model's gradients make many, started as the last
    // micro-batch's backward finishes them (with accumulation only the last one overlaps).
    let run = |name: &str, overlap: &str| {
        let out = dir.join(name);
        let env = ["SOP_BUCKET_ELEMENTS=256", overlap];
        let args = ["--steps", "3", "--batch-size", "2", "--accumulate", "2", "--out", out.to_str().unwrap()];
        run_ok(sop_cmd_env(
            2,
            &env,
            &[&["train", "--config", cfg.to_str().unwrap(), "--quiet", "--no-eval"][..], &args].concat(),
        ));
        out
    };
    let (after, during) = (run("after", "SOP_GRAD_OVERLAP=0"), run("during", "SOP_GRAD_OVERLAP=1"));
    // Every tensor bit for bit (the saved configs differ in their run folder).
    for f in [state::STUDENT, state::TEACHER, state::STATE] {
        let (x, y) = (weights(&after.join(f)), weights(&during.join(f)));
        assert_eq!(x.len(), y.len(), "{f}");
        for (name, t) in &x {
            let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(bits(&t.data) == bits(&y[name].data), "{f} {name}: the overlapped run differs");
        }
    }
    same_bytes(&during, &during.join("rank-1"));
    let comm =
        |run: &Path| -> Vec<f64> { metric_lines(run).iter().map(|l| l["comm_ms"].as_f64().unwrap_or(0.0)).collect() };
    println!("comm_ms per step: exchange after the backward {:?}, overlapped {:?}", comm(&after), comm(&during));
}

#[test]
fn a_resume_on_another_rank_count_keeps_the_global_batch() {
    let (dir, cfg, init, one) = reference_runs("mpi-resume", 4);
    let split = dir.join("split");
    // 2 steps on 2 ranks of 4, then 2 more on one rank, which takes batch 8.
    run_ok(train_cmd(2, &cfg, &["--steps", "2", "--batch-size", "4", "--out", split.to_str().unwrap()]));
    let out = run_ok(sop_cmd(0, &["train", "--resume", split.to_str().unwrap(), "--steps", "4", "--quiet"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("batch 4 per rank becomes 8"), "{stderr}");
    updates_agree(&init, &one, &split, "1 rank throughout vs 2 ranks then 1");

    // A global batch of 3 cannot be split over 2 ranks: refused, naming why.
    let odd = dir.join("odd");
    run_ok(train_cmd(0, &cfg, &["--steps", "1", "--batch-size", "3", "--out", odd.to_str().unwrap()]));
    let mut c = sop_cmd(2, &["train", "--resume", odd.to_str().unwrap(), "--steps", "2", "--quiet"]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot split 3 images"), "{stderr}");
}

#[test]
fn a_global_batch_larger_than_the_banks_is_refused_at_the_start() {
    let dir = tmp("mpi-banks");
    let cfg = config_file(&dir);
    // The tiny banks hold 64 and 48 rows: one rank of 32 fits, two write 64 per step.
    let run = dir.join("run");
    let out =
        train_cmd(2, &cfg, &["--steps", "1", "--batch-size", "32", "--out", run.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("2 ranks x batch 32 x accumulate 1 write 64 rows into each bank"), "{stderr}");
    assert!(!run.join(state::STATE).exists(), "a refused run left a checkpoint");
}

/// `--batch-size auto` on several ranks caps the batch at the banks over the ranks (every
/// rank's rows go into the banks) instead of picking one rank's cap and being refused.
#[test]
fn an_automatic_batch_on_two_ranks_fits_the_banks() {
    let dir = tmp("mpi-auto-batch");
    let cfg = config_file(&dir);
    // The tiny banks hold 64 and 48 rows: 24 per rank on two ranks (48 alone).
    let run = dir.join("run");
    let out = run_ok(train_cmd(2, &cfg, &["--steps", "1", "--batch-size", "auto", "--out", run.to_str().unwrap()]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--batch-size auto: 24,"), "{stderr}");
    assert!(run.join(state::STATE).exists(), "no checkpoint");
}

/// The pids of the `sop` processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else { continue };
        let comm = &stat[stat.find('(').unwrap_or(0) + 1..close];
        let ppid = stat[close + 2..].split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if comm == "sop" && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_killed_rank_stops_the_run_within_seconds() {
    let dir = tmp("mpi-kill");
    let cfg = config_file(&dir);
    let mut c = train_cmd(2, &cfg, &["--steps", "100000", "--out", dir.join("run").to_str().unwrap()]);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until both ranks run (their processes exist) and have started training.
    let t0 = Instant::now();
    let ranks = loop {
        let r = children(child.id());
        if r.len() == 2 || t0.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ranks.len(), 2, "the two ranks did not start");
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none(), "the run ended before a rank was killed");
    let killed = Instant::now();
    unsafe { libc::kill(ranks[1] as i32, libc::SIGKILL) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the run did not stop within 30 s of a rank being killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    println!("a killed rank stopped the run in {:.1} s", killed.elapsed().as_secs_f64());
    assert!(!status.success(), "{stderr}");
}

#[test]
fn a_failing_rank_stops_every_rank_with_its_error() {
    let dir = tmp("mpi-fail");
    let cfg = config_file(&dir);
    let missing = dir.join("no-such-data");
    // MPMD: rank 1 alone is given a data folder that does not exist.
    let common = ["train", "--config", cfg.to_str().unwrap(), "--quiet", "--no-eval", "--steps", "100000"];
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1"]);
    c.args(["-np", "1", sop_exe()]).args(common).args(["--out", dir.join("run").to_str().unwrap()]);
    c.args([":", "-np", "1", sop_exe()]).args(common).args(["--out", dir.join("run").to_str().unwrap()]);
    c.args(["--data", missing.to_str().unwrap()]);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let t0 = Instant::now();
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("error on rank 1 of 2"), "{stderr}");
    assert!(stderr.contains("no-such-data"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
}

/// The gradient buckets' staging buffers are kept across steps whatever their size: a step
/// after the first creates no buffer, with buckets of 1.5 MiB (over the pool's usual 1 MiB
/// limit for staging, which used to make every step allocate and drop them).
#[test]
fn large_gradient_buckets_create_no_buffers_after_the_first_steps() {
    let dir = tmp("mpi-buckets");
    // A head of 640 hidden units: about 0.5 M gradient values, so buckets of 393,216 (1.5 MiB).
    let cfg = config_file_with(&dir, |c| c.model.head_hidden = 640);
    let out = dir.join("run");
    let env = ["SOP_BUCKET_ELEMENTS=393216"];
    let args = ["--steps", "5", "--batch-size", "2", "--out", out.to_str().unwrap()];
    run_ok(sop_cmd_env(
        2,
        &env,
        &[&["train", "--config", cfg.to_str().unwrap(), "--quiet", "--no-eval"][..], &args].concat(),
    ));
    let created: Vec<u64> = metric_lines(&out).iter().map(|l| l["buffers_created"].as_u64().unwrap()).collect();
    println!("buffers created per step: {created:?}");
    assert_eq!(created.len(), 5, "{created:?}");
    assert!(created[3..].iter().all(|&n| n == 0), "steps 4 and 5 created buffers: {created:?}");
}
