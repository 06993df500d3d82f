//! Generated photographs-alike for benchmarks and tests: `write_jpegs` fills a folder with
//! JPEGs of about ImageNet's typical size (500 × 375 by default) and content a JPEG decoder
//! has to work for: a smooth two-colour gradient, a few filled ellipses and rectangles in
//! random colours, and per-pixel noise (so the DCT blocks are not flat), saved at quality
//! 90 like most camera and web images. Deterministic in the seed.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

use crate::error::{Result, SopError};

/// One generated picture of `width` × `height` from `seed`.
pub fn picture(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c0: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
    let c1: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
    // (centre x, centre y, radius x, radius y, colour, ellipse or rectangle)
    let shapes: Vec<(f32, f32, f32, f32, [f32; 3], bool)> = (0..rng.random_range(3..8))
        .map(|_| {
            let (cx, cy) = (rng.random_range(0.0..width as f32), rng.random_range(0.0..height as f32));
            let (rx, ry) = (rng.random_range(10.0..width as f32 / 3.0), rng.random_range(10.0..height as f32 / 3.0));
            (cx, cy, rx, ry, std::array::from_fn(|_| rng.random_range(0.0..255.0)), rng.random_bool(0.5))
        })
        .collect();
    let mut img = RgbImage::new(width, height);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let t = (x + y) as f32 / (width + height) as f32;
        let mut c: [f32; 3] = std::array::from_fn(|k| c0[k] * (1.0 - t) + c1[k] * t);
        for &(cx, cy, rx, ry, col, ellipse) in &shapes {
            let (dx, dy) = ((x as f32 - cx) / rx, (y as f32 - cy) / ry);
            let inside = if ellipse { dx * dx + dy * dy <= 1.0 } else { dx.abs() <= 1.0 && dy.abs() <= 1.0 };
            if inside {
                c = col;
            }
        }
        let noise = rng.random_range(-12.0..12.0);
        *px = Rgb(c.map(|v| (v + noise).clamp(0.0, 255.0) as u8));
    }
    img
}

/// `n` JPEGs `img_00000.jpg`, … of `width` × `height` in `dir` (created), in `classes`
/// class subfolders when `classes` > 1; returns their paths.
pub fn write_jpegs(dir: &Path, n: usize, width: u32, height: u32, classes: usize, seed: u64) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(n);
    for i in 0..n {
        let sub = if classes > 1 { dir.join(format!("class_{}", i % classes)) } else { dir.to_path_buf() };
        std::fs::create_dir_all(&sub).map_err(|e| SopError::file(&sub, e))?;
        let path = sub.join(format!("img_{i:05}.jpg"));
        let file = std::fs::File::create(&path).map_err(|e| SopError::file(&path, e))?;
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90);
        enc.encode_image(&picture(width, height, seed.wrapping_add(i as u64)))
            .map_err(|e| SopError::file(&path, e.to_string()))?;
        paths.push(path);
    }
    Ok(paths)
}
