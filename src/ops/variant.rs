//! The choice of kernel variant shared by the op families that have several (matmul,
//! attention, soft assignment): each family's enum implements `Variant`, and the functions
//! here do the rest the same way for all of them: the `SOP_<FAMILY>` override, a resumed
//! run's pin, the GPU autotune (timing loop and on-disk cache, src/ops/autotune_cache.rs),
//! and the recorded variant in a checkpoint's metadata. Each family keeps its own enum, its
//! CPU rule and what it does with an override the adapter cannot run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::ops::autotune_cache;

/// One op family's kernel variants.
pub trait Variant: Copy + PartialEq + std::fmt::Debug + 'static {
    /// The family's key: in the device's `KernelChoices`, the autotune cache and the train
    /// state's metadata ("matmul").
    const FAMILY: &'static str;
    /// The environment variable that overrides the choice ("SOP_MATMUL").
    const ENV: &'static str;
    /// The family in messages about variants ("soft-assign": "not a soft-assign variant").
    const KIND: &'static str;
    /// The op in messages about a run ("soft assignment": "the run used the flash soft assignment").
    const OP: &'static str;
    /// What a failed or empty autotune leaves in use.
    const FALLBACK: Self;
    /// The shape the autotune's timings are cached with.
    const TUNE_SHAPE: (usize, usize, usize);

    /// Every variant, in the order the autotune times them.
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
    /// Whether `gpu` can run this variant.
    fn runs_on(self, _gpu: &Gpu) -> bool {
        true
    }
    /// Median milliseconds of each variant `gpu` runs, on the family's autotune shape.
    fn autotune(gpu: &Gpu) -> Result<Vec<(Self, f64)>>;
}

/// The variant called `s`, if any.
pub fn parse<V: Variant>(s: &str) -> Option<V> {
    V::all().iter().copied().find(|v| v.name() == s)
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// `V::ENV`, if set: a variant name, or an error that lists the valid ones.
pub fn from_env<V: Variant>() -> Result<Option<V>> {
    match std::env::var(V::ENV) {
        Err(_) => Ok(None),
        Ok(s) => parse(&s).map(Some).ok_or_else(|| {
            let names: Vec<&str> = V::all().iter().map(|v| v.name()).collect();
            SopError::Invalid(format!(
                "{}={s:?} is not {} {} variant (one of {})",
                V::ENV,
                article(V::KIND),
                V::KIND,
                names.join(", ")
            ))
        }),
    }
}

/// The variant fixed for this device, fixing `choose()`'s when none is (once per device).
pub fn fixed<V: Variant>(gpu: &Gpu, choose: impl FnOnce() -> Result<V>) -> Result<V> {
    let name = gpu.kernel_choices.get_or_try_set(V::FAMILY, || choose().map(V::name))?;
    Ok(parse(name).expect("only variant names are stored"))
}

/// Use `v` on this device from now on: a resumed run keeps the variant it started with (the
/// variants round differently). False when another is already fixed.
pub fn pin<V: Variant>(gpu: &Gpu, v: V) -> bool {
    gpu.kernel_choices.get_or_try_set(V::FAMILY, || Ok(v.name())).is_ok_and(|name| name == v.name())
}

/// On resume: pin the variant the run recorded, or warn that the resumed run may differ in
/// rounding (the adapter cannot run it, or this process already uses another).
pub fn pin_or_warn<V: Variant>(gpu: &Gpu, recorded: Option<V>) {
    let Some(v) = recorded else { return };
    let (name, op) = (v.name(), V::OP);
    if !v.runs_on(gpu) {
        log::warn!("the run used the {name} {op}, which {} cannot run; continuing with its own, so the resumed run may differ in rounding", gpu.adapter_name());
    } else if !pin(gpu, v) {
        log::warn!(
            "the run used the {name} {op}; this process already uses another, so the resumed run may differ in rounding"
        );
    }
}

/// A GPU's timed choice: the cached one (if this adapter can run it), else the autotune's
/// fastest (logged and cached for later runs), else `V::FALLBACK` with a warning.
pub fn tuned<V: Variant>(gpu: &Gpu) -> V {
    if let Some(v) = autotune_cache::load(gpu, V::FAMILY).and_then(|n| parse::<V>(&n)) {
        if v.runs_on(gpu) {
            log::info!("{} variant for {}: {} (cached)", V::KIND, gpu.adapter_name(), v.name());
            return v;
        }
    }
    let fallback = V::FALLBACK.name();
    match V::autotune(gpu) {
        Ok(timings) if !timings.is_empty() => {
            let (best, _) = fastest(&timings);
            let all: Vec<String> = timings.iter().map(|(v, ms)| format!("{} {ms:.3} ms", v.name())).collect();
            log::info!("{} variant for {}: {} ({})", V::KIND, gpu.adapter_name(), best.name(), all.join(", "));
            let named: Vec<(&str, f64)> = timings.iter().map(|&(v, ms)| (v.name(), ms)).collect();
            autotune_cache::store(gpu, V::FAMILY, best.name(), V::TUNE_SHAPE, &named);
            return best;
        }
        Ok(_) => log::warn!("{} autotune timed nothing; using {fallback}", V::KIND),
        Err(e) => log::warn!("{} autotune failed ({e}); using {fallback}", V::KIND),
    }
    V::FALLBACK
}

/// The variant with the smallest time and its time (the first on ties; `V::FALLBACK` at
/// infinity when nothing was timed).
pub fn fastest<V: Variant>(timings: &[(V, f64)]) -> (V, f64) {
    timings.iter().copied().fold((V::FALLBACK, f64::INFINITY), |best, t| if t.1 < best.1 { t } else { best })
}

/// Median of 3 samples of milliseconds per `run`, each sample `iters` runs back to back and
/// one wait (a single run followed by a wait would time the wait), after one warm-up run
/// that also builds the pipelines.
pub fn median_ms(gpu: &Gpu, iters: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    run()?;
    gpu.sync()?;
    let mut ms = Vec::with_capacity(3);
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            run()?;
        }
        gpu.sync()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3 / iters as f64);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[1])
}

/// The variant a train state's metadata records under `V::FAMILY`: None when absent (states
/// written before it was recorded, or runs that do not record it), an error naming `file`
/// when it is no variant.
pub fn recorded<V: Variant>(file: &Path, meta: &BTreeMap<String, String>) -> Result<Option<V>> {
    let Some(v) = meta.get(V::FAMILY) else { return Ok(None) };
    let msg = format!("metadata {} {v:?} is not {} {} variant (a damaged file?)", V::FAMILY, article(V::KIND), V::KIND);
    parse(v).map(Some).ok_or_else(|| SopError::file(file, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention_variant::AttentionVariant;
    use crate::ops::matmul::MatmulVariant;
    use crate::ops::soft_assign_variant::SoftAssignVariant;

    /// Every family's names round-trip, and a damaged record names the file and the family.
    #[test]
    fn names_round_trip_and_damaged_records_are_refused() {
        fn check<V: Variant>(expect: &str) {
            assert!(V::all().iter().all(|&v| parse::<V>(v.name()) == Some(v)));
            let file = Path::new("/runs/a/train_state.safetensors");
            let mut meta = BTreeMap::new();
            assert_eq!(recorded::<V>(file, &meta).unwrap(), None);
            meta.insert(V::FAMILY.to_string(), V::FALLBACK.name().to_string());
            assert_eq!(recorded::<V>(file, &meta).unwrap(), Some(V::FALLBACK));
            meta.insert(V::FAMILY.to_string(), "nonsense".to_string());
            let e = recorded::<V>(file, &meta).unwrap_err().to_string();
            assert!(e.contains("train_state.safetensors") && e.contains(expect), "{e}");
        }
        check::<MatmulVariant>("metadata matmul \"nonsense\" is not a matmul variant");
        check::<SoftAssignVariant>("metadata soft_assign \"nonsense\" is not a soft-assign variant");
        check::<AttentionVariant>("metadata attention \"nonsense\" is not an attention variant");
    }
}
