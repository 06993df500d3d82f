//! Named recipes: the base configuration a run starts from, before `--config` tables and
//! `--set key=value` override single keys on top of it (`resolve`).
//!
//! - `small`: the bundled quick run (`TrainConfig::default()`): a 3-block ViT of width 64 on
//!   28 px crops of the bundled Fashion-MNIST subset, sized for a CPU adapter. Its values
//!   live in `config.rs`'s `Default` impls; retuning it is an edit there.
//! - `paper`: the authors' configuration (docs/METHOD.md "Official defaults", /work spec
//!   SOP.md): ViT-S/16 at 224 px unless `--arch` says otherwise, head D → 2048 → 2048 → 256,
//!   drop path 0.1, banks 65,536 / 8,192, [CLS] 64 anchors / 9 SEs / 4 tasks, patch 512 / 1 /
//!   1, momentum 0.996 → 1, lr 5e-4 per 256 with 10 warm-up epochs and cosine to 1e-6, global
//!   crops scale (0.14, 1) with blur σ (0.1, 2), 10 local crops of 96 px (iBOT's ViT-S/16
//!   run, which the authors' code builds on), batch 128 per GPU, 100 epochs (the shortest
//!   schedule the paper reports).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SopError};
use crate::model::config::VitConfig;
use crate::sop::prototypes::PrototypeConfig;
use crate::train::config::TrainConfig;

/// A named base configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// The bundled quick run (28 px, a small ViT), the default.
    #[default]
    Small,
    /// The authors' configuration: ViT/16 at 224 px with every official value.
    Paper,
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Small => "small",
            Recipe::Paper => "paper",
        }
    }

    /// The recipe's configuration; `arch` picks the preset's width, depth and heads (the
    /// paper recipe's default is vit_small; the small recipe keeps its own 64 x 3 x 2).
    pub fn config(self, arch: Option<&str>) -> Result<TrainConfig> {
        let mut c = match self {
            Recipe::Small => TrainConfig::default(),
            Recipe::Paper => paper(),
        };
        if let Some(a) = arch {
            let p = VitConfig::from_arch(a)?;
            (c.model.dim, c.model.depth, c.model.heads) = (p.dim, p.depth, p.heads);
        }
        Ok(c)
    }
}

/// The authors' configuration for ViT-S/16 (every value the paper's runs use; the others, the
/// same in both recipes, are `TrainConfig::default()`'s).
fn paper() -> TrainConfig {
    let mut c = TrainConfig {
        // Patch 16, 224 px, head 2048 / 256 with 3 layers, drop path 0.1 rising with depth.
        model: VitConfig::vit_small(),
        // The authors' augmentation: 224 px globals at scale (0.14, 1), blur σ (0.1, 2), 96 px
        // locals at (0.05, 0.4); masks on the 14 x 14 grid of patch 16.
        augment: crate::data::AugmentConfig { local_crops: 10, ..Default::default() },
        ..Default::default()
    };
    c.data.batch_size = 128;
    c.sop.cls_bank_size = 65_536;
    c.sop.patch_bank_size = 8_192;
    c.sop.cls = PrototypeConfig { anchors: 64, experts: 9, tasks: 4 };
    c.sop.patch = PrototypeConfig { anchors: 512, experts: 1, tasks: 1 };
    // Both 0.04: the warm-up is a no-op, kept at the authors' 30 epochs.
    c.sop.warmup_teacher_temp_epochs = 30;
    c.optim.epochs = 100;
    c.optim.lr = 5e-4;
    c.optim.min_lr = 1e-6;
    c.optim.warmup_epochs = 10;
    c.optim.momentum_teacher = 0.996;
    c.optim.momentum_teacher_end = 1.0;
    c.run.out = "runs/paper".into();
    c
}

/// `key=value` of `--set`, split at the first `=`.
pub fn parse_set(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not key=value (e.g. sop.cls.anchors=32)")),
    }
}

/// `cfg` with one dotted key (`sop.cls.anchors`) set to `value`, typed by the configuration's
/// own schema: a string field takes the text as it is; any other value is read as TOML
/// (`0.5`, `true`, `[0.2, 1.0]`, `"text"`). An unknown key or a value of the wrong type is
/// refused, naming the key and the fields that exist.
pub fn set_key(cfg: &TrainConfig, key: &str, value: &str) -> Result<TrainConfig> {
    let bad = |m: String| SopError::Config(format!("--set {key}={value}: {m}"));
    let mut root = toml::Table::try_from(cfg).map_err(|e| bad(e.to_string()))?;
    let parts: Vec<&str> = key.split('.').collect();
    let (last, tables) = parts.split_last().expect("split yields one part at least");
    let mut table = &mut root;
    let mut path = String::new();
    for p in tables {
        let fields = table.keys().cloned().collect::<Vec<_>>().join(", ");
        table = match table.get_mut(*p) {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(bad(format!("{path}{p} is a value, not a table"))),
            None => {
                let at = if path.is_empty() { "the configuration" } else { path.trim_end_matches('.') };
                return Err(bad(format!("{at} has no table {p:?} (it has: {fields})")));
            }
        };
        path.push_str(p);
        path.push('.');
    }
    let parsed = match table.get(*last) {
        Some(toml::Value::String(_)) if !value.starts_with('"') => toml::Value::String(value.to_string()),
        Some(toml::Value::Table(_)) => return Err(bad(format!("{key} is a table; set one of its keys"))),
        existing => match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut t) => t.remove("v").expect("parsed key"),
            // An absent optional field (a path) with bare text: a string.
            Err(_) if existing.is_none() => toml::Value::String(value.to_string()),
            Err(e) => match existing {
                Some(v) => {
                    return Err(bad(format!("{value:?} is not of type {} (the current value is {v})", v.type_str())))
                }
                None => return Err(bad(format!("not a TOML value: {}", e.message()))),
            },
        },
    };
    table.insert(last.to_string(), parsed);
    let out: TrainConfig = root.try_into().map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
    // A key the schema does not hold is refused even where a table would ignore it.
    let back = toml::Table::try_from(&out).map_err(|e| bad(e.to_string()))?;
    let mut at = Some(&back);
    for p in tables {
        at = at.and_then(|t| t.get(*p)).and_then(|v| v.as_table());
    }
    if at.is_none_or(|t| !t.contains_key(*last)) {
        return Err(bad(format!("unknown key {last:?} (`sop config` prints every key)")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_recipe_has_the_official_values() {
        let c = Recipe::Paper.config(None).unwrap();
        c.validate().unwrap();
        let m = &c.model;
        assert_eq!((m.dim, m.depth, m.heads, m.patch_size, m.img_size), (384, 12, 6, 16, 224));
        assert_eq!((m.head_hidden, m.head_bottleneck, m.head_layers, m.drop_path), (2048, 256, 3, 0.1));
        assert_eq!((c.sop.cls_bank_size, c.sop.patch_bank_size), (65_536, 8_192));
        assert_eq!((c.sop.cls.anchors, c.sop.cls.experts, c.sop.cls.tasks), (64, 9, 4));
        assert_eq!((c.sop.patch.anchors, c.sop.patch.experts, c.sop.patch.tasks), (512, 1, 1));
        assert_eq!((c.optim.momentum_teacher, c.optim.momentum_teacher_end), (0.996, 1.0));
        assert_eq!((c.optim.lr, c.optim.warmup_epochs, c.optim.min_lr), (5e-4, 10, 1e-6));
        let a = &c.augment;
        assert_eq!((a.global_size, a.local_size, a.global_scale, a.blur_sigma), (224, 96, (0.14, 1.0), (0.1, 2.0)));
        assert_eq!(a.mask.patch_size, 16);
        let l = Recipe::Paper.config(Some("vit_large")).unwrap();
        assert_eq!((l.model.dim, l.model.depth, l.model.heads), (1024, 24, 16));
        l.validate().unwrap();
        // The small recipe is the default configuration.
        assert_eq!(Recipe::Small.config(None).unwrap().to_toml(), TrainConfig::default().to_toml());
    }

    #[test]
    fn set_is_typed_by_the_schema() {
        let c = TrainConfig::default();
        assert_eq!(set_key(&c, "sop.cls.anchors", "16").unwrap().sop.cls.anchors, 16);
        assert_eq!(set_key(&c, "augment.global_scale", "[0.2, 1.0]").unwrap().augment.global_scale, (0.2, 1.0));
        assert_eq!(set_key(&c, "run.out", "runs/x y").unwrap().run.out, std::path::PathBuf::from("runs/x y"));
        assert_eq!(set_key(&c, "optim.steps", "7").unwrap().optim.steps, Some(7));
        assert_eq!(set_key(&c, "data.knn_val", "/v").unwrap().data.knn_val, Some("/v".into()));
        for (k, v, want) in [
            ("sop.cls.anchorz", "16", "anchorz"),
            ("sopp.cls.anchors", "16", "sopp"),
            ("sop.cls.anchors", "many", "sop.cls.anchors"),
            ("sop.cls.anchors", "-3", "sop.cls.anchors"),
            ("sop.cls", "3", "table"),
        ] {
            let e = set_key(&c, k, v).unwrap_err().to_string();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
        assert!(parse_set("a.b=1").is_ok() && parse_set("a.b").is_err() && parse_set("=1").is_err());
    }
}
