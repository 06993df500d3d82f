//! The shape of a ViT backbone and its projection head: presets (`vit_tiny`, `vit_small`,
//! `vit_base`, `vit_large`), overrides for small experiments, and the checks that make a shape buildable.
//!
//! Shape letters as in src/lib.rs: D width (`dim`), H heads, Dh = D / H, p patch side, S image
//! side, G = S / p patches per side, N = G² patches, T = 1 + N tokens; the number of blocks
//! is written out (`depth`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SopError};

/// Presets as `(name, dim, depth, heads)`; patch 16 and image 224 for all of them.
pub const PRESETS: [(&str, usize, usize, usize); 4] =
    [("vit_tiny", 192, 12, 3), ("vit_small", 384, 12, 6), ("vit_base", 768, 12, 12), ("vit_large", 1024, 24, 16)];

/// A ViT backbone plus the SOP head (MLP D → hidden → … → bottleneck, GELU between layers,
/// then L2 normalisation). Serialisable so run configurations can store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitConfig {
    /// D: token width.
    pub dim: usize,
    /// Number of transformer blocks (`depth`; L is the local crops).
    pub depth: usize,
    /// H: attention heads; D must be a multiple of H.
    pub heads: usize,
    /// p: patch side in pixels.
    pub patch_size: usize,
    /// S: input side in pixels for which the position embedding is stored (G = S / p).
    pub img_size: usize,
    /// MLP hidden width = mlp_ratio · D.
    pub mlp_ratio: usize,
    /// Input channels (3; single-channel images are replicated before the model).
    pub in_chans: usize,
    /// LayerNorm epsilon (1e-6, as timm/iBOT ViTs).
    pub ln_eps: f64,
    /// Hidden width of the head's MLP (2048 in the paper).
    pub head_hidden: usize,
    /// Output width of the head (256): the width of the memory banks.
    pub head_bottleneck: usize,
    /// Linear layers in the head (3: D → hidden → hidden → bottleneck).
    pub head_layers: usize,
    /// Largest drop-path rate (last block); rates rise linearly from 0 over the blocks.
    /// 0.1 for the student; the teacher runs with none.
    pub drop_path: f64,
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig::vit_small()
    }
}

impl VitConfig {
    fn preset(dim: usize, depth: usize, heads: usize) -> Self {
        VitConfig {
            dim,
            depth,
            heads,
            patch_size: 16,
            img_size: 224,
            mlp_ratio: 4,
            in_chans: 3,
            ln_eps: 1e-6,
            head_hidden: 2048,
            head_bottleneck: 256,
            head_layers: 3,
            drop_path: 0.1,
        }
    }

    pub fn vit_tiny() -> Self {
        Self::preset(192, 12, 3)
    }

    pub fn vit_small() -> Self {
        Self::preset(384, 12, 6)
    }

    pub fn vit_base() -> Self {
        Self::preset(768, 12, 12)
    }

    pub fn vit_large() -> Self {
        Self::preset(1024, 24, 16)
    }

    /// The smallest useful model (D 8, depth 2, 2 heads, patch 4, 8 px, head 16 → 4), for
    /// tests that compare against plain-loop references.
    pub fn micro() -> Self {
        VitConfig {
            dim: 8,
            depth: 2,
            heads: 2,
            patch_size: 4,
            img_size: 8,
            head_hidden: 16,
            head_bottleneck: 4,
            ..VitConfig::vit_tiny()
        }
    }

    /// A preset by name (`vit_tiny`, `vit_small`, `vit_base`, `vit_large`; `tiny`/`small`/…, `-`
    /// for `_` and any case accepted).
    pub fn from_arch(name: &str) -> Result<Self> {
        let key = name.trim().to_ascii_lowercase().replace('-', "_");
        let key = if key.starts_with("vit_") { key } else { format!("vit_{key}") };
        PRESETS.iter().find(|p| p.0 == key).map(|&(_, d, l, h)| Self::preset(d, l, h)).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            SopError::Invalid(format!("unknown architecture {name:?}; known: {}", names.join(", ")))
        })
    }

    /// The preset name when (D, depth, H) match one, else `vit_custom`. Patch and image size do
    /// not enter the name (they are stored beside it in checkpoints).
    pub fn arch(&self) -> &'static str {
        PRESETS.iter().find(|p| (p.1, p.2, p.3) == (self.dim, self.depth, self.heads)).map_or("vit_custom", |p| p.0)
    }

    /// G: patches per side at `img_size`.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// G for another (square) input side, e.g. a 96 px local crop; errors when the side is
    /// not a multiple of the patch size.
    pub fn grid_for(&self, side: usize) -> Result<usize> {
        if side == 0 || !side.is_multiple_of(self.patch_size) {
            return Err(SopError::Invalid(format!(
                "image side {side} is not a positive multiple of the patch size {}",
                self.patch_size
            )));
        }
        Ok(side / self.patch_size)
    }

    /// N: patches at `img_size`.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// T = 1 + N: tokens at `img_size` ([CLS] first).
    pub fn tokens(&self) -> usize {
        1 + self.num_patches()
    }

    /// Dh = D / H.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Width of the block MLP's hidden layer.
    pub fn mlp_hidden(&self) -> usize {
        self.mlp_ratio * self.dim
    }

    /// Drop-path rate of block i: linear from 0 (first block) to `drop_path` (last), as
    /// timm's `torch.linspace(0, drop_path_rate, depth)`.
    pub fn drop_path_rate(&self, block: usize) -> f64 {
        if self.depth <= 1 {
            0.0
        } else {
            self.drop_path * block as f64 / (self.depth - 1) as f64
        }
    }

    /// Every check that makes the shape buildable, with an error saying which one failed.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SopError::Invalid(format!("model configuration: {m}")));
        let positive = [
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("patch_size", self.patch_size),
            ("img_size", self.img_size),
            ("mlp_ratio", self.mlp_ratio),
            ("in_chans", self.in_chans),
            ("head_hidden", self.head_hidden),
            ("head_bottleneck", self.head_bottleneck),
            ("head_layers", self.head_layers),
        ];
        for (name, v) in positive {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.dim.is_multiple_of(self.heads) {
            return bad(format!("dim {} is not divisible by heads {}", self.dim, self.heads));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!("img_size {} is not a multiple of patch_size {}", self.img_size, self.patch_size));
        }
        if !(self.ln_eps > 0.0 && self.ln_eps.is_finite()) {
            return bad(format!("ln_eps {} must be a positive number", self.ln_eps));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return bad(format!("drop_path {} must lie in [0, 1)", self.drop_path));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_derived_sizes() {
        let s = VitConfig::from_arch("vit_small").unwrap();
        assert_eq!((s.dim, s.depth, s.heads, s.grid(), s.tokens(), s.head_dim()), (384, 12, 6, 14, 197, 64));
        assert_eq!(s.arch(), "vit_small");
        assert_eq!(VitConfig::from_arch("Tiny").unwrap().arch(), "vit_tiny");
        assert_eq!(VitConfig::from_arch("vit-base").unwrap().dim, 768);
        let err = VitConfig::from_arch("vit_huge").unwrap_err().to_string();
        assert!(err.contains("vit_huge") && err.contains("vit_small"), "{err}");
        let c = VitConfig { depth: 2, ..VitConfig::vit_small() };
        assert_eq!(c.arch(), "vit_custom");
        assert_eq!(c.drop_path_rate(0), 0.0);
        assert!((c.drop_path_rate(1) - 0.1).abs() < 1e-15);
        assert_eq!(s.grid_for(96).unwrap(), 6);
        assert!(s.grid_for(100).is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        for p in PRESETS {
            VitConfig::from_arch(p.0).unwrap().validate().unwrap();
        }
        let e = VitConfig { heads: 5, ..VitConfig::vit_small() }.validate().unwrap_err().to_string();
        assert!(e.contains("dim 384") && e.contains("heads 5"), "{e}");
        let e = VitConfig { img_size: 100, ..VitConfig::vit_small() }.validate().unwrap_err().to_string();
        assert!(e.contains("img_size 100") && e.contains("patch_size 16"), "{e}");
        let e = VitConfig { depth: 0, ..VitConfig::vit_small() }.validate().unwrap_err().to_string();
        assert!(e.contains("depth"), "{e}");
        let e = VitConfig { drop_path: 1.0, ..VitConfig::vit_small() }.validate().unwrap_err().to_string();
        assert!(e.contains("drop_path"), "{e}");
    }

    #[test]
    fn serde_round_trip_and_partial_input() {
        let c = VitConfig { dim: 32, depth: 2, heads: 2, patch_size: 4, img_size: 16, ..VitConfig::vit_tiny() };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VitConfig>(&j).unwrap(), c);
        // Missing fields take the vit_small defaults; unknown fields are refused.
        let p: VitConfig = serde_json::from_str(r#"{"depth": 4}"#).unwrap();
        assert_eq!((p.dim, p.depth), (384, 4));
        assert!(serde_json::from_str::<VitConfig>(r#"{"dpeth": 4}"#).is_err());
    }
}
