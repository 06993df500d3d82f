//! `Tape::backward_watching`, what data-parallel training starts its gradient exchange
//! from: each parameter's gradient is handed over once whole, bit for bit the one `backward`
//! gives, and the last parameters' well before the backward ends.

mod support;

use std::path::Path;

use rand::{Rng, SeedableRng};
use sop::model::params::init_params;
use sop::model::vit::{ForwardOptions, Vit, Weights};
use sop::tape::{Tape, Var};
use support::{gpu, tiny};

#[test]
fn watched_gradients_are_handed_over_whole_and_early() {
    let gpu = gpu();
    let mut cfg = tiny(Path::new("/unused")).model;
    cfg.depth = 2;
    let (b, s) = (3usize, 8usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let weights = Weights::upload(&gpu, &init_params(&cfg, 1)).unwrap();
    let vit = Vit::new(cfg.clone());
    let images = gpu
        .upload_f32(&[b, 3, s, s], &(0..b * 3 * s * s).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>())
        .unwrap();
    // The backbone twice over the same parameters (as the student runs the global and the
    // local crops), so every block's gradient has two parts; the head reads the first pass.
    let record = |tape: &mut Tape| -> (Vec<Var>, Var, Var) {
        let p = weights.leaves(tape, true);
        let x = tape.constant(images.clone());
        let first = vit.backbone(tape, &p, &x, &ForwardOptions::default()).unwrap();
        let second = vit.backbone(tape, &p, &x, &ForwardOptions::default()).unwrap();
        let h = vit.head(tape, &p, &first).unwrap();
        (p.vars, h, second)
    };
    let seed = |v: &Var, k: u64| {
        let mut r = rand::rngs::StdRng::seed_from_u64(k);
        gpu.upload_f32(&v.value.shape, &(0..v.value.numel()).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>())
            .unwrap()
    };

    let mut tape = Tape::new(&gpu);
    let (vars, h, second) = record(&mut tape);
    let mut g = tape.backward(vec![(&h, seed(&h, 1)), (&second, seed(&second, 2))]).unwrap();
    let want: Vec<Option<Vec<f32>>> = vars.iter().map(|v| g.take(v).map(|t| gpu.read_f32(&t).unwrap())).collect();

    let mut tape = Tape::new(&gpu);
    let (vars, h, second) = record(&mut tape);
    let mut handed: Vec<Option<(Option<Vec<f32>>, u64)>> = vec![None; vars.len()];
    let start = gpu.counters().dispatches;
    let seeds = vec![(&h, seed(&h, 1)), (&second, seed(&second, 2))];
    let rest = tape
        .backward_watching(seeds, &vars, |i, t| {
            assert!(handed[i].is_none(), "parameter {i} handed over twice");
            let at = gpu.counters().dispatches - start;
            handed[i] = Some((t.map(|t| gpu.read_f32(&t).unwrap()), at));
            Ok(())
        })
        .unwrap();
    let end = gpu.counters().dispatches - start;
    assert!(vars.iter().all(|v| rest.get(v).is_none()), "a handed-over gradient was also returned");
    let names = &weights.names;
    for (i, h) in handed.iter().enumerate() {
        let (got, _) = h.as_ref().unwrap_or_else(|| panic!("{} never handed over", names[i]));
        // The same bits: handed over early, it would lack the first pass's part.
        assert!(got == &want[i], "{}: the gradient handed over is not backward's", names[i]);
    }
    // The head's gradients are whole after its own backward, long before the patch embedding's.
    let at = |name: &str| handed[names.iter().position(|n| n == name).unwrap()].as_ref().unwrap().1;
    let head = names.iter().rev().find(|n| n.starts_with("head")).expect("a head parameter");
    let embed = names.iter().find(|n| n.contains("patch_embed")).expect("a patch-embedding parameter");
    println!("dispatches: head {} at {}, {embed} at {}, backward {end}", head, at(head), at(embed));
    assert!(at(head) < end / 2, "{head} handed over at dispatch {} of {end}", at(head));
    assert!(at(embed) > at(head));
}
