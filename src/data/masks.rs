//! Block-wise masks for the global crops: the BEiT/iBOT generator (iBOT's
//! `ImageFolderMask._mask`, pred_shape "block"), as docs/METHOD.md "Data views" describes it.
//!
//! On an H x W patch grid, target = ratio * H * W (a float; with a ratio variance v the
//! ratio is drawn uniformly from [r - v, r + v] per mask). While the masked count is below
//! the target, place one rectangle:
//!   up to `attempts` (10) tries: area ~ U(min_area, remaining) (Python's random.uniform,
//!   so the bounds may be in either order), aspect = exp(U(ln a0, ln a1)) with
//!   (a0, a1) = (0.3, 1/0.3), h = round(sqrt(area * aspect)), w = round(sqrt(area /
//!   aspect)) (Python rounding, ties to even); if h < H and w < W, pick the top-left
//!   uniformly and accept the rectangle when it turns between 1 and `remaining` new cells
//!   on; the first accepted rectangle ends the tries.
//! Stop when all tries fail. So the masked count never exceeds the target, and it falls
//! short of it only when no rectangle small enough is found in 10 tries (the "shortfall").
//! min_area = (min(H, W) // 3)^2 (16 on a 14 x 14 grid).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SopError};

/// Mask parameters; the grid is the global crop size divided by `patch_size`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskConfig {
    /// Patch size of the model, in pixels: the grid of a `size` crop is size / patch_size.
    pub patch_size: usize,
    /// Fraction of patches to mask.
    pub ratio: f64,
    /// The ratio is drawn from U(ratio - ratio_var, ratio + ratio_var) per mask.
    pub ratio_var: f64,
    /// Aspect ratios (h / w) are log-uniform in [min_aspect, 1 / min_aspect].
    pub min_aspect: f64,
    /// Smallest rectangle area; None means (min(H, W) // 3)^2.
    pub min_area: Option<usize>,
    /// Tries per rectangle before giving up.
    pub attempts: usize,
}

impl Default for MaskConfig {
    fn default() -> Self {
        MaskConfig { patch_size: 16, ratio: 0.3, ratio_var: 0.0, min_aspect: 0.3, min_area: None, attempts: 10 }
    }
}

impl MaskConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SopError::Invalid(format!("mask config: {m}")));
        if self.patch_size == 0 {
            return bad("patch_size must be positive".into());
        }
        if !(self.ratio_var >= 0.0 && self.ratio - self.ratio_var >= 0.0 && self.ratio + self.ratio_var <= 1.0) {
            return bad(format!(
                "ratio {} +- ratio_var {} must stay within [0, 1] (and ratio_var >= 0)",
                self.ratio, self.ratio_var
            ));
        }
        if !(self.min_aspect > 0.0 && self.min_aspect <= 1.0) {
            return bad(format!("min_aspect {} must be in (0, 1]", self.min_aspect));
        }
        if self.attempts == 0 {
            return bad("attempts must be positive".into());
        }
        Ok(())
    }
}

/// One rectangle of patches: rows top..top+h, columns left..left+w.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub top: usize,
    pub left: usize,
    pub h: usize,
    pub w: usize,
}

/// A mask over an H x W grid (row-major, 1 = masked) and the rectangles that made it.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMask {
    pub height: usize,
    pub width: usize,
    pub cells: Vec<u8>,
    /// Accepted rectangles in order; their union is exactly the masked cells.
    pub rects: Vec<Rect>,
    /// The target count (ratio * H * W) this mask was drawn for.
    pub target: f64,
}

impl BlockMask {
    pub fn count(&self) -> usize {
        self.cells.iter().map(|&c| c as usize).sum()
    }
}

/// The generator for one grid size, with its parameters resolved.
#[derive(Clone, Debug)]
pub struct MaskGenerator {
    height: usize,
    width: usize,
    ratio: f64,
    ratio_var: f64,
    min_area: f64,
    log_aspect: (f64, f64),
    attempts: usize,
}

impl MaskGenerator {
    pub fn new(height: usize, width: usize, cfg: &MaskConfig) -> Result<MaskGenerator> {
        cfg.validate()?;
        if height == 0 || width == 0 {
            return Err(SopError::Invalid(format!("mask grid {height}x{width} is empty")));
        }
        let min_area = cfg.min_area.unwrap_or_else(|| (height.min(width) / 3).pow(2));
        Ok(MaskGenerator {
            height,
            width,
            ratio: cfg.ratio,
            ratio_var: cfg.ratio_var,
            min_area: min_area as f64,
            log_aspect: (cfg.min_aspect.ln(), (1.0 / cfg.min_aspect).ln()),
            attempts: cfg.attempts,
        })
    }

    pub fn grid(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    pub fn generate(&self, rng: &mut impl Rng) -> BlockMask {
        let (hh, ww) = (self.height, self.width);
        let ratio = if self.ratio_var > 0.0 {
            uniform(rng, self.ratio - self.ratio_var, self.ratio + self.ratio_var)
        } else {
            self.ratio
        };
        let target = ratio * (hh * ww) as f64;
        let mut mask = BlockMask { height: hh, width: ww, cells: vec![0; hh * ww], rects: Vec::new(), target };
        let mut count = 0usize;
        while (count as f64) < target {
            let added = self.place(&mut mask, target - count as f64, rng);
            if added == 0 {
                break;
            }
            count += added;
        }
        mask
    }

    /// One rectangle turning between 1 and `remaining` new cells on, in up to `attempts`
    /// tries; returns how many cells it turned on (0: every try failed).
    fn place(&self, mask: &mut BlockMask, remaining: f64, rng: &mut impl Rng) -> usize {
        for _ in 0..self.attempts {
            let area = uniform(rng, self.min_area, remaining);
            let aspect = uniform(rng, self.log_aspect.0, self.log_aspect.1).exp();
            let h = (area * aspect).sqrt().round_ties_even() as usize;
            let w = (area / aspect).sqrt().round_ties_even() as usize;
            if h >= self.height || w >= self.width {
                continue;
            }
            let top = rng.random_range(0..=self.height - h);
            let left = rng.random_range(0..=self.width - w);
            let rows = top..top + h;
            let already: usize = rows
                .clone()
                .map(|r| mask.cells[r * mask.width + left..][..w].iter().map(|&c| c as usize).sum::<usize>())
                .sum();
            let new = h * w - already;
            if new > 0 && new as f64 <= remaining {
                for r in rows {
                    mask.cells[r * mask.width + left..][..w].fill(1);
                }
                mask.rects.push(Rect { top, left, h, w });
                return new;
            }
        }
        0
    }
}

/// Python's random.uniform: a + (b - a) * U[0, 1), whichever of a and b is larger.
pub(crate) fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}
