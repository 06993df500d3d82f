//! Prototype building at the authors' [CLS] scale (docs/METHOD.md "Official defaults
//! against this engine's"): a bank of N_C = 65,536 unit vectors of width 256, P = 64
//! anchors, E = 9 (8 SEs each): two gathers, the (64 × 65,472) similarity matmul, top-8 per
//! row, the member rows and votes (prototypes.wgsl) and the member gather, with no blocking
//! read. Validated against f64 similarities and a host top-k for every anchor.

use rand::{Rng, SeedableRng};

use super::{Case, Work};
use crate::error::{Result, SopError};
use crate::gpu::Gpu;
use crate::sop::bank::Bank;
use crate::sop::prototypes::{build, neighbours, Keep, PrototypeConfig};

const N: usize = 65_536;
const W: usize = 256;

pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let bank = std::rc::Rc::new(Bank::random(gpu, N, W, 11)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut perm: Vec<u32> = (0..N as u32).collect();
    rand::seq::SliceRandom::shuffle(&mut perm[..], &mut rng);
    let keep: Vec<u32> = (0..32).map(|i| 2 * i as u32 + rng.random_range(0..2)).collect();
    let perm = std::rc::Rc::new(perm);
    let cfg = PrototypeConfig { anchors: 64, experts: 9, tasks: 1 };
    let (b2, p2) = (bank.clone(), perm.clone());
    let (b3, p3) = (bank.clone(), perm.clone());
    Ok(vec![Case {
        kernel: "prototypes",
        variant: "build".into(),
        shape: format!("N{N} P64 E9 W{W}"),
        // The similarity matmul dominates: 2·P·(N−P)·W.
        work: Work::Flops(2.0 * 64.0 * (N - 64) as f64 * W as f64),
        run: Box::new(move |gpu| build(gpu, &b2, &p2, &cfg, 0.1, |_| Ok(Keep::Listed(keep.clone()))).map(|_| ())),
        validate: Box::new(move |gpu| {
            let nb = neighbours(gpu, &b3, &p3, &cfg)?;
            let (nb_sims, nb_rows) = (nb.sims_host(gpu)?, nb.rows_host(gpu)?);
            let host = gpu.read_f32(&b3.vectors)?;
            let row = |i: u32| &host[i as usize * W..(i as usize + 1) * W];
            for a in 0..64 {
                let anchor = row(p3[a]);
                let mut sims: Vec<(f64, usize)> = p3[64..]
                    .iter()
                    .enumerate()
                    .map(|(j, &r)| (anchor.iter().zip(row(r)).map(|(x, y)| *x as f64 * *y as f64).sum(), j))
                    .collect();
                sims.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
                for e in 0..8 {
                    let (want_sim, j) = sims[e];
                    let got = nb_sims[a * 8 + e] as f64;
                    // f32 dot products of 256 terms: a different neighbour is accepted only
                    // when its similarity ties the reference's within rounding.
                    let (got_row, want_row) = (nb_rows[a * 8 + e], p3[64 + j]);
                    if (got - want_sim).abs() > 1e-5 || (got_row != want_row && (got - want_sim).abs() > 1e-6) {
                        let what = format!("anchor {a} SE {e}: sim {got} row {got_row} vs {want_sim} row {want_row}");
                        return Err(SopError::Invalid(what));
                    }
                }
            }
            Ok(())
        }),
    }])
}
