//! What the model learned, as PNGs: `sop attention` (the last block's [CLS] attention per
//! head over an image) and `sop prototypes` (for a few prototypes drawn from a run's [CLS]
//! bank, the image behind the anchor and behind each support embedding).

use std::path::{Path, PathBuf};

use image::{imageops::FilterType, Rgb, RgbImage};
use rand::SeedableRng;

use super::weights::WeightsArgs;
use super::AdapterArg;
use crate::data::{Dataset, Split};
use crate::model::vit::ForwardOptions;
use crate::ops::attention::attention_cls_probs;
use crate::sop::prototypes::{build, Keep, PrototypeConfig};
use crate::tape::Tape;
use crate::train::config::TrainConfig;

#[derive(clap::Args, Debug)]
pub struct AttentionArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// The image to look at.
    #[arg(long)]
    pub image: PathBuf,
    /// Output PNG: the image, then one heat map per head.
    #[arg(long)]
    pub out: PathBuf,
    /// Side of each tile in the picture.
    #[arg(long, default_value_t = 224)]
    pub tile: u32,
    /// Overwrite --out if it exists (never allowed when it is one of the inputs).
    #[arg(long)]
    pub force: bool,
}

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A colour map from dark blue (0) through red to yellow (1).
fn heat(v: f32) -> Rgb<u8> {
    let v = v.clamp(0.0, 1.0);
    let r = (255.0 * (1.5 * v).min(1.0)) as u8;
    let g = (255.0 * (2.0 * v - 1.0).clamp(0.0, 1.0)) as u8;
    let b = (255.0 * (0.5 - v).clamp(0.0, 0.5) * 2.0 * 0.6) as u8;
    Rgb([r, g, b])
}

fn open_image(path: &Path) -> anyhow::Result<RgbImage> {
    let img = image::open(path).map_err(|e| anyhow::anyhow!("{}: cannot decode: {e}", path.display()))?;
    Ok(img.to_rgb8())
}

fn save_png(img: &RgbImage, out: &Path) -> anyhow::Result<()> {
    img.save(out).map_err(|e| anyhow::anyhow!("{}: cannot write PNG: {e}", out.display()))
}

pub fn attention(args: AttentionArgs) -> anyhow::Result<()> {
    super::check_output(&args.out, &[&args.weights.weights, &args.image], args.force)?;
    let gpu = args.adapter.gpu()?;
    let (vit, weights) = args.weights.load_backbone(&gpu)?;
    let cfg = &vit.cfg;
    let src = open_image(&args.image)?;
    let s = cfg.img_size as u32;
    let resized = image::imageops::resize(&src, s, s, FilterType::CatmullRom);
    let mut chw = vec![0f32; 3 * (s * s) as usize];
    for (x, y, p) in resized.enumerate_pixels() {
        for c in 0..3 {
            chw[c * (s * s) as usize + (y * s + x) as usize] = (p[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    let mut tape = Tape::no_grad(&gpu);
    let p = weights.leaves(&mut tape, false);
    let x = tape.constant(gpu.upload_f32(&[1, 3, s as usize, s as usize], &chw)?);
    let (_, qkv) = vit.backbone_with_last_qkv(&mut tape, &p, &x, &ForwardOptions::default())?;
    let qkv = qkv.ok_or_else(|| anyhow::anyhow!("the model has no blocks"))?;
    let probs = gpu.read_f32(&attention_cls_probs(&gpu, &qkv, cfg.heads)?)?; // (1, H, T)
    let (g, t, tile) = (cfg.grid(), 1 + cfg.grid() * cfg.grid(), args.tile);
    let mut canvas = RgbImage::new(tile * (1 + cfg.heads as u32), tile);
    image::imageops::overlay(&mut canvas, &image::imageops::resize(&src, tile, tile, FilterType::CatmullRom), 0, 0);
    for h in 0..cfg.heads {
        let row = &probs[h * t + 1..(h + 1) * t]; // attention of [CLS] to each patch
        let max = row.iter().cloned().fold(f32::MIN, f32::max).max(1e-12);
        let small = RgbImage::from_fn(g as u32, g as u32, |x, y| heat(row[(y as usize) * g + x as usize] / max));
        let big = image::imageops::resize(&small, tile, tile, FilterType::Nearest);
        image::imageops::overlay(&mut canvas, &big, (tile * (1 + h as u32)) as i64, 0);
    }
    save_png(&canvas, &args.out)?;
    println!("[CLS] attention of the last block, {} heads -> {}", cfg.heads, args.out.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct PrototypesArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// A run folder written by `sop train`.
    #[arg(long)]
    pub run: PathBuf,
    /// Output PNG: one row per prototype, the anchor's image first.
    #[arg(long)]
    pub out: PathBuf,
    /// Prototypes to show.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// Images in the dataset the run trained on (default: the run's config).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 64)]
    pub tile: u32,
    /// Overwrite --out if it exists (never allowed when it is one of the inputs).
    #[arg(long)]
    pub force: bool,
}

pub fn prototypes(args: PrototypesArgs) -> anyhow::Result<()> {
    let state_path = args.run.join(crate::train::state::STATE);
    let run_files = crate::train::state::RUN_FILES.map(|f| args.run.join(f));
    let mut inputs: Vec<&Path> = run_files.iter().map(PathBuf::as_path).collect();
    inputs.extend(args.data.as_deref());
    super::check_output(&args.out, &inputs, args.force)?;
    let gpu = args.adapter.gpu()?;
    let ckpt = crate::checkpoint::read(&state_path)?;
    let cfg: TrainConfig = toml::from_str(
        ckpt.metadata
            .get("config")
            .ok_or_else(|| anyhow::anyhow!("{}: no config in metadata", state_path.display()))?,
    )?;
    if cfg.objective == crate::train::config::Objective::Ibot {
        anyhow::bail!(
            "{}: trained the ibot objective, which keeps no memory bank to draw prototypes from \
             (its prototypes are the rows of head.last_layer.weight_v)",
            args.run.display()
        );
    }
    let width = cfg.model.head_bottleneck;
    let n_bank = cfg.sop.cls_bank_size;
    if args.n < 2 || args.n > n_bank / 2 {
        let n = args.n;
        anyhow::bail!("--n {n}: between 2 and {} prototypes can be drawn from a bank of {n_bank} rows", n_bank / 2);
    }
    let bank = crate::train::state::restore_bank(&gpu, &args.run, &ckpt.tensors, "cls_bank", n_bank, width, 0)?;
    let data = args.data.clone().unwrap_or(cfg.data.path.clone());
    let dataset = Dataset::open(&data, Split::Train)?;
    let pc = PrototypeConfig { anchors: args.n.clamp(2, n_bank / 2), experts: cfg.sop.cls.experts.max(2), tasks: 1 };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut perm: Vec<u32> = (0..n_bank as u32).collect();
    rand::seq::SliceRandom::shuffle(&mut perm[..], &mut rng);
    // Every anchor kept, so prototype a's members are member_rows[a·E..(a+1)·E], the anchor
    // first. Not in a training step: the rows may come back to the host (a blocking read).
    let every_anchor: Vec<u32> = (0..pc.anchors as u32).collect();
    let proto = build(&gpu, &bank, &perm, &pc, 0.0, |_| Ok(Keep::Listed(every_anchor)))?;
    let member_rows = gpu.read_u32(&proto.member_rows)?;
    let (e, tile) = (pc.experts, args.tile);
    let mut canvas = RgbImage::from_pixel(tile * e as u32, tile * pc.anchors as u32, Rgb([40, 40, 40]));
    let mut shown = 0;
    for a in 0..pc.anchors {
        for (j, &r) in member_rows[a * e..(a + 1) * e].iter().enumerate() {
            let src = bank.sources[r as usize];
            // Rows still holding their random initial vector have no image: left dark.
            if src < 0 || src as usize >= dataset.len() {
                continue;
            }
            if let Ok(img) = dataset.get(src as usize) {
                let t = image::imageops::resize(&img, tile, tile, FilterType::CatmullRom);
                image::imageops::overlay(&mut canvas, &t, (j as u32 * tile) as i64, (a as u32 * tile) as i64);
                shown += 1;
            }
        }
    }
    save_png(&canvas, &args.out)?;
    println!(
        "{} prototypes of {} members ({} images shown; dark tiles are bank rows not yet written) -> {}",
        pc.anchors,
        e,
        shown,
        args.out.display()
    );
    Ok(())
}
