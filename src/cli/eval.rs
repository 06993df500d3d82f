//! `sop eval knn|linear`: frozen-feature evaluations of a checkpoint's backbone.

use std::path::PathBuf;
use std::sync::Arc;

use super::weights::WeightsArgs;
use super::AdapterArg;
use crate::data::{Dataset, Split};
use crate::eval::features::{extract, Features};
use crate::eval::knn::knn_classify;
use crate::eval::linear::linear_probe;

#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// Weighted k-NN on L2-normalised [CLS] features (top-1, top-5).
    Knn(KnnArgs),
    /// A linear classifier trained on frozen [CLS] features.
    Linear(LinearArgs),
    /// The k-NN baseline on raw pixels (no model): what a representation has to beat.
    KnnPixels(KnnPixelsArgs),
}

#[derive(clap::Args, Debug)]
pub struct KnnPixelsArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[arg(long)]
    pub train: PathBuf,
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Images are resized to size x size before flattening.
    #[arg(long, default_value_t = 28)]
    pub size: usize,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f32,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct Splits {
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Labelled training images (image folder with class subfolders, or IDX).
    #[arg(long)]
    pub train: PathBuf,
    /// Labelled validation images (default: --train's test split).
    #[arg(long)]
    pub val: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct KnnArgs {
    #[command(flatten)]
    pub splits: Splits,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f32,
}

#[derive(clap::Args, Debug)]
pub struct LinearArgs {
    #[command(flatten)]
    pub splits: Splits,
    #[arg(long, default_value_t = 300)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
}

/// Labelled features of both splits: (train, train labels, val, val labels, dim).
type Labelled = (Vec<f32>, Vec<u32>, Vec<f32>, Vec<u32>, usize);

fn features(s: &Splits, gpu: &crate::gpu::Gpu) -> anyhow::Result<Labelled> {
    let (train, val, val_labels) = open_splits(&s.train, &s.val)?;
    let (vit, weights) = s.weights.load_backbone(gpu)?;
    let ft = extract(gpu, &vit, &weights, train.clone(), s.batch)?;
    let fv = extract(gpu, &vit, &weights, val.clone(), s.batch)?;
    Ok((ft.normalized(), labels(&train, &ft)?, fv.normalized(), rows(&val_labels, &fv), ft.dim))
}

/// The train and val sets, and every val sample's label as an index into train's classes
/// (matched by class name). A val set that is the training set is refused.
fn open_splits(train: &PathBuf, val: &Option<PathBuf>) -> anyhow::Result<(Arc<Dataset>, Arc<Dataset>, Vec<u32>)> {
    let t = Arc::new(Dataset::open(train, Split::Train)?);
    let v = Arc::new(Dataset::open(val.as_ref().unwrap_or(train), Split::Test)?);
    if crate::data::same_images(&t, &v) {
        match val {
            None => anyhow::bail!(
                "{}: no held-out split (no `train/` + `val/` or `test/` folders, no IDX `t10k-*` files), so the \
                 val set would be the training images themselves; pass `--val DIR` with other labelled images",
                train.display()
            ),
            Some(v) => anyhow::bail!("--val {} holds the same images as --train: give a held-out set", v.display()),
        }
    }
    if t.labels().is_none() {
        anyhow::bail!("{}: no labels (use one subfolder per class)", train.display());
    }
    let val_labels = crate::data::val_labels_by_name(&t, &v)?;
    Ok((t, v, val_labels))
}

fn labels(d: &Dataset, f: &Features) -> anyhow::Result<Vec<u32>> {
    let l =
        d.labels().ok_or_else(|| anyhow::anyhow!("{}: no labels (use one subfolder per class)", d.root().display()))?;
    Ok(f.indices.iter().map(|&i| l[i]).collect())
}

/// The labels of the rows of `f` (samples that decoded), from per-sample labels.
fn rows(per_sample: &[u32], f: &Features) -> Vec<u32> {
    f.indices.iter().map(|&i| per_sample[i]).collect()
}

pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::KnnPixels(a) => {
            crate::eval::knn::check_params(a.k, a.temperature)?;
            let gpu = a.adapter.gpu()?;
            let (train, val, val_labels) = open_splits(&a.train, &a.val)?;
            let ft = crate::eval::features::pixels(train.clone(), a.size, 256)?;
            let fv = crate::eval::features::pixels(val.clone(), a.size, 256)?;
            let (tl, vl) = (labels(&train, &ft)?, rows(&val_labels, &fv));
            let r = knn_classify(&gpu, &ft.normalized(), &tl, &fv.normalized(), &vl, ft.dim, a.k, a.temperature)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "k-NN on raw pixels ({0}x{0}, k = {1}): top-1 {2:.2}%  top-5 {3:.2}%  ({4} train, {5} val)",
                    a.size, r.k, r.top1, r.top5, r.n_train, r.n_val
                );
            }
        }
        EvalCommand::Knn(a) => {
            crate::eval::knn::check_params(a.k, a.temperature)?;
            let gpu = a.splits.adapter.gpu()?;
            let (t, tl, v, vl, dim) = features(&a.splits, &gpu)?;
            let r = knn_classify(&gpu, &t, &tl, &v, &vl, dim, a.k, a.temperature)?;
            if a.splits.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "k-NN (k = {}, T = {}): top-1 {:.2}%  top-5 {:.2}%  ({} train, {} val) on {}",
                    r.k,
                    a.temperature,
                    r.top1,
                    r.top5,
                    r.n_train,
                    r.n_val,
                    gpu.adapter_name()
                );
            }
        }
        EvalCommand::Linear(a) => {
            let gpu = a.splits.adapter.gpu()?;
            let (t, tl, v, vl, dim) = features(&a.splits, &gpu)?;
            let settings =
                crate::eval::linear::ProbeSettings { epochs: a.epochs, lr: a.lr, weight_decay: a.weight_decay };
            let r = linear_probe(&t, &tl, &v, &vl, dim, settings)?;
            if a.splits.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "linear probe: top-1 {:.2}% (train {:.2}%, {} epochs, {} train, {} val)",
                    r.top1, r.train_top1, r.epochs, r.n_train, r.n_val
                );
            }
        }
    }
    Ok(())
}
