//! The loader on the bundled Fashion-MNIST subset: documented shapes and layout, fixed
//! seeds reproduce batches whatever the thread count, epochs visit every sample once,
//! restarts and early drops behave.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use sop::data::augment::Augmenter;
use sop::data::{AugmentConfig, Batch, Dataset, EvalConfig, Loader, LoaderConfig, MaskConfig, Split, Views};

fn fashion(split: Split) -> Arc<Dataset> {
    Arc::new(Dataset::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist"), split).unwrap())
}

fn small_aug(local_crops: usize) -> AugmentConfig {
    AugmentConfig {
        global_size: 32,
        local_size: 16,
        local_crops,
        mask: MaskConfig { patch_size: 4, ..MaskConfig::default() },
        ..AugmentConfig::default()
    }
}

fn cfg(batch_size: usize, seed: u64, threads: usize) -> LoaderConfig {
    LoaderConfig { batch_size, seed, threads, ..LoaderConfig::default() }
}

fn first_batch(loader: &mut Loader, epoch: usize) -> Batch {
    loader.epoch(epoch).next().unwrap().unwrap()
}

#[test]
fn batches_have_the_documented_shapes_and_layout() {
    let ds = fashion(Split::Train);
    let aug = small_aug(2);
    let mut loader = Loader::new(ds.clone(), Views::Train(aug.clone()), cfg(6, 3, 2)).unwrap();
    let b = first_batch(&mut loader, 0);
    let (bs, s, ls, hw) = (6, 32, 16, 8 * 8);
    assert_eq!((b.batch_size, b.n_global, b.global_size, b.n_local, b.local_size, b.grid), (bs, 2, s, 2, ls, (8, 8)));
    assert_eq!(b.globals.len(), 2 * bs * 3 * s * s); // (2, B, 3, S, S)
    assert_eq!(b.locals.len(), 2 * bs * 3 * ls * ls); // (L, B, 3, s, s)
    assert_eq!(b.masks.len(), 2 * bs * hw); // (2, B, h * w)
    assert_eq!(b.indices.len(), bs);
    assert_eq!(b.labels.as_ref().unwrap().len(), bs);
    assert_eq!((b.epoch, b.step, b.skipped), (0, 0, 0));
    assert!(b.masks.iter().all(|&m| m <= 1));
    for v in 0..2 {
        for i in 0..bs {
            let n = b.mask(v, i).iter().sum::<u32>() as f64;
            assert!(n > 0.0 && n <= 0.3 * hw as f64, "mask ({v}, {i}) has {n} patches");
        }
    }
    // View-major layout: the slice for (view v, image i) is exactly that sample's view.
    let augmenter = Augmenter::new(&aug).unwrap();
    for (i, &idx) in b.indices.iter().enumerate() {
        assert_eq!(b.labels.as_ref().unwrap()[i], ds.label(idx).unwrap());
        let want = augmenter.views(&ds.get(idx).unwrap(), 3, 0, idx as u64);
        let (g, l, m) = (3 * s * s, 3 * ls * ls, hw);
        for v in 0..2 {
            assert_eq!(b.global(v, i), &want.globals[v * g..][..g], "global ({v}, {i})");
            assert_eq!(b.local(v, i), &want.locals[v * l..][..l], "local ({v}, {i})");
            assert_eq!(b.mask(v, i), &want.masks[v * m..][..m], "mask ({v}, {i})");
            assert_eq!(&b.globals[(v * bs + i) * g..][..g], b.global(v, i));
        }
    }

    // Full-size defaults: 224 / 96 crops, 14 x 14 grid.
    let big = AugmentConfig { local_crops: 2, ..AugmentConfig::default() };
    let mut loader = Loader::new(ds, Views::Train(big), cfg(2, 0, 2)).unwrap();
    let b = first_batch(&mut loader, 0);
    assert_eq!(b.globals.len(), 2 * 2 * 3 * 224 * 224);
    assert_eq!(b.locals.len(), 2 * 2 * 3 * 96 * 96);
    assert_eq!(b.masks.len(), 2 * 2 * 196);
}

#[test]
fn fixed_seed_reproduces_the_same_batch() {
    let ds = fashion(Split::Train);
    let run = |seed: u64, threads: usize| {
        let mut l = Loader::new(ds.clone(), Views::Train(small_aug(2)), cfg(8, seed, threads)).unwrap();
        let mut it = l.epoch(1);
        let (a, b) = (it.next().unwrap().unwrap(), it.next().unwrap().unwrap());
        (a.indices, a.globals, a.locals, a.masks, b.indices, b.globals)
    };
    let a = run(42, 1);
    assert_eq!(a, run(42, 3), "the thread count changed the batch");
    assert_eq!(a, run(42, 1));
    let other = run(43, 2);
    assert_ne!(a.0, other.0, "another seed, same shuffle");
    assert_ne!(a.1, other.1, "another seed, same crops");
}

#[test]
fn epochs_visit_every_sample_once_in_a_new_order() {
    let ds = fashion(Split::Test); // 500 images
    let mut loader = Loader::new(ds.clone(), Views::Train(small_aug(0)), cfg(64, 1, 2)).unwrap();
    assert_eq!(loader.batches_per_epoch(), 7);
    let mut orders = Vec::new();
    for epoch in 0..2 {
        let mut seen = Vec::new();
        for (step, b) in loader.epoch(epoch).enumerate() {
            let b = b.unwrap();
            assert_eq!((b.epoch, b.step, b.batch_size), (epoch, step, 64));
            assert!(b.locals.is_empty());
            seen.extend(b.indices);
        }
        // drop_last: 7 full batches of 64, the last 52 samples left out.
        assert_eq!(seen.len(), 448);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 448, "a sample came twice");
        let s = loader.summary().unwrap();
        assert_eq!((s.epoch, s.batches, s.samples, s.skipped), (epoch, 7, 448, 0));
        orders.push(seen);
    }
    assert_ne!(orders[0], orders[1], "the same order in two epochs");

    // Asking for epoch 1 directly gives what running epoch 0 then 1 gave.
    let mut fresh = Loader::new(ds.clone(), Views::Train(small_aug(0)), cfg(64, 1, 1)).unwrap();
    let again: Vec<usize> = fresh.epoch(1).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(again, orders[1]);

    // Without drop_last and shuffle: all 500 in order, the last batch of 52.
    let c = LoaderConfig { drop_last: false, shuffle: false, ..cfg(64, 1, 2) };
    let mut loader = Loader::new(ds, Views::Train(small_aug(0)), c).unwrap();
    let sizes: Vec<usize> = loader.epoch(0).map(|b| b.unwrap().batch_size).collect();
    assert_eq!(sizes, [64, 64, 64, 64, 64, 64, 64, 52]);
    let all: Vec<usize> = loader.epoch(1).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(all, (0..500).collect::<Vec<_>>());
}

#[test]
fn leaving_an_epoch_early_and_dropping_the_loader_are_clean() {
    let ds = fashion(Split::Train);
    let mut loader =
        Loader::new(ds.clone(), Views::Train(small_aug(1)), LoaderConfig { prefetch: 3, ..cfg(16, 5, 2) }).unwrap();
    let first = first_batch(&mut loader, 0); // leaves epoch 0 after one batch
    assert!(loader.summary().is_none());
    // Epoch 0 again restarts it from the beginning.
    let again = first_batch(&mut loader, 0);
    assert_eq!(first.indices, again.indices);
    assert_eq!(first.globals, again.globals);
    // Dropped while the thread is blocked on a full channel: must return promptly.
    let t = std::time::Instant::now();
    drop(loader);
    assert!(t.elapsed().as_secs_f64() < 5.0, "drop took {:?}", t.elapsed());

    assert!(Loader::new(ds.clone(), Views::Train(small_aug(0)), cfg(0, 0, 1)).is_err(), "batch 0");
    assert!(Loader::new(ds.clone(), Views::Train(small_aug(0)), cfg(4000, 0, 1)).is_err(), "batch > dataset");
    let bad = AugmentConfig { global_size: 30, ..small_aug(0) };
    assert!(Loader::new(ds, Views::Train(bad), cfg(4, 0, 1)).is_err(), "crop not a multiple of the patch");
}

#[test]
fn eval_views_are_single_centre_crops() {
    let ds = fashion(Split::Test);
    let c = LoaderConfig { shuffle: false, drop_last: false, ..cfg(10, 0, 2) };
    let views = Views::Eval(EvalConfig { size: 32, crop_fraction: 1.0, ..EvalConfig::default() });
    let mut loader = Loader::new(ds, views, c).unwrap();
    let b = first_batch(&mut loader, 0);
    assert_eq!((b.n_global, b.n_local, b.grid), (1, 0, (0, 0)));
    assert_eq!(b.globals.len(), 10 * 3 * 32 * 32);
    assert!(b.masks.is_empty() && b.locals.is_empty());
    assert_eq!(b.indices, (0..10).collect::<Vec<_>>());
    // Deterministic: the next epoch gives the same pixels.
    let b1 = first_batch(&mut loader, 1);
    assert_eq!(b.globals, b1.globals);
}
