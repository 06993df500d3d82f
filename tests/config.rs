//! `TrainConfig::load`: every table of a config file overrides the default configuration key
//! by key, and an inconsistent result is refused naming the fields.

use sop::train::config::TrainConfig;

fn load(text: &str) -> Result<TrainConfig, String> {
    // A file per call: the tests run in parallel threads of one process.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("sop-test-config-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let r = TrainConfig::load(&path).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&path);
    r
}

#[test]
fn a_partial_table_keeps_the_other_defaults() {
    let d = TrainConfig::default();
    let c = load("[model]\nheads = 4\n").unwrap();
    assert_eq!(c.model.heads, 4);
    assert_eq!((c.model.dim, c.model.depth, c.model.patch_size, c.model.img_size), (d.model.dim, d.model.depth, 7, 28));
    c.validate().unwrap();
    let c = load("[model]\npatch_size = 7\n").unwrap();
    assert_eq!((c.model.dim, c.model.depth, c.model.img_size), (64, 3, 28));
    let c = load("[sop.cls]\nanchors = 16\n").unwrap();
    assert_eq!((c.sop.cls.anchors, c.sop.cls.experts, c.sop.cls.tasks), (16, d.sop.cls.experts, d.sop.cls.tasks));
    assert_eq!(c.sop.cls_bank_size, d.sop.cls_bank_size);
    let c = load("[augment]\nlocal_crops = 2\n").unwrap();
    assert_eq!((c.augment.local_crops, c.augment.global_size, c.augment.mask.patch_size), (2, 28, 7));
    // The full file round-trips.
    let c = load(&d.to_toml()).unwrap();
    assert_eq!(c.to_toml(), d.to_toml());
}

#[test]
fn unknown_keys_and_inconsistent_results_are_refused_by_name() {
    let err = load("[model]\npatchsize = 4\n").unwrap_err();
    assert!(err.contains("patchsize"), "{err}");
    let c = load("[model]\npatch_size = 4\n").unwrap();
    let err = c.validate().unwrap_err();
    assert!(matches!(err, sop::SopError::Config(_)), "a typed config error: {err:?}");
    let err = err.to_string();
    assert!(err.contains("model.patch_size") && err.contains("augment.local_size"), "{err}");
}
