//! The loader: a background thread that walks the epochs and, for each batch, decodes and
//! augments its samples on a rayon pool, then hands contiguous f32 batches to the trainer
//! through a bounded channel (`prefetch` batches ahead), so the CPU work overlaps the GPU's.
//!
//! Epoch e visits the samples in a permutation drawn from (seed, e) (or in order without
//! shuffling). A sample that does not decode is skipped (warned about once, by
//! `Dataset::load`) and the next sample of the permutation takes its place, so every
//! batch but possibly the last is full; `Batch::skipped` and `EpochSummary::skipped` count
//! the skipped samples. With `drop_last` a final partial batch is not sent.
//!
//! ```text
//! let mut loader = Loader::new(dataset, Views::Train(aug), cfg)?;
//! for epoch in 0..epochs {
//!     for batch in loader.epoch(epoch) { let batch = batch?; ... }
//!     let summary = loader.summary();
//! }
//! ```
//! While epoch e is consumed the thread is already preparing epoch e + 1; asking for any
//! other epoch (or again for an epoch left unfinished) restarts the thread there.
//! Dropping the loader stops the thread and waits for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::augment::{eval_view, AugmentConfig, Augmenter, EvalConfig, SampleViews};
use super::{sample_rng, Dataset, STREAM_SHUFFLE};
use crate::error::{Result, SopError};

#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch (B).
    pub batch_size: usize,
    /// Leave out the final partial batch of an epoch.
    pub drop_last: bool,
    /// Visit the samples in a random order drawn from (seed, epoch).
    pub shuffle: bool,
    pub seed: u64,
    /// Batches prepared ahead of the consumer (2 to 4 is plenty).
    pub prefetch: usize,
    /// Decoding threads; 0 means one per core.
    pub threads: usize,
    /// (rank, ranks) of data-parallel training: this loader reads places [rank·B, (rank+1)·B)
    /// of every ranks·B of the epoch's order (`dist::layout::Shard`); (0, 1) reads it all.
    pub shard: (usize, usize),
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig { batch_size: 64, drop_last: true, shuffle: true, seed: 0, prefetch: 2, threads: 0, shard: (0, 1) }
    }
}

/// What the loader makes of each image.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per loader; boxing would only cost clarity
pub enum Views {
    /// Two masked global crops plus the local crops (training).
    Train(AugmentConfig),
    /// One deterministic resized centre crop, no mask (feature extraction, k-NN).
    Eval(EvalConfig),
}

/// One batch, every array contiguous and view-major.
#[derive(Clone, Debug)]
pub struct Batch {
    pub epoch: usize,
    /// Index of this batch within its epoch.
    pub step: usize,
    /// B (the last batch of an epoch may be smaller without drop_last).
    pub batch_size: usize,
    /// G: 2 when training, 1 in eval.
    pub n_global: usize,
    /// S
    pub global_size: usize,
    /// L
    pub n_local: usize,
    /// s
    pub local_size: usize,
    /// Mask grid (h, w) of a global crop; (0, 0) in eval.
    pub grid: (usize, usize),
    /// (G, B, 3, S, S), normalised.
    pub globals: Vec<f32>,
    /// (L, B, 3, s, s), normalised.
    pub locals: Vec<f32>,
    /// (G, B, h * w), 1 = masked patch; empty in eval.
    pub masks: Vec<u32>,
    /// (B), or None for an unlabeled dataset.
    pub labels: Option<Vec<u32>>,
    /// (B) dataset index of each image.
    pub indices: Vec<usize>,
    /// Samples skipped (undecodable) while this batch was filled.
    pub skipped: usize,
}

impl Batch {
    /// Global view v of image b: (3, S, S).
    pub fn global(&self, v: usize, b: usize) -> &[f32] {
        let n = 3 * self.global_size * self.global_size;
        &self.globals[(v * self.batch_size + b) * n..][..n]
    }

    /// Local view l of image b: (3, s, s).
    pub fn local(&self, l: usize, b: usize) -> &[f32] {
        let n = 3 * self.local_size * self.local_size;
        &self.locals[(l * self.batch_size + b) * n..][..n]
    }

    /// Mask of global view v of image b: (h * w).
    pub fn mask(&self, v: usize, b: usize) -> &[u32] {
        let n = self.grid.0 * self.grid.1;
        &self.masks[(v * self.batch_size + b) * n..][..n]
    }
}

/// What one epoch delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochSummary {
    pub epoch: usize,
    pub batches: usize,
    pub samples: usize,
    /// Undecodable samples skipped this epoch (including a dropped partial batch's).
    pub skipped: usize,
}

#[allow(clippy::large_enum_variant)] // one per loader
enum Transform {
    Train(Augmenter),
    Eval(EvalConfig),
}

impl Transform {
    fn apply(&self, img: &image::RgbImage, seed: u64, epoch: usize, index: usize) -> SampleViews {
        match self {
            Transform::Train(a) => a.views(img, seed, epoch as u64, index as u64),
            Transform::Eval(c) => SampleViews {
                globals: eval_view(img, c).normalized_chw(&c.mean, &c.std),
                locals: Vec::new(),
                masks: Vec::new(),
            },
        }
    }

    /// (G, S, L, s, grid)
    fn layout(&self) -> (usize, usize, usize, usize, (usize, usize)) {
        match self {
            Transform::Train(a) => {
                let c = a.config();
                (2, c.global_size, c.local_crops, c.local_size, c.mask_grid())
            }
            Transform::Eval(c) => (1, c.size, 0, 0, (0, 0)),
        }
    }
}

struct Shared {
    dataset: Arc<Dataset>,
    transform: Transform,
    cfg: LoaderConfig,
    pool: rayon::ThreadPool,
}

enum Msg {
    Batch(Batch),
    End(EpochSummary),
}

struct Worker {
    rx: Option<Receiver<Msg>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// The epoch whose first batch is next in the channel; None when one is half read.
    next_epoch: Option<usize>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a send; the thread finishes its batch and exits.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub struct Loader {
    shared: Arc<Shared>,
    worker: Option<Worker>,
    summary: Option<EpochSummary>,
}

impl Loader {
    pub fn new(dataset: Arc<Dataset>, views: Views, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch_size == 0 {
            return Err(SopError::Invalid("loader: batch_size must be positive".into()));
        }
        if cfg.drop_last && dataset.len() < cfg.batch_size {
            return Err(SopError::Invalid(format!(
                "{} has {} images, fewer than one batch of {} (drop_last would give empty epochs)",
                dataset.root().display(),
                dataset.len(),
                cfg.batch_size
            )));
        }
        let transform = match views {
            Views::Train(a) => Transform::Train(Augmenter::new(&a)?),
            Views::Eval(e) => {
                e.validate()?;
                Transform::Eval(e)
            }
        };
        let threads =
            if cfg.threads > 0 { cfg.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sop-data-{i}"))
            .build()
            .map_err(|e| SopError::Invalid(format!("loader: cannot start {threads} threads: {e}")))?;
        Ok(Loader { shared: Arc::new(Shared { dataset, transform, cfg, pool }), worker: None, summary: None })
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.shared.dataset
    }

    /// Batches per epoch when no further file turns out to be undecodable (an upper bound).
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.shared.dataset.len() - self.shared.dataset.bad_count();
        let b = self.shared.cfg.batch_size;
        if self.shared.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The batches of `epoch`, in order; the summary is available once it has ended.
    pub fn epoch(&mut self, epoch: usize) -> EpochIter<'_> {
        if self.worker.as_ref().and_then(|w| w.next_epoch) != Some(epoch) {
            self.worker = None; // stop the old thread before starting the new one
            self.worker = Some(self.spawn(epoch));
        }
        if let Some(w) = self.worker.as_mut() {
            w.next_epoch = None;
        }
        EpochIter { loader: self, epoch, done: false }
    }

    /// The summary of the last epoch read to its end.
    pub fn summary(&self) -> Option<&EpochSummary> {
        self.summary.as_ref()
    }

    fn spawn(&self, first_epoch: usize) -> Worker {
        let (tx, rx) = sync_channel(self.shared.cfg.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stop2) = (self.shared.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("sop-loader".into())
            .spawn(move || {
                for epoch in first_epoch.. {
                    if !produce_epoch(&shared, epoch, &tx, &stop2) {
                        return;
                    }
                }
            })
            .expect("spawning the loader thread");
        Worker { rx: Some(rx), stop, handle: Some(handle), next_epoch: Some(first_epoch) }
    }
}

/// Iterator over one epoch's batches (see `Loader::epoch`).
pub struct EpochIter<'a> {
    loader: &'a mut Loader,
    epoch: usize,
    done: bool,
}

impl Iterator for EpochIter<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        let msg = self.loader.worker.as_ref().and_then(|w| w.rx.as_ref()).map(|rx| rx.recv());
        match msg {
            Some(Ok(Msg::Batch(b))) => Some(Ok(b)),
            Some(Ok(Msg::End(s))) => {
                self.done = true;
                self.loader.summary = Some(s);
                if let Some(w) = self.loader.worker.as_mut() {
                    w.next_epoch = Some(self.epoch + 1);
                }
                None
            }
            _ => {
                self.done = true;
                self.loader.worker = None;
                Some(Err(SopError::Invalid("the data loader thread stopped unexpectedly (it panicked?)".into())))
            }
        }
    }
}

/// Sends the batches of `epoch` then its summary; false when asked to stop.
fn produce_epoch(shared: &Shared, epoch: usize, tx: &SyncSender<Msg>, stop: &AtomicBool) -> bool {
    let (ds, cfg) = (&shared.dataset, &shared.cfg);
    let mut order: Vec<usize> = (0..ds.len()).collect();
    if cfg.shuffle {
        order.shuffle(&mut sample_rng(cfg.seed, epoch as u64, 0, STREAM_SHUFFLE));
    }
    let (rank, ranks) = cfg.shard;
    let order = crate::dist::layout::Shard { rank, ranks, batch: cfg.batch_size }.of_order(&order);
    let mut summary = EpochSummary { epoch, batches: 0, samples: 0, skipped: 0 };
    let mut cursor = 0;
    while cursor < order.len() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        // Fill the batch; a skipped sample's place goes to the next one in the order.
        let mut chosen: Vec<(usize, SampleViews)> = Vec::with_capacity(cfg.batch_size);
        let mut skipped = 0;
        while chosen.len() < cfg.batch_size && cursor < order.len() {
            let take = &order[cursor..(cursor + cfg.batch_size - chosen.len()).min(order.len())];
            cursor += take.len();
            let done: Vec<(usize, Option<SampleViews>)> = shared.pool.install(|| {
                take.par_iter()
                    .map(|&i| (i, ds.load(i).map(|img| shared.transform.apply(&img, cfg.seed, epoch, i))))
                    .collect()
            });
            for (i, v) in done {
                match v {
                    Some(v) => chosen.push((i, v)),
                    None => skipped += 1,
                }
            }
        }
        summary.skipped += skipped;
        if chosen.is_empty() || (cfg.drop_last && chosen.len() < cfg.batch_size) {
            break;
        }
        let batch = assemble(shared, epoch, summary.batches, chosen, skipped);
        summary.batches += 1;
        summary.samples += batch.batch_size;
        if tx.send(Msg::Batch(batch)).is_err() {
            return false;
        }
    }
    if summary.batches == 0 && ds.bad_count() == ds.len() {
        log::error!("{}: no image of this epoch could be decoded", ds.root().display());
    }
    tx.send(Msg::End(summary)).is_ok()
}

/// Copies per-sample views into the view-major batch arrays.
fn assemble(shared: &Shared, epoch: usize, step: usize, chosen: Vec<(usize, SampleViews)>, skipped: usize) -> Batch {
    let (g, s, l, ls, grid) = shared.transform.layout();
    let b = chosen.len();
    let (gn, ln, mn) = (3 * s * s, 3 * ls * ls, grid.0 * grid.1);
    let mut globals = vec![0.0f32; g * b * gn];
    let mut locals = vec![0.0f32; l * b * ln];
    let mut masks = vec![0u32; if mn > 0 { g * b * mn } else { 0 }];
    for (j, (_, sv)) in chosen.iter().enumerate() {
        for v in 0..g {
            globals[(v * b + j) * gn..][..gn].copy_from_slice(&sv.globals[v * gn..][..gn]);
            if mn > 0 {
                masks[(v * b + j) * mn..][..mn].copy_from_slice(&sv.masks[v * mn..][..mn]);
            }
        }
        for v in 0..l {
            locals[(v * b + j) * ln..][..ln].copy_from_slice(&sv.locals[v * ln..][..ln]);
        }
    }
    let indices: Vec<usize> = chosen.iter().map(|(i, _)| *i).collect();
    let labels = shared.dataset.labels().map(|lab| indices.iter().map(|&i| lab[i]).collect());
    Batch {
        epoch,
        step,
        batch_size: b,
        n_global: g,
        global_size: s,
        n_local: l,
        local_size: ls,
        grid,
        globals,
        locals,
        masks,
        labels,
        indices,
        skipped,
    }
}
