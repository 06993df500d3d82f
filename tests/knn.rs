//! The GPU k-NN classifier against its host f64 version on random labelled features, and a
//! hand-made case whose votes can be worked out on paper.

use rand::{Rng, SeedableRng};
use sop::eval::knn::{knn_classify, knn_classify_cpu};

fn unit_rows(rng: &mut impl Rng, n: usize, d: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for r in x.chunks_mut(d) {
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= norm);
    }
    x
}

#[test]
fn gpu_knn_matches_the_host_reference() {
    let gpu = sop::Gpu::new(None).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (nt, nv, d) = (700, 300, 17);
    let train = unit_rows(&mut rng, nt, d);
    let val = unit_rows(&mut rng, nv, d);
    // Labels that depend on the features, so accuracy is far from chance.
    let label = |x: &[f32]| (if x[0] > 0.0 { 1 } else { 0 }) + 2 * (if x[1] > 0.0 { 1 } else { 0 });
    let tl: Vec<u32> = train.chunks(d).map(label).collect();
    let vl: Vec<u32> = val.chunks(d).map(label).collect();
    for k in [1, 20, 200] {
        let g = knn_classify(&gpu, &train, &tl, &val, &vl, d, k, 0.07).unwrap();
        let c = knn_classify_cpu(&train, &tl, &val, &vl, d, k, 0.07);
        assert_eq!((g.top1, g.top5), (c.top1, c.top5), "k = {k}");
        assert!(g.top1 > 50.0, "features predict labels: {}", g.top1);
    }
}

#[test]
fn knn_votes_by_hand() {
    let gpu = sop::Gpu::new(None).unwrap_or_else(|e| panic!("{e}"));
    // Query q = (0.6, 0.8). Class 0 at (1, 0) and (0.96, -0.28): sims 0.6 and 0.352;
    // class 1 at (0, 1): sim 0.8.
    let train = [1.0, 0.0, 0.96, -0.28, 0.0, 1.0];
    let tl = [0, 0, 1];
    let q = [0.6, 0.8];
    let top1 = |label: u32, k: usize, t: f32| knn_classify(&gpu, &train, &tl, &q, &[label], 2, k, t).unwrap().top1;
    // k = 1: the nearest is class 1.
    assert_eq!(top1(1, 1, 0.07), 100.0);
    // k = 3, T = 0.07: e^(0.8/T) = 9.2e4 outweighs e^(0.6/T) + e^(0.352/T) = 5.4e3.
    assert_eq!(top1(1, 3, 0.07), 100.0);
    // k = 3, T = 100: weights are nearly equal, so the two class-0 votes win.
    assert_eq!(top1(0, 3, 100.0), 100.0);
}
