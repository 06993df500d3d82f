//! Multi-crop augmentation (docs/METHOD.md "Data views"), following the DINO/iBOT
//! pipeline built from torchvision transforms:
//!
//! ```text
//! global crop 1: RandomResizedCrop(224, scale (0.14, 1), bicubic), flip p 0.5,
//!                ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, blur p 1.0, normalise
//! global crop 2: the same with blur p 0.1 and solarize p 0.2
//! local crops:   RandomResizedCrop(96, scale (0.05, 0.4)), flip, jitter, grayscale, blur p 0.5
//! ```
//!
//! Images are processed in f32 in [0, 1] (H, W, 3) and leave normalised as (3, S, S).
//! Where torchvision's PIL path and tensor path differ, the tensor formulas are used (no
//! 8-bit rounding between steps; grayscale = 0.2989 R + 0.587 G + 0.114 B). Resampling is
//! PIL's bicubic (a = -0.5, antialiased when shrinking), which is what the authors' PIL
//! pipeline runs. Gaussian blur uses a true Gaussian kernel truncated at 3 sigma with
//! reflected borders (PIL approximates the same Gaussian with three box blurs).
//!
//! Every draw for view v of sample i in epoch e comes from `sample_rng(seed, e, i, v)`
//! (masks from `STREAM_MASK + v`), so views do not depend on thread scheduling, and the
//! global views do not change when the number of local crops does.
//!
//! This file holds the pipeline: `Augmenter` (every random draw of a view: crop box, flip,
//! jitter factors and order, grayscale, blur sigma, solarize; the masks), and `eval_view`.
//! - `config.rs`: `AugmentConfig`, `JitterConfig`, `EvalConfig`, their defaults and checks.
//! - `image.rs`: `Image` (f32 (H, W, 3)) and its deterministic pixel ops.
//! - `resample.rs`: random-resized-crop geometry and PIL's bicubic resampling.
//!
//! (`::image` below is the image crate; `self::image` is `image.rs`.)

mod config;
mod image;
mod resample;

use ::image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;

use super::masks::{uniform, MaskGenerator};
use super::{sample_rng, STREAM_MASK, STREAM_VIEW};
use crate::error::Result;

pub use self::config::{AugmentConfig, EvalConfig, JitterConfig, IMAGENET_MEAN, IMAGENET_STD};
pub use self::image::{hsv_to_rgb, rgb_to_hsv, Image};
pub use self::resample::{random_resized_crop_box, resize_bicubic, CropBox};

/// The views of one sample, normalised, channel-major.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleViews {
    /// (2, 3, S, S): the two global crops.
    pub globals: Vec<f32>,
    /// (L, 3, S_l, S_l)
    pub locals: Vec<f32>,
    /// (2, N), N = (S/p)², 1 = masked; empty without masks (eval).
    pub masks: Vec<u32>,
}

/// The multi-crop pipeline with its configuration checked and its mask generator built.
#[derive(Clone, Debug)]
pub struct Augmenter {
    cfg: AugmentConfig,
    masks: MaskGenerator,
}

impl Augmenter {
    pub fn new(cfg: &AugmentConfig) -> Result<Augmenter> {
        cfg.validate()?;
        let (h, w) = cfg.mask_grid();
        Ok(Augmenter { cfg: cfg.clone(), masks: MaskGenerator::new(h, w, &cfg.mask)? })
    }

    pub fn config(&self) -> &AugmentConfig {
        &self.cfg
    }

    /// Two global crops with their masks and `local_crops` local crops of sample `index`.
    pub fn views(&self, img: &RgbImage, seed: u64, epoch: u64, index: u64) -> SampleViews {
        let c = &self.cfg;
        let mut out = SampleViews { globals: Vec::new(), locals: Vec::new(), masks: Vec::new() };
        for v in 0..2 {
            let mut rng = sample_rng(seed, epoch, index, STREAM_VIEW + v as u64);
            let view =
                self.view(img, c.global_size, c.global_scale, c.global_blur_p[v], c.global_solarize_p[v], &mut rng);
            out.globals.extend(view.normalized_chw(&c.mean, &c.std));
            let mut rng = sample_rng(seed, epoch, index, STREAM_MASK + v as u64);
            out.masks.extend(self.masks.generate(&mut rng).cells.iter().map(|&m| m as u32));
        }
        for l in 0..c.local_crops {
            let mut rng = sample_rng(seed, epoch, index, STREAM_VIEW + 2 + l as u64);
            let view = self.view(img, c.local_size, c.local_scale, c.local_blur_p, c.local_solarize_p, &mut rng);
            out.locals.extend(view.normalized_chw(&c.mean, &c.std));
        }
        out
    }

    /// One crop, before normalisation: crop, flip, jitter, grayscale, blur, solarize.
    pub fn view(
        &self,
        img: &RgbImage,
        size: usize,
        scale: (f64, f64),
        blur_p: f64,
        solarize_p: f64,
        rng: &mut impl Rng,
    ) -> Image {
        let c = &self.cfg;
        let b = random_resized_crop_box(rng, img.width() as usize, img.height() as usize, scale, c.ratio);
        let mut x = resize_bicubic(img, [b.x as f64, b.y as f64, b.w as f64, b.h as f64], size, size);
        if chance(rng, c.flip_p) {
            x.hflip();
        }
        if chance(rng, c.jitter.p) {
            color_jitter(&mut x, &c.jitter, rng);
        }
        if chance(rng, c.grayscale_p) {
            x.grayscale();
        }
        if chance(rng, blur_p) {
            let sigma = uniform(rng, c.blur_sigma.0, c.blur_sigma.1);
            x = x.gaussian_blur(sigma as f32);
        }
        if chance(rng, solarize_p) {
            x.solarize(c.solarize_threshold);
        }
        x
    }
}

/// The eval view of `img`: shorter side resized to round(size / crop_fraction), centre
/// crop size x size (as torchvision's Resize + CenterCrop, done in one resampling pass).
pub fn eval_view(img: &RgbImage, cfg: &EvalConfig) -> Image {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let short = (cfg.size as f64 / cfg.crop_fraction).round_ties_even().max(cfg.size as f64);
    let (rw, rh) = if w <= h { (short, (short * h / w).floor()) } else { ((short * w / h).floor(), short) };
    let (rw, rh) = (rw.max(cfg.size as f64), rh.max(cfg.size as f64));
    let top = ((rh - cfg.size as f64) / 2.0).round_ties_even();
    let left = ((rw - cfg.size as f64) / 2.0).round_ties_even();
    let (sx, sy) = (w / rw, h / rh);
    let size = cfg.size as f64;
    resize_bicubic(img, [left * sx, top * sy, size * sx, size * sy], cfg.size, cfg.size)
}

/// True with probability p (p = 1 always, p = 0 never); always consumes one draw.
fn chance(rng: &mut impl Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// torchvision's ColorJitter: the four factors are drawn, then the ops present are applied
/// in a random order.
pub fn color_jitter(img: &mut Image, cfg: &JitterConfig, rng: &mut impl Rng) {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let b = jitter_factor(rng, cfg.brightness);
    let c = jitter_factor(rng, cfg.contrast);
    let s = jitter_factor(rng, cfg.saturation);
    let h = (cfg.hue > 0.0).then(|| uniform(rng, -cfg.hue, cfg.hue) as f32);
    for op in order {
        match (op, b, c, s, h) {
            (0, Some(f), ..) => img.adjust_brightness(f),
            (1, _, Some(f), ..) => img.adjust_contrast(f),
            (2, _, _, Some(f), _) => img.adjust_saturation(f),
            (3, .., Some(f)) => img.adjust_hue(f),
            _ => {}
        }
    }
}

/// A factor in [max(0, 1 - x), 1 + x], or None (op left out) when x is 0.
fn jitter_factor(rng: &mut impl Rng, x: f64) -> Option<f32> {
    (x > 0.0).then(|| uniform(rng, (1.0 - x).max(0.0), 1.0 + x) as f32)
}
