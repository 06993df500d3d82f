//! The memory plan (`train::memory`) against what a step really holds: the buffer pool's
//! high-water mark that metrics.jsonl records, on a scaled-down paper recipe (two blocks of
//! width 64 on 32 px crops with 2 local crops, a 256-wide head) at two batch sizes.

use std::path::PathBuf;

use sop::train::config::TrainConfig;
use sop::train::memory::plan;
use sop::train::recipe::Recipe;

fn small_paper(out: PathBuf, batch: usize) -> TrainConfig {
    let mut c = Recipe::Paper.config(None).unwrap();
    c.data.path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    c.data.batch_size = batch;
    c.data.threads = 2;
    (c.model.dim, c.model.depth, c.model.heads, c.model.head_hidden) = (64, 2, 2, 256);
    c.set_shape(Some(4), Some(32));
    (c.augment.local_size, c.augment.local_crops) = (16, 2);
    (c.sop.cls_bank_size, c.sop.patch_bank_size) = (1024, 512);
    c.sop.cls = sop::sop::prototypes::PrototypeConfig { anchors: 16, experts: 5, tasks: 2 };
    c.sop.patch.anchors = 64;
    c.optim.steps = Some(2);
    c.run.out = out;
    c.run.no_eval = true;
    c.run.checkpoint_every = 0;
    c
}

/// (pool high-water mark, live high-water mark) of the last step's metrics line.
fn measured(out: &std::path::Path) -> (u64, u64) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    (last["peak_memory_bytes"].as_u64().unwrap(), last["peak_live_bytes"].as_u64().unwrap())
}

#[test]
fn the_plan_is_within_ten_percent_of_the_pools_high_water_mark() {
    for batch in [8, 24] {
        // A device of its own per run: the pool only grows, and keeps the other run's sizes.
        let gpu = sop::Gpu::new(None).unwrap_or_else(|e| panic!("needs a GPU adapter: {e}"));
        let out = std::env::temp_dir().join(format!("sop-test-memory-plan-{batch}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let cfg = small_paper(out.clone(), batch);
        let p = plan(&cfg, batch);
        sop::train::train(&gpu, cfg, None, false).unwrap();
        let (pool, live) = measured(&out);
        let ratio = pool as f64 / p.total() as f64;
        assert!((0.9..1.1).contains(&ratio), "batch {batch}: pool {pool} vs plan {} ({ratio:.3})", p.total());
        assert!(live <= p.total(), "batch {batch}: live peak {live} above the plan {}", p.total());
        let _ = std::fs::remove_dir_all(&out);
    }
}
