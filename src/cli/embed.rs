//! `sop embed`: final-norm [CLS] features of every image of a folder, as safetensors
//! (`features` (N, D) f32; metadata `paths`: the image of each row, as a JSON array).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::weights::WeightsArgs;
use super::{AdapterArg, DataArg};
use crate::checkpoint::{self, HostTensor, TensorMap};
use crate::eval::features::extract;

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[command(flatten)]
    pub weights: WeightsArgs,
    #[command(flatten)]
    pub data: DataArg,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Overwrite --out if it exists (never allowed when it is one of the inputs).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    super::check_output(&args.out, &[&args.weights.weights, &args.data.data], args.force)?;
    let gpu = args.adapter.gpu()?;
    let (vit, weights) = args.weights.load_backbone(&gpu)?;
    let dataset = std::sync::Arc::new(args.data.open()?);
    let names: Vec<String> = (0..dataset.len()).map(|i| dataset.name(i)).collect();
    let f = extract(&gpu, &vit, &weights, dataset, args.batch)?;
    let paths: Vec<&String> = f.indices.iter().map(|&i| &names[i]).collect();
    let mut map = TensorMap::new();
    map.insert("features".into(), HostTensor { shape: vec![f.len(), f.dim], data: f.data.clone() });
    let meta = BTreeMap::from([("paths".to_string(), serde_json::to_string(&paths)?)]);
    checkpoint::save(&args.out, &map, &meta)?;
    println!(
        "{} images embedded ({} skipped) -> {} ({} x {}) on {}",
        f.len(),
        f.skipped,
        args.out.display(),
        f.len(),
        f.dim,
        gpu.adapter_name()
    );
    Ok(())
}
