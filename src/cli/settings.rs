//! The flags that make a training configuration, shared by `sop train` and `sop config`, and
//! their one order of precedence (`resolve`): the recipe (`--recipe`, default `small`), then
//! the `--config` file's keys, then each `--set key=value`, then the single-setting flags
//! (`--arch`, `--batch-size`, `--data`, …).

use std::path::PathBuf;

use crate::train::config::TrainConfig;
use crate::train::recipe::{parse_set, set_key, Recipe};

/// Images per step: a number, or `auto` (the largest batch whose memory plan fits the
/// adapter; see `train::memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    Auto,
}

fn batch_size(s: &str) -> Result<BatchSize, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(BatchSize::Auto);
    }
    count(s).map(BatchSize::Fixed).map_err(|e| format!("{e}, or auto"))
}

/// A count flag: a negative number is read as a value (not as an unknown flag) and refused
/// in words.
pub fn count(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|_| format!("{s:?} is not a whole number of at least 0"))
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct SettingArgs {
    /// The base configuration: small (the bundled quick run) or paper (the authors' ViT/16 at
    /// 224 px). `--config`, `--set` and the flags below override it.
    #[arg(long, value_enum)]
    pub recipe: Option<Recipe>,
    /// A TOML file with any of the hyper-parameters (see the run folder's config.toml); its
    /// keys override the recipe's, a partial table keeps the recipe's other keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one key of the configuration, e.g. `--set sop.cls.anchors=32` (repeatable;
    /// `sop config` prints every key).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, String)>,
    /// Training images: an image folder (one subfolder per class, or flat) or an IDX directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Labelled folder for the k-NN training features (default: --data's train split).
    #[arg(long)]
    pub knn_train: Option<PathBuf>,
    /// Labelled folder for the k-NN validation features (default: --data's test split).
    #[arg(long)]
    pub knn_val: Option<PathBuf>,
    /// Run folder for the config, metrics and checkpoints (default runs/default; with
    /// --resume, the resumed folder). It must not hold another run's files.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// What the student learns: `sop` (self-organizing prototypes from the memory banks) or
    /// `ibot` (the parametric baseline: a learned prototype layer with teacher centring,
    /// `ibot.*` in the config).
    #[arg(long, value_enum)]
    pub objective: Option<crate::train::config::Objective>,
    /// vit_tiny, vit_small, vit_base, vit_large (the width/depth/heads of a preset).
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub dim: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub depth: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub heads: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub patch_size: Option<usize>,
    /// Input size of the model (the global crop size too).
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub img_size: Option<usize>,
    /// Images per step, or `auto`: the largest batch whose memory plan fits the adapter.
    #[arg(long, allow_negative_numbers = true, value_parser = batch_size, value_name = "N|auto")]
    pub batch_size: Option<BatchSize>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub epochs: Option<usize>,
    /// Stop after this many optimiser steps (0 writes the initial weights).
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub steps: Option<usize>,
    /// Peak learning rate for a batch of 256.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub local_crops: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub accumulate: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub checkpoint_every: Option<usize>,
    /// k-NN evaluation every N epochs.
    #[arg(long, allow_negative_numbers = true, value_parser = count)]
    pub eval_every: Option<usize>,
    /// Skip the k-NN evaluations.
    #[arg(long)]
    pub no_eval: bool,
}

impl SettingArgs {
    /// The flags that would change a resumed run's configuration, by name, where given.
    pub fn fixed_by_resume(&self) -> Vec<&'static str> {
        let fixed = [
            ("--recipe", self.recipe.is_some()),
            ("--set", !self.set.is_empty()),
            ("--data", self.data.is_some()),
            ("--knn-train", self.knn_train.is_some()),
            ("--knn-val", self.knn_val.is_some()),
            ("--objective", self.objective.is_some()),
            ("--arch", self.arch.is_some()),
            ("--dim", self.dim.is_some()),
            ("--depth", self.depth.is_some()),
            ("--heads", self.heads.is_some()),
            ("--patch-size", self.patch_size.is_some()),
            ("--img-size", self.img_size.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--local-crops", self.local_crops.is_some()),
            ("--accumulate", self.accumulate.is_some()),
            ("--seed", self.seed.is_some()),
            ("--checkpoint-every", self.checkpoint_every.is_some()),
            ("--eval-every", self.eval_every.is_some()),
        ];
        fixed.iter().filter(|f| f.1).map(|f| f.0).collect()
    }

    /// The configuration these flags describe (a fresh run): recipe, then `--config`, then
    /// `--set`, then the single flags. `--batch-size auto` leaves the recipe's batch in place
    /// (the caller resolves it against the adapter).
    pub fn resolve(&self) -> anyhow::Result<TrainConfig> {
        let recipe = self.recipe.unwrap_or_default();
        let base = recipe.config(None)?;
        let mut cfg = match &self.config {
            Some(p) => TrainConfig::load_over(&base, p)?,
            None => base,
        };
        for (k, v) in &self.set {
            cfg = set_key(&cfg, k, v)?;
        }
        if let Some(a) = &self.arch {
            let preset = crate::model::config::VitConfig::from_arch(a)?;
            (cfg.model.dim, cfg.model.depth, cfg.model.heads) = (preset.dim, preset.depth, preset.heads);
        }
        macro_rules! set {
            ($field:expr, $arg:expr) => {
                if let Some(v) = $arg.clone() {
                    $field = v;
                }
            };
        }
        set!(cfg.data.path, self.data);
        if self.knn_train.is_some() {
            cfg.data.knn_train = self.knn_train.clone();
        }
        if self.knn_val.is_some() {
            cfg.data.knn_val = self.knn_val.clone();
        }
        set!(cfg.run.out, self.out);
        set!(cfg.objective, self.objective);
        // With no --data (here, in --config or --set), the bundled subset, wherever sop is run from.
        if self.data.is_none() && cfg.data.path == std::path::Path::new(crate::train::config::BUNDLED_DATA) {
            cfg.data.path = crate::train::config::bundled_data();
        }
        set!(cfg.model.dim, self.dim);
        set!(cfg.model.depth, self.depth);
        set!(cfg.model.heads, self.heads);
        cfg.set_shape(self.patch_size, self.img_size);
        if let Some(BatchSize::Fixed(b)) = self.batch_size {
            cfg.data.batch_size = b;
        }
        set!(cfg.optim.epochs, self.epochs);
        if self.steps.is_some() {
            cfg.optim.steps = self.steps;
        }
        set!(cfg.optim.lr, self.lr);
        set!(cfg.augment.local_crops, self.local_crops);
        set!(cfg.optim.accumulate, self.accumulate);
        set!(cfg.run.seed, self.seed);
        set!(cfg.run.checkpoint_every, self.checkpoint_every);
        set!(cfg.run.eval_every, self.eval_every);
        cfg.run.no_eval |= self.no_eval;
        Ok(cfg)
    }

    pub fn auto_batch(&self) -> bool {
        self.batch_size == Some(BatchSize::Auto)
    }
}
