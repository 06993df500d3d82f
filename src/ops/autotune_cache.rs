//! The autotune's choices kept on disk, per adapter, driver and sop version, so later runs
//! start at once: `<cache>/sop/autotune.json`, where `<cache>` is `$SOP_CACHE_DIR`, else
//! `$XDG_CACHE_HOME`, else `$HOME/.cache`. A missing, unreadable or stale entry is ignored
//! (the autotune runs and rewrites it); a failed write is a warning, never an error.
//!
//! File: `{ "<adapter key>": { "<op family>": { "choice": "blocked_128", "shape": [m, k, n],
//! "ms": { "<variant>": median ms, … } } } }`.

use std::path::{Path, PathBuf};

use crate::gpu::Gpu;

/// The cache file, if a cache folder can be named.
pub fn cache_file() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir =
        var("SOP_CACHE_DIR").or_else(|| var("XDG_CACHE_HOME")).or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(dir.join("sop").join("autotune.json"))
}

/// What a cached choice is valid for: the adapter, its backend and driver, and this build.
pub fn adapter_key(gpu: &Gpu) -> String {
    let i = &gpu.info;
    format!("{} | {:?} | {} {} | sop {}", i.name, i.backend, i.driver, i.driver_info, env!("CARGO_PKG_VERSION"))
}

/// The choice stored for (key, family) in `file`, if any.
pub fn load_from(file: &Path, key: &str, family: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get(key)?.get(family)?.get("choice")?.as_str().map(str::to_string)
}

/// Store (key, family) → choice with its timings in `file`, keeping every other entry.
pub fn store_into(
    file: &Path,
    key: &str,
    family: &str,
    choice: &str,
    shape: (usize, usize, usize),
    timings: &[(&str, f64)],
) -> std::io::Result<()> {
    let mut v: serde_json::Value = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let ms: serde_json::Map<String, serde_json::Value> =
        timings.iter().map(|&(name, ms)| (name.to_string(), ms.into())).collect();
    let entry = serde_json::json!({ "choice": choice, "shape": [shape.0, shape.1, shape.2], "ms": ms });
    let adapter = v.as_object_mut().expect("an object").entry(key).or_insert_with(|| serde_json::json!({}));
    if !adapter.is_object() {
        *adapter = serde_json::json!({});
    }
    adapter.as_object_mut().expect("an object").insert(family.to_string(), entry);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written whole, then renamed: a reader never sees half a file.
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&v).expect("serialisable"))?;
    std::fs::rename(&tmp, file)
}

/// The cached choice of `family` for this device.
pub fn load(gpu: &Gpu, family: &str) -> Option<String> {
    load_from(&cache_file()?, &adapter_key(gpu), family)
}

/// Remember `choice` for this device (a warning if the file cannot be written).
pub fn store(gpu: &Gpu, family: &str, choice: &str, shape: (usize, usize, usize), timings: &[(&str, f64)]) {
    let Some(file) = cache_file() else { return };
    if let Err(e) = store_into(&file, &adapter_key(gpu), family, choice, shape, timings) {
        log::warn!("could not write the autotune cache {}: {e}", file.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_round_trip_and_keep_other_entries() {
        let dir = std::env::temp_dir().join(format!("sop-autotune-cache-{}", std::process::id()));
        let file = dir.join("sop").join("autotune.json");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load_from(&file, "gpu a", "matmul"), None);
        store_into(&file, "gpu a", "matmul", "blocked_128", (4, 5, 6), &[("naive", 1.5), ("blocked_128", 0.3)])
            .unwrap();
        store_into(&file, "gpu b", "matmul", "tiled_shared", (4, 5, 6), &[("tiled_shared", 0.2)]).unwrap();
        assert_eq!(load_from(&file, "gpu a", "matmul").as_deref(), Some("blocked_128"));
        assert_eq!(load_from(&file, "gpu b", "matmul").as_deref(), Some("tiled_shared"));
        assert_eq!(load_from(&file, "gpu a", "attention"), None);
        // A damaged file is ignored and replaced.
        std::fs::write(&file, "{ not json").unwrap();
        assert_eq!(load_from(&file, "gpu a", "matmul"), None);
        store_into(&file, "gpu a", "matmul", "naive", (1, 1, 1), &[]).unwrap();
        assert_eq!(load_from(&file, "gpu a", "matmul").as_deref(), Some("naive"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
