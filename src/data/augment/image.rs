//! `Image`: an RGB image in f32, values in [0, 1], (H, W, 3) interleaved, and its
//! deterministic pixel ops, each the tensor formula of torchvision (no 8-bit rounding
//! between steps):
//!
//! ```text
//! brightness  clamp(f x)
//! contrast    clamp(f x + (1 - f) mean(luma))          mean over the whole image
//! saturation  clamp(f x + (1 - f) luma)                per pixel
//! hue         h -> (h + f) mod 1 through HSV            f in [-0.5, 0.5]
//! grayscale   luma = 0.2989 R + 0.587 G + 0.114 B, in all three channels
//! solarize    x -> 1 - x where x >= threshold
//! blur        separable Gaussian exp(-d^2 / (2 sigma^2)), |d| <= ceil(3 sigma), reflected borders
//! flip        horizontal
//! ```
//!
//! Conversion to and from 8-bit RGB and to the normalised (3, H, W) layout fed to the model.
//! The random draws (which ops, which factors) live in the pipeline (`augment/mod.rs`).

use image::RgbImage;

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
            // (h + f) mod 1 for h + f in [-0.5, 1.5): adding or subtracting 1 is what
            // rem_euclid does there, bit for bit, without a call to fmod.
            let x = h + f;
            let x = if x < 0.0 {
                x + 1.0
            } else if x >= 1.0 {
                x - 1.0
            } else {
                x
            };
            let [r, g, b] = hsv_to_rgb(x, s, v);
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
    // (t mod 1) for t = h/6 + 1 in [5/6, 2): t - 1 (exact) from 1 on, without fmod.
    let t = h / 6.0 + 1.0;
    (if t >= 1.0 { t - 1.0 } else { t }, s, maxc)
}

/// torchvision's _hsv2rgb for one pixel.
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    // floor without the libm call (x86-64's baseline has no rounding instruction).
    let i = (h * 6.0) as i32 as f32;
    let i = if i > h * 6.0 { i - 1.0 } else { i };
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
