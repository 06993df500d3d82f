//! The configuration of the augmentations, with the authors' defaults and their checks:
//!
//! - `AugmentConfig`: crop sizes (global S, local s), crop scale and aspect ranges, the
//!   probability of each op per view, blur sigma range, solarize threshold, the
//!   normalisation (x - mean) / std, and the block masks (`MaskConfig`) of the global crops.
//! - `JitterConfig`: torchvision's ColorJitter strengths and its RandomApply probability.
//! - `EvalConfig`: the deterministic eval transform (resize, centre crop, normalise).
//!
//! `IMAGENET_MEAN` / `IMAGENET_STD` are the per-channel RGB statistics used by default.

use serde::{Deserialize, Serialize};

use crate::data::masks::MaskConfig;
use crate::error::{Result, SopError};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// torchvision's ColorJitter: factors brightness and contrast and saturation in
/// [max(0, 1 - x), 1 + x], hue in [-x, x]; a zero parameter leaves that op out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JitterConfig {
    /// Probability of applying the jitter at all (RandomApply).
    pub p: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    /// At most 0.5.
    pub hue: f64,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig { p: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1 }
    }
}

/// Every augmentation parameter, with the authors' defaults (docs/METHOD.md "Data views").
/// Small runs set the sizes (e.g. 32 / 16 with `mask.patch_size` 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Side of the two global crops, in pixels.
    pub global_size: usize,
    /// Side of the local crops, in pixels.
    pub local_size: usize,
    /// Number of local crops per image (optional in the method).
    pub local_crops: usize,
    /// Area fraction range of the global crops' random resized crop.
    pub global_scale: (f64, f64),
    /// Area fraction range of the local crops.
    pub local_scale: (f64, f64),
    /// Aspect ratio (w / h) range of every crop; log-uniform.
    pub ratio: (f64, f64),
    pub flip_p: f64,
    pub jitter: JitterConfig,
    pub grayscale_p: f64,
    /// Gaussian blur sigma range, in output pixels.
    pub blur_sigma: (f64, f64),
    /// Blur probability of global crop 1 and 2.
    pub global_blur_p: [f64; 2],
    pub local_blur_p: f64,
    /// Solarize probability of global crop 1 and 2.
    pub global_solarize_p: [f64; 2],
    pub local_solarize_p: f64,
    /// Values at or above it are inverted (PIL's 128 of 255).
    pub solarize_threshold: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Block masks of the global crops.
    pub mask: MaskConfig,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            global_size: 224,
            local_size: 96,
            local_crops: 0,
            global_scale: (0.14, 1.0),
            local_scale: (0.05, 0.4),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            jitter: JitterConfig::default(),
            grayscale_p: 0.2,
            blur_sigma: (0.1, 2.0),
            global_blur_p: [1.0, 0.1],
            local_blur_p: 0.5,
            global_solarize_p: [0.0, 0.2],
            local_solarize_p: 0.0,
            solarize_threshold: 0.5,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            mask: MaskConfig::default(),
        }
    }
}

impl AugmentConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SopError::Invalid(format!("augment config: {m}")));
        if self.global_size == 0 || self.local_size == 0 {
            return bad("crop sizes must be positive".into());
        }
        let ps = self.mask.patch_size;
        if ps == 0 || !self.global_size.is_multiple_of(ps) {
            return bad(format!("global_size {} is not a multiple of patch_size {ps}", self.global_size));
        }
        for (name, (lo, hi)) in [("global_scale", self.global_scale), ("local_scale", self.local_scale)] {
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                return bad(format!("{name} ({lo}, {hi}) must satisfy 0 < lo <= hi <= 1"));
            }
        }
        if !(self.ratio.0 > 0.0 && self.ratio.0 <= self.ratio.1) {
            return bad(format!("ratio {:?} must satisfy 0 < lo <= hi", self.ratio));
        }
        if !(self.blur_sigma.0 > 0.0 && self.blur_sigma.0 <= self.blur_sigma.1) {
            return bad(format!("blur_sigma {:?} must satisfy 0 < lo <= hi", self.blur_sigma));
        }
        let j = &self.jitter;
        let probs = [
            self.flip_p,
            j.p,
            self.grayscale_p,
            self.global_blur_p[0],
            self.global_blur_p[1],
            self.local_blur_p,
            self.global_solarize_p[0],
            self.global_solarize_p[1],
            self.local_solarize_p,
        ];
        if probs.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return bad(format!("probabilities must lie in [0, 1]: {probs:?}"));
        }
        if [j.brightness, j.contrast, j.saturation].iter().any(|&x| x.is_nan() || x < 0.0)
            || !(0.0..=0.5).contains(&j.hue)
        {
            return bad(format!("jitter strengths must be >= 0 and hue <= 0.5: {j:?}"));
        }
        if self.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            return bad(format!("std {:?} must be positive", self.std));
        }
        self.mask.validate()
    }

    /// The patch grid (H, W) of a global crop.
    pub fn mask_grid(&self) -> (usize, usize) {
        let g = self.global_size / self.mask.patch_size.max(1);
        (g, g)
    }
}

/// The deterministic eval transform: resize the shorter side to round(size /
/// crop_fraction) (bicubic), centre-crop size x size, normalise. ImageNet: 224 and 0.875
/// (resize to 256); small images: crop_fraction 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub size: usize,
    pub crop_fraction: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { size: 224, crop_fraction: 0.875, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }
}

impl EvalConfig {
    pub fn validate(&self) -> Result<()> {
        let bad_std = self.std.iter().any(|&s| s.is_nan() || s <= 0.0);
        if self.size == 0 || !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) || bad_std {
            return Err(SopError::Invalid(format!("eval config: bad size, crop_fraction or std: {self:?}")));
        }
        Ok(())
    }
}
