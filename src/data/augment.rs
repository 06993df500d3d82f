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

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::masks::{uniform, MaskConfig, MaskGenerator};
use super::{sample_rng, STREAM_MASK, STREAM_VIEW};
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

/// The views of one sample, normalised, channel-major.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleViews {
    /// (G, 3, S, S)
    pub globals: Vec<f32>,
    /// (L, 3, s, s)
    pub locals: Vec<f32>,
    /// (G, h * w), 1 = masked; empty without masks (eval).
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

/// A crop of the source image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
    /// True when all 10 tries failed and torchvision's central-crop fallback was used.
    pub fallback: bool,
}

/// torchvision's RandomResizedCrop.get_params: up to 10 tries of area = U(scale) * W * H
/// and aspect = exp(U(ln ratio)), w = round(sqrt(area * aspect)), h = round(sqrt(area /
/// aspect)), accepted when it fits, at a uniform position; else a central crop with the
/// aspect clamped to the ratio range.
pub fn random_resized_crop_box(
    rng: &mut impl Rng,
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = (width * height) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let y = rng.random_range(0..=height - h);
            let x = rng.random_range(0..=width - w);
            return CropBox { x, y, w, h, fallback: false };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((width as f64 / ratio.0).round_ties_even() as usize).clamp(1, height))
    } else if in_ratio > ratio.1 {
        (((height as f64 * ratio.1).round_ties_even() as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { x: (width - w) / 2, y: (height - h) / 2, w, h, fallback: true }
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

/// An RGB image in f32, values in [0, 1], (H, W, 3) interleaved.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
fn luma(p: &[f32]) -> f32 {
    0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

impl Image {
    pub fn from_rgb8(img: &RgbImage) -> Image {
        Image {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
        }
    }

    pub fn to_rgb8(&self) -> RgbImage {
        let px = self.data.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
        RgbImage::from_raw(self.width as u32, self.height as u32, px).expect("buffer size matches the dimensions")
    }

    /// From normalised (3, H, W) data: x * std + mean.
    pub fn from_normalized_chw(chw: &[f32], width: usize, height: usize, mean: &[f32; 3], std: &[f32; 3]) -> Image {
        let n = width * height;
        let mut data = vec![0.0; n * 3];
        for c in 0..3 {
            for i in 0..n {
                data[i * 3 + c] = chw[c * n + i] * std[c] + mean[c];
            }
        }
        Image { width, height, data }
    }

    /// (3, H, W) with (x - mean) / std per channel.
    pub fn normalized_chw(&self, mean: &[f32; 3], std: &[f32; 3]) -> Vec<f32> {
        let n = self.width * self.height;
        let mut out = vec![0.0; 3 * n];
        for (i, p) in self.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = (p[c] - mean[c]) / std[c];
            }
        }
        out
    }

    pub fn hflip(&mut self) {
        for row in self.data.chunks_exact_mut(self.width * 3) {
            let w = self.width;
            for x in 0..w / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
                }
            }
        }
    }

    /// blend(img, black, f) = clamp(f * x).
    pub fn adjust_brightness(&mut self, f: f32) {
        self.data.iter_mut().for_each(|v| *v = (f * *v).clamp(0.0, 1.0));
    }

    /// blend(img, mean grayscale of the whole image, f) = clamp(f * x + (1 - f) * mean).
    pub fn adjust_contrast(&mut self, f: f32) {
        let n = (self.width * self.height).max(1) as f64;
        let mean = (self.data.chunks_exact(3).map(|p| luma(p) as f64).sum::<f64>() / n) as f32;
        self.data.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0));
    }

    /// blend(img, grayscale(img), f), per pixel.
    pub fn adjust_saturation(&mut self, f: f32) {
        for p in self.data.chunks_exact_mut(3) {
            let l = luma(p);
            p.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * l).clamp(0.0, 1.0));
        }
    }

    /// Rotates the hue by f turns (f in [-0.5, 0.5]) through HSV, as torchvision's
    /// _rgb2hsv / _hsv2rgb.
    pub fn adjust_hue(&mut self, f: f32) {
        for p in self.data.chunks_exact_mut(3) {
            let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
            let [r, g, b] = hsv_to_rgb((h + f).rem_euclid(1.0), s, v);
            p.copy_from_slice(&[r, g, b]);
        }
    }

    /// Three equal channels of luma (RandomGrayscale with 3 output channels).
    pub fn grayscale(&mut self) {
        for p in self.data.chunks_exact_mut(3) {
            let l = luma(p);
            p.fill(l);
        }
    }

    /// x >= threshold becomes 1 - x.
    pub fn solarize(&mut self, threshold: f32) {
        self.data.iter_mut().filter(|v| **v >= threshold).for_each(|v| *v = 1.0 - *v);
    }

    /// Separable Gaussian blur, kernel exp(-d^2 / (2 sigma^2)) for |d| <= ceil(3 sigma),
    /// normalised, borders reflected (torchvision pads with "reflect").
    pub fn gaussian_blur(&self, sigma: f32) -> Image {
        let r = ((3.0 * sigma).ceil() as usize).max(1);
        let mut k: Vec<f32> =
            (0..=2 * r).map(|i| (-((i as f32 - r as f32).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
        let sum: f32 = k.iter().sum();
        k.iter_mut().for_each(|x| *x /= sum);
        let (w, h) = (self.width, self.height);
        let row_len = w * 3;
        // Horizontal: each row padded by reflection, then a plain convolution.
        let mut tmp = vec![0.0f32; self.data.len()];
        let mut padded = vec![0.0f32; (w + 2 * r) * 3];
        for (row, out) in self.data.chunks_exact(row_len).zip(tmp.chunks_exact_mut(row_len)) {
            for (i, p) in padded.chunks_exact_mut(3).enumerate() {
                let sx = reflect(i as isize - r as isize, w);
                p.copy_from_slice(&row[sx * 3..sx * 3 + 3]);
            }
            for (t, &kv) in k.iter().enumerate() {
                out.iter_mut().zip(&padded[t * 3..t * 3 + row_len]).for_each(|(o, &s)| *o += kv * s);
            }
        }
        // Vertical: each output row is the weighted sum of reflected input rows.
        let mut out = vec![0.0f32; self.data.len()];
        for (y, o) in out.chunks_exact_mut(row_len).enumerate() {
            for (t, &kv) in k.iter().enumerate() {
                let sy = reflect(y as isize + t as isize - r as isize, h);
                o.iter_mut().zip(&tmp[sy * row_len..(sy + 1) * row_len]).for_each(|(a, &s)| *a += kv * s);
            }
        }
        Image { width: w, height: h, data: out }
    }
}

/// Index into 0..n of position i after reflecting at the borders without repeating the
/// edge (..., 2, 1, 0, 1, 2, ..., n-1, n-2, ...).
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= n as isize { period - m } else { m }) as usize
}

/// torchvision's _rgb2hsv for one pixel: h in [0, 1).
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    ((h / 6.0 + 1.0) % 1.0, s, maxc)
}

/// torchvision's _hsv2rgb for one pixel.
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// PIL's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's resampling coefficients (precompute_coeffs) for `out` samples of the source span
/// [x0, x0 + len) of an axis of `in_size` pixels: (first source index, weights).
fn coeffs(in_size: usize, x0: f64, len: f64, out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = len / out as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out)
        .map(|i| {
            let center = x0 + (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0) as usize).min(in_size - 1);
            let hi = ((center + support + 0.5).floor() as usize).clamp(lo + 1, in_size);
            let w: Vec<f64> = (lo..hi).map(|x| bicubic((x as f64 - center + 0.5) / filterscale)).collect();
            let sum: f64 = w.iter().sum();
            let w = if sum != 0.0 {
                w.iter().map(|v| (v / sum) as f32).collect()
            } else {
                vec![1.0 / (hi - lo) as f32; hi - lo]
            };
            (lo, w)
        })
        .collect()
}

/// Resamples the box [x, y, w, h] of `src` (source pixels, may be fractional) to
/// out_w x out_h with PIL's bicubic filter, widened by the shrink factor (antialiasing),
/// as PIL's `Image.resize(size, BICUBIC, box)`. Each pass is clamped to [0, 1] as PIL
/// clamps to 8 bits.
pub fn resize_bicubic(src: &RgbImage, bx: [f64; 4], out_w: usize, out_h: usize) -> Image {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let cx = coeffs(sw, bx[0], bx[2], out_w);
    let cy = coeffs(sh, bx[1], bx[3], out_h);
    let y_lo = cy.iter().map(|c| c.0).min().unwrap_or(0);
    let y_hi = cy.iter().map(|c| c.0 + c.1.len()).max().unwrap_or(0);
    let raw = src.as_raw();
    let row_len = out_w * 3;
    // Horizontal pass over the source rows the vertical pass reads: (y_hi - y_lo, out_w, 3).
    let mut tmp = vec![0.0f32; (y_hi - y_lo) * row_len];
    let mut rowf = vec![0.0f32; sw * 3];
    for (y, out) in (y_lo..y_hi).zip(tmp.chunks_exact_mut(row_len)) {
        rowf.iter_mut().zip(&raw[y * sw * 3..(y + 1) * sw * 3]).for_each(|(d, &s)| *d = s as f32 / 255.0);
        for ((lo, w), o) in cx.iter().zip(out.chunks_exact_mut(3)) {
            let mut acc = [0.0f32; 3];
            for (p, &wv) in rowf[lo * 3..(lo + w.len()) * 3].chunks_exact(3).zip(w) {
                acc[0] += wv * p[0];
                acc[1] += wv * p[1];
                acc[2] += wv * p[2];
            }
            (0..3).for_each(|c| o[c] = acc[c].clamp(0.0, 1.0));
        }
    }
    // Vertical pass, a weighted sum of whole rows.
    let mut data = vec![0.0f32; out_h * row_len];
    for ((lo, w), o) in cy.iter().zip(data.chunks_exact_mut(row_len)) {
        for (t, &wv) in w.iter().enumerate() {
            let src = &tmp[(lo + t - y_lo) * row_len..][..row_len];
            o.iter_mut().zip(src).for_each(|(a, &s)| *a += wv * s);
        }
        o.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    }
    Image { width: out_w, height: out_h, data }
}
