//! Frozen-backbone features: the final-norm [CLS] token of every image of a dataset,
//! computed on the GPU in batches (no head, no grad). Used by `sop embed`, k-NN and the
//! linear probe.

use std::sync::Arc;

use crate::data::{Dataset, EvalConfig, Loader, LoaderConfig, Views};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::vit::{ForwardOptions, Vit, Weights};
use crate::tape::Tape;

pub struct Features {
    /// (N, D) row-major, in dataset order (undecodable images left out).
    pub data: Vec<f32>,
    pub dim: usize,
    /// Dataset index of each row.
    pub indices: Vec<usize>,
    /// Images skipped because they did not decode.
    pub skipped: usize,
}

impl Features {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
    /// Rows scaled to unit L2 norm (the k-NN protocol).
    pub fn normalized(&self) -> Vec<f32> {
        let mut out = self.data.clone();
        for row in out.chunks_mut(self.dim) {
            let n = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
        }
        out
    }
}

/// [CLS] features of every image of `dataset`, resized to the model's input size.
pub fn extract(gpu: &Gpu, vit: &Vit, weights: &Weights, dataset: Arc<Dataset>, batch: usize) -> Result<Features> {
    // The whole image resized to the input size (no centre crop): small datasets such as
    // Fashion-MNIST have no border to spare.
    let eval = EvalConfig { size: vit.cfg.img_size, crop_fraction: 1.0, ..EvalConfig::default() };
    let cfg = LoaderConfig { batch_size: batch.max(1), drop_last: false, shuffle: false, ..LoaderConfig::default() };
    let mut loader = Loader::new(dataset, Views::Eval(eval), cfg)?;
    let dim = vit.cfg.dim;
    let mut data = Vec::new();
    let mut indices = Vec::new();
    let mut skipped = 0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        skipped += batch.skipped;
        let b = batch.batch_size;
        let s = batch.global_size;
        let images = gpu.upload_f32(&[b, 3, s, s], &batch.globals)?;
        let mut tape = Tape::no_grad(gpu);
        let p = weights.leaves(&mut tape, false);
        let x = tape.constant(images);
        let tokens = vit.backbone(&mut tape, &p, &x, &ForwardOptions::default())?;
        let (cls, _) = tape.tokens_split(&tokens)?;
        data.extend(gpu.read_f32(&cls.value)?);
        indices.extend(batch.indices.iter().copied());
    }
    Ok(Features { data, dim, indices, skipped })
}

/// Raw-pixel "features": each image resized to `size`, normalised, flattened (3·size²).
/// The baseline a learned representation has to beat.
pub fn pixels(dataset: Arc<Dataset>, size: usize, batch: usize) -> Result<Features> {
    let eval = EvalConfig { size, crop_fraction: 1.0, ..EvalConfig::default() };
    let cfg = LoaderConfig { batch_size: batch.max(1), drop_last: false, shuffle: false, ..LoaderConfig::default() };
    let mut loader = Loader::new(dataset, Views::Eval(eval), cfg)?;
    let (mut data, mut indices, mut skipped) = (Vec::new(), Vec::new(), 0);
    for batch in loader.epoch(0) {
        let batch = batch?;
        skipped += batch.skipped;
        data.extend_from_slice(&batch.globals);
        indices.extend(batch.indices.iter().copied());
    }
    Ok(Features { data, dim: 3 * size * size, indices, skipped })
}
