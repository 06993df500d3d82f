//! Linear probe on frozen features: multinomial logistic regression trained with full-batch
//! gradient descent (Adam) on the host, features standardised with the training statistics.
//! The data are small (N × D with D ≤ 768), so the host is the simple and exact choice.

use crate::error::{Result, SopError};

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LinearResult {
    pub top1: f64,
    pub train_top1: f64,
    pub epochs: usize,
    pub n_train: usize,
    pub n_val: usize,
}

fn logits(w: &[f64], b: &[f64], x: &[f64], classes: usize, dim: usize, out: &mut [f64]) {
    for c in 0..classes {
        out[c] = b[c] + (0..dim).map(|d| w[c * dim + d] * x[d]).sum::<f64>();
    }
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// How the probe trains: full-batch epochs, learning rate, L2 on W.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

/// Train on (train, train_labels), report accuracy on val.
pub fn linear_probe(
    train: &[f32],
    train_labels: &[u32],
    val: &[f32],
    val_labels: &[u32],
    dim: usize,
    settings: ProbeSettings,
) -> Result<LinearResult> {
    let ProbeSettings { epochs, lr, weight_decay } = settings;
    let (nt, nv) = (train_labels.len(), val_labels.len());
    if nt == 0 || nv == 0 || train.len() != nt * dim || val.len() != nv * dim {
        return Err(SopError::Invalid(format!(
            "linear probe needs labelled features: {nt} train, {nv} val rows of width {dim}"
        )));
    }
    let classes = train_labels.iter().chain(val_labels).copied().max().unwrap_or(0) as usize + 1;
    // Standardise with the training mean and std.
    let mut mean = vec![0f64; dim];
    let mut sd = vec![0f64; dim];
    for r in train.chunks(dim) {
        for d in 0..dim {
            mean[d] += r[d] as f64 / nt as f64;
        }
    }
    for r in train.chunks(dim) {
        for d in 0..dim {
            sd[d] += (r[d] as f64 - mean[d]).powi(2) / nt as f64;
        }
    }
    let sd: Vec<f64> = sd.iter().map(|v| v.sqrt().max(1e-6)).collect();
    let norm = |x: &[f32]| -> Vec<f64> {
        x.chunks(dim).flat_map(|r| (0..dim).map(|d| (r[d] as f64 - mean[d]) / sd[d]).collect::<Vec<_>>()).collect()
    };
    let (xt, xv) = (norm(train), norm(val));

    let mut w = vec![0f64; classes * dim];
    let mut b = vec![0f64; classes];
    let (mut mw, mut vw) = (vec![0f64; w.len()], vec![0f64; w.len()]);
    let (mut mb, mut vb) = (vec![0f64; classes], vec![0f64; classes]);
    let mut z = vec![0f64; classes];
    for t in 1..=epochs {
        let mut gw = vec![0f64; w.len()];
        let mut gb = vec![0f64; classes];
        for (i, x) in xt.chunks(dim).enumerate() {
            logits(&w, &b, x, classes, dim, &mut z);
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            for c in 0..classes {
                // d(cross-entropy)/dz_c = softmax_c − [c = label]
                let g = ((z[c] - m).exp() / s - (c == train_labels[i] as usize) as u8 as f64) / nt as f64;
                gb[c] += g;
                for d in 0..dim {
                    gw[c * dim + d] += g * x[d];
                }
            }
        }
        for (g, wv) in gw.iter_mut().zip(&w) {
            *g += weight_decay * wv;
        }
        let (b1, b2) = (0.9f64, 0.999f64);
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for (((p, g), m), v) in
            w.iter_mut().zip(&gw).zip(&mut mw).zip(&mut vw).chain(b.iter_mut().zip(&gb).zip(&mut mb).zip(&mut vb))
        {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        }
    }
    let acc = |x: &[f64], labels: &[u32]| {
        let mut z = vec![0f64; classes];
        let hits = x.chunks(dim).zip(labels).filter(|(r, &l)| {
            logits(&w, &b, r, classes, dim, &mut z);
            argmax(&z) == l as usize
        });
        100.0 * hits.count() as f64 / labels.len() as f64
    };
    Ok(LinearResult { top1: acc(&xv, val_labels), train_top1: acc(&xt, train_labels), epochs, n_train: nt, n_val: nv })
}
