//! `sop preview`: a PNG grid of what the model is fed (see `crate::data::preview`).

use std::path::PathBuf;

use super::DataArg;
use crate::data::{preview::render_preview, AugmentConfig};

#[derive(clap::Args, Debug)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// Where to write the PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (rows).
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Side of the global crops, in pixels.
    #[arg(long, default_value_t = 224)]
    pub global_size: usize,
    /// Side of the local crops, in pixels.
    #[arg(long, default_value_t = 96)]
    pub local_size: usize,
    /// Local crops per image.
    #[arg(long, default_value_t = 2)]
    pub local_crops: usize,
    /// Model patch size: the mask grid is global-size / patch-size.
    #[arg(long, default_value_t = 16)]
    pub patch_size: usize,
    /// Fraction of patches masked.
    #[arg(long, default_value_t = 0.3)]
    pub mask_ratio: f64,
    /// Overwrite --out if it exists (never allowed when it is one of the inputs).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: PreviewArgs) -> anyhow::Result<()> {
    super::check_output(&args.out, &[&args.data.data], args.force)?;
    let ds = args.data.open()?;
    println!("{}", ds.describe());
    let mut cfg = AugmentConfig {
        global_size: args.global_size,
        local_size: args.local_size,
        local_crops: args.local_crops,
        ..AugmentConfig::default()
    };
    cfg.mask.patch_size = args.patch_size;
    cfg.mask.ratio = args.mask_ratio;
    let img = render_preview(&ds, &cfg, args.n, args.seed)?;
    img.save(&args.out).map_err(|e| crate::error::SopError::file(&args.out, e))?;
    println!(
        "wrote {} ({}x{}): one row per image: original | 2 global crops | {} local crops | \
         global crops with their masks (red)",
        args.out.display(),
        img.width(),
        img.height(),
        args.local_crops
    );
    if ds.bad_count() > 0 {
        println!("skipped {} undecodable files", ds.bad_count());
    }
    Ok(())
}
