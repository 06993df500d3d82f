//! Crop geometry and resampling:
//!
//! - `random_resized_crop_box`: torchvision's RandomResizedCrop.get_params, the box
//!   (x, y, w, h) of area U(scale) * W * H and aspect w / h = exp(U(ln ratio)).
//! - `resize_bicubic`: PIL's `Image.resize(size, BICUBIC, box)`, separable, kernel
//!   a = -0.5, widened by the shrink factor when shrinking (antialiasing), each pass
//!   clamped to [0, 1] as PIL clamps to 8 bits.

use image::RgbImage;
use rand::Rng;

use super::Image;
use crate::data::masks::uniform;

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
    let span = |c: &[(usize, Vec<f32>)]| {
        (c.iter().map(|c| c.0).min().unwrap_or(0), c.iter().map(|c| c.0 + c.1.len()).max().unwrap_or(0))
    };
    // Only the source rectangle the filters read is converted and filtered: a crop of a
    // large image costs its own size, not the image's.
    let (y_lo, y_hi) = span(&cy);
    let (x_lo, x_hi) = span(&cx);
    // Horizontal weights padded with zeros to one length, K, so the inner loop has a fixed
    // trip count (adding 0·x changes no sum).
    let k = cx.iter().map(|c| c.1.len()).max().unwrap_or(0);
    let mut wx = vec![0.0f32; out_w * k];
    for ((_, w), dst) in cx.iter().zip(wx.chunks_exact_mut(k.max(1))) {
        dst[..w.len()].copy_from_slice(w);
    }
    let raw = src.as_raw();
    let row_len = out_w * 3;
    // Horizontal pass over the source rows the vertical pass reads: (y_hi - y_lo, out_w, 3).
    let mut tmp = vec![0.0f32; (y_hi - y_lo) * row_len];
    // The row's columns x_lo..x_hi in [0, 1], then K zeros for the padded weights.
    let mut rowf = vec![0.0f32; (x_hi - x_lo + k) * 3];
    for (y, out) in (y_lo..y_hi).zip(tmp.chunks_exact_mut(row_len)) {
        let row = &raw[(y * sw + x_lo) * 3..(y * sw + x_hi) * 3];
        rowf.iter_mut().zip(row).for_each(|(d, &s)| *d = s as f32 / 255.0);
        for (((lo, _), w), o) in cx.iter().zip(wx.chunks_exact(k.max(1))).zip(out.chunks_exact_mut(3)) {
            let mut acc = [0.0f32; 3];
            for (p, &wv) in rowf[(lo - x_lo) * 3..(lo - x_lo + k) * 3].chunks_exact(3).zip(w) {
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
