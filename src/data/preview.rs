//! The picture behind `sop preview`: for a few images, one row each with the original, its
//! global crops, its local crops and each global crop with its mask drawn over it (masked
//! patches tinted red). Crops are the exact views the loader produces for epoch 0 with the
//! same seed, de-normalised for display and enlarged by an integer factor (nearest
//! neighbour) so that small crops stay visible.

use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;

use super::augment::{resize_bicubic, AugmentConfig, Augmenter, Image};
use super::{sample_rng, Dataset, STREAM_PREVIEW};
use crate::error::{Result, SopError};

const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
const MASK_TINT: [f32; 3] = [1.0, 0.1, 0.1];
/// Cells are enlarged to at least this many pixels.
const MIN_CELL: usize = 128;
const GAP: usize = 4;
const GROUP_GAP: usize = 16;

/// Renders `n` randomly chosen images (seeded) of `ds` through `cfg`'s pipeline.
pub fn render_preview(ds: &Dataset, cfg: &AugmentConfig, n: usize, seed: u64) -> Result<RgbImage> {
    if n == 0 {
        return Err(SopError::Invalid("preview: the number of images must be at least 1".into()));
    }
    let aug = Augmenter::new(cfg)?;
    let mut order: Vec<usize> = (0..ds.len()).collect();
    order.shuffle(&mut sample_rng(seed, 0, 0, STREAM_PREVIEW));
    let picked: Vec<(usize, RgbImage)> = order.iter().filter_map(|&i| ds.load(i).map(|img| (i, img))).take(n).collect();
    if picked.is_empty() {
        return Err(SopError::file(ds.root(), "no decodable image to preview"));
    }

    let zoom = MIN_CELL.div_ceil(cfg.global_size).max(1);
    let cell = cfg.global_size * zoom;
    let lcell = cfg.local_size * zoom;
    let (gh, gw) = cfg.mask_grid();
    let patch = cfg.mask.patch_size;
    let l = cfg.local_crops;
    let groups = [cell + GAP, 2 * (cell + GAP), l * (lcell + GAP), 2 * (cell + GAP)];
    let width = GAP + groups.iter().sum::<usize>() + (groups.iter().filter(|&&g| g > 0).count() - 1) * GROUP_GAP;
    let height = GAP + picked.len() * (cell + GAP);
    let mut canvas = RgbImage::from_pixel(width as u32, height as u32, BACKGROUND);

    for (row, (index, img)) in picked.iter().enumerate() {
        let views = aug.views(img, seed, 0, *index as u64);
        let y = GAP + row * (cell + GAP);
        let mut x = GAP;

        let scale = cell as f64 / img.width().max(img.height()) as f64;
        let (ow, oh) = ((img.width() as f64 * scale).round() as usize, (img.height() as f64 * scale).round() as usize);
        let original = resize_bicubic(img, [0.0, 0.0, img.width() as f64, img.height() as f64], ow.max(1), oh.max(1));
        blit(&mut canvas, &original, x + (cell - original.width) / 2, y + (cell - original.height) / 2, 1);
        x += cell + GAP + GROUP_GAP;

        let s = cfg.global_size;
        let globals: Vec<Image> = (0..2)
            .map(|v| {
                Image::from_normalized_chw(&views.globals[v * 3 * s * s..][..3 * s * s], s, s, &cfg.mean, &cfg.std)
            })
            .collect();
        for g in &globals {
            blit(&mut canvas, g, x, y, zoom);
            x += cell + GAP;
        }
        x += GROUP_GAP;

        let ls = cfg.local_size;
        for v in 0..l {
            let local = Image::from_normalized_chw(
                &views.locals[v * 3 * ls * ls..][..3 * ls * ls],
                ls,
                ls,
                &cfg.mean,
                &cfg.std,
            );
            blit(&mut canvas, &local, x, y + (cell - lcell) / 2, zoom);
            x += lcell + GAP;
        }
        if l > 0 {
            x += GROUP_GAP;
        }

        for (v, g) in globals.iter().enumerate() {
            let mut tinted = g.clone();
            let mask = &views.masks[v * gh * gw..][..gh * gw];
            for py in 0..s {
                for px in 0..s {
                    if mask[(py / patch).min(gh - 1) * gw + (px / patch).min(gw - 1)] != 0 {
                        let p = &mut tinted.data[(py * s + px) * 3..][..3];
                        (0..3).for_each(|c| p[c] = 0.45 * p[c] + 0.55 * MASK_TINT[c]);
                    }
                }
            }
            blit(&mut canvas, &tinted, x, y, zoom);
            x += cell + GAP;
        }
    }
    Ok(canvas)
}

/// Draws `img` enlarged `zoom` times (nearest neighbour) with its top-left at (x0, y0).
fn blit(canvas: &mut RgbImage, img: &Image, x0: usize, y0: usize, zoom: usize) {
    let px = img.to_rgb8();
    for y in 0..img.height * zoom {
        for x in 0..img.width * zoom {
            let (cx, cy) = ((x0 + x) as u32, (y0 + y) as u32);
            if cx < canvas.width() && cy < canvas.height() {
                canvas.put_pixel(cx, cy, *px.get_pixel((x / zoom) as u32, (y / zoom) as u32));
            }
        }
    }
}
