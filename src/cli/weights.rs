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

    /// A load that failed on names or shapes: when the file holds another ViT than `cfg`, say
    /// which (rather than list every missing tensor) and which flags would load it.
    fn explain(&self, e: checkpoint::CheckpointError, cfg: &VitConfig) -> anyhow::Error {
        use checkpoint::CheckpointError as E;
        if !matches!(e, E::Missing { .. } | E::Unexpected { .. } | E::Shape { .. }) {
            return e.into();
        }
        let Some((depth, dim, patch, img)) = checkpoint::vit_shape(&self.weights) else { return e.into() };
        if (depth, dim, patch) == (cfg.depth, cfg.dim, cfg.patch_size) {
            return e.into();
        }
        let named = crate::model::config::PRESETS.iter().find(|p| (p.1, p.2) == (dim, depth)).map(|p| p.0);
        let fix = match named {
            Some(n) => format!("pass --arch {n} --patch-size {patch} --img-size {img}"),
            None => "no preset (vit_tiny, vit_small, vit_base) has this size".to_string(),
        };
        anyhow::anyhow!(
            "{}: holds {depth} blocks of dim {dim}, patch {patch}, {img} px{}, but the architecture asked for is \
             {} blocks of dim {}, patch {} ({}): {fix}",
            self.weights.display(),
            named.map(|n| format!(" ({n})")).unwrap_or_default(),
            cfg.depth,
            cfg.dim,
            cfg.patch_size,
            cfg.arch(),
        )
    }

    /// The backbone on the GPU.
    pub fn load_backbone(&self, gpu: &Gpu) -> anyhow::Result<(Vit, Weights)> {
        let cfg = self.config()?;
        let ckpt =
            checkpoint::load_backbone(&self.weights, &backbone_specs(&cfg)).map_err(|e| self.explain(e, &cfg))?;
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
