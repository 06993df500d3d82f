//! Memory banks (docs/METHOD.md "Memory banks", "Bank updates"): GPU-resident FIFO rings
//! of unit vectors.
//!
//! vectors (N, W) start as random normal rows, L2-normalised. `push` writes R rows at the
//! ring pointer, wrapping around (N need not be a multiple of R). Each entry remembers the
//! dataset index of the image it came from (−1 for the random initial rows), so
//! `sop prototypes` can show what a prototype is made of. The objective reads the bank
//! before the step's push.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Result, SopError};
use crate::gpu::{Gpu, Tensor};
use crate::ops::gather::{scatter_rows_ring, scatter_rows_ring_unless};

pub struct Bank {
    /// (N, W) unit rows.
    pub vectors: Tensor,
    /// Next row to overwrite.
    pub ptr: usize,
    /// Dataset index of each row's image; −1 for initial random rows.
    pub sources: Vec<i64>,
}

impl Bank {
    /// N random unit vectors of width W, from `seed`.
    pub fn random(gpu: &Gpu, n: usize, width: usize, seed: u64) -> Result<Bank> {
        if n == 0 || width == 0 {
            return Err(SopError::Invalid(format!("memory bank of {n} x {width}: both must be positive")));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut host = vec![0f32; n * width];
        for row in host.chunks_mut(width) {
            for v in row.iter_mut() {
                *v = StandardNormal.sample(&mut rng);
            }
            let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
        Ok(Bank { vectors: gpu.upload_f32(&[n, width], &host)?, ptr: 0, sources: vec![-1; n] })
    }

    pub fn len(&self) -> usize {
        self.vectors.shape[0]
    }

    /// ‖Σ_i x_i‖² of the bank's rows, a (1) tensor left on the device (the step reads it
    /// with its other scalars). For unit rows it gives the mean cosine between distinct
    /// rows (`mean_cosine`): a diagnostic of the crowded phase, when the rows bunch up.
    pub fn sum_norm_sq(&self, gpu: &Gpu) -> Result<Tensor> {
        crate::ops::reduce::sum_squares(gpu, &crate::ops::reduce::sum_rows(gpu, &self.vectors)?)
    }

    /// Mean of x_i·x_j over the N(N−1) ordered pairs of distinct unit rows, from
    /// s = ‖Σ x_i‖² = N + Σ_{i≠j} x_i·x_j.
    pub fn mean_cosine(sum_norm_sq: f64, n: usize) -> f64 {
        let n = n as f64;
        (sum_norm_sq - n) / (n * (n - 1.0)).max(1.0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn width(&self) -> usize {
        self.vectors.shape[1]
    }

    /// Append rows (R, W) in FIFO order; `sources[i]` is row i's image index.
    pub fn push(&mut self, gpu: &Gpu, rows: &Tensor, sources: &[i64]) -> Result<()> {
        self.push_unless(gpu, rows, sources, None)
    }

    /// `push`, except that the device leaves the rows as they were while `skip` (one u32,
    /// a training step's non-finite flag) is set. The host's pointer and sources advance
    /// either way: a run stops at a non-finite step before it could save them.
    pub fn push_unless(&mut self, gpu: &Gpu, rows: &Tensor, sources: &[i64], skip: Option<&Tensor>) -> Result<()> {
        let r = rows.shape[0];
        if rows.shape.len() != 2 || rows.shape[1] != self.width() || sources.len() != r {
            return Err(SopError::shape(
                "bank push",
                format!("rows {:?} with {} sources into bank {:?}", rows.shape, sources.len(), self.vectors.shape),
            ));
        }
        if r > self.len() {
            return Err(SopError::shape("bank push", format!("{r} rows exceed the bank size {}", self.len())));
        }
        match skip {
            None => scatter_rows_ring(gpu, &self.vectors, rows, self.ptr)?,
            Some(flag) => scatter_rows_ring_unless(gpu, &self.vectors, rows, self.ptr, flag)?,
        }
        for (i, &s) in sources.iter().enumerate() {
            let at = (self.ptr + i) % self.len();
            self.sources[at] = s;
        }
        self.ptr = (self.ptr + r) % self.len();
        Ok(())
    }

    /// Restore from saved parts (a checkpoint).
    pub fn from_parts(gpu: &Gpu, n: usize, width: usize, data: &[f32], ptr: usize, sources: Vec<i64>) -> Result<Bank> {
        if data.len() != n * width || sources.len() != n || ptr >= n {
            return Err(SopError::Invalid(format!(
                "saved bank is inconsistent: {} values for {n} x {width}, {} sources, pointer {ptr}",
                data.len(),
                sources.len()
            )));
        }
        Ok(Bank { vectors: gpu.upload_f32(&[n, width], data)?, ptr, sources })
    }
}
