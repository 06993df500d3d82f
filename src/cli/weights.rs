//! `--weights FILE` plus the architecture flags for files whose metadata carries none; the
//! backbone is loaded and checked tensor by tensor (shared by embed, eval and attention).

use std::path::PathBuf;

use crate::checkpoint;
use crate::gpu::Gpu;
use crate::model::config::VitConfig;
use crate::model::params::backbone_specs;
use crate::model::vit::{Vit, Weights};

#[derive(clap::Args, Debug, Clone)]
pub struct WeightsArgs {
    /// A checkpoint (teacher.safetensors of a run, or a timm-layout ViT state dict).
    #[arg(long)]
    pub weights: PathBuf,
    /// Architecture when the file's metadata has none: vit_tiny, vit_small, vit_base.
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long)]
    pub patch_size: Option<usize>,
    #[arg(long)]
    pub img_size: Option<usize>,
}

impl WeightsArgs {
    /// The architecture: the file's metadata, else the flags; flags given beside metadata
    /// must agree with it.
    pub fn config(&self) -> anyhow::Result<VitConfig> {
        let from_file = checkpoint::read_config(&self.weights)?;
        let mut cfg = match (from_file, &self.arch) {
            (Some(c), _) => c,
            (None, Some(a)) => VitConfig::from_arch(a)?,
            (None, None) => anyhow::bail!(
                "{}: the file's metadata has no architecture; pass --arch (and --patch-size/--img-size if not 16/224)",
                self.weights.display()
            ),
        };
        if let Some(p) = self.patch_size {
            cfg.patch_size = p;
        }
        if let Some(s) = self.img_size {
            cfg.img_size = s;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The backbone on the GPU.
    pub fn load_backbone(&self, gpu: &Gpu) -> anyhow::Result<(Vit, Weights)> {
        let cfg = self.config()?;
        let ckpt = checkpoint::load_backbone(&self.weights, &backbone_specs(&cfg))?;
        let host: Vec<_> = backbone_specs(&cfg)
            .iter()
            .map(|s| {
                let t = &ckpt.tensors[&s.name];
                (s.name.clone(), t.shape.clone(), t.data.clone())
            })
            .collect();
        Ok((Vit::new(cfg), Weights::upload(gpu, &host)?))
    }
}
