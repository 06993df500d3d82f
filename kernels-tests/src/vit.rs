//! Reference forward of the whole ViT backbone and SOP head, in f64 plain loops, from a
//! parameter map in PyTorch layouts under the authors' names (`backbone.*`, `head.mlp.*`;
//! see `sop::model::params`). It is the specification the GPU model is tested against, and it
//! is itself tested against timm in `tests/vit_reference.rs`.
//!
//! Legend: B batch, C input channels, S image side, P patch side, G = S/P, N = G² patches,
//! T = 1 + N tokens, D width, H heads, Dh = D/H, F = 4D MLP width, O head output width.
//!
//! Per image:
//!   e = patch_embed(x)                         (N, D)   Conv2d(C, D, P, stride P)
//!   e[n] = masked_embed  where mask[n]          (SOP/iBOT: before [CLS] and position)
//!   z = [cls; e] + pos                          (T, D)   pos interpolated if G ≠ stored G
//!   per block:  z = z + proj(attn(norm1(z)));  z = z + fc2(gelu(fc1(norm2(z))))
//!   tokens = norm(z)                            (T, D)   final LayerNorm
//!   head = l2norm(mlp(tokens))                  (T, O)   Linear, GELU, …, Linear
//! with LayerNorm eps 1e-6 (biased variance), GELU in its erf form, attention
//! softmax(q kᵀ · Dh^-½) v, no dropout and no drop path, and l2norm(y) = y / max(‖y‖, 1e-6).

use std::collections::BTreeMap;

/// Parameters by name: (PyTorch shape, row-major values).
pub type Params = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// LayerNorm epsilon of every norm in the model.
pub const LN_EPS: f64 = 1e-6;
/// Epsilon of the head's final L2 normalisation (docs/METHOD.md "Networks").
pub const L2_EPS: f64 = 1e-6;

/// What the reference forward returns.
#[derive(Clone, Debug)]
pub struct VitOutput {
    /// (B, T, O) head outputs of every token, L2-normalised.
    pub head: Vec<f64>,
    /// (B, T, D) backbone tokens after the final LayerNorm ([CLS] first).
    pub tokens: Vec<f64>,
    /// (B, H, T) attention probabilities of the [CLS] query in the last block (column 0 is
    /// [CLS] itself, 1.. the patches).
    pub cls_attn: Vec<f64>,
    pub t: usize,
    pub d: usize,
    pub o: usize,
}

fn get<'a>(p: &'a Params, name: &str) -> &'a (Vec<usize>, Vec<f64>) {
    p.get(name).unwrap_or_else(|| panic!("reference vit: parameter {name} missing"))
}

/// erf from the GELU reference (one implementation for the whole crate).
pub use crate::gelu::erf;

/// GELU, erf form: x · Φ(x) = x/2 · (1 + erf(x/√2)).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// y = x Wᵀ + b for rows of x: x (R, K), W (M, K) (PyTorch Linear), b (M).
pub fn linear(x: &[f64], w: &[f64], b: &[f64], rows: usize, k: usize, m: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * m];
    for r in 0..rows {
        for j in 0..m {
            let mut acc = b[j];
            for kk in 0..k {
                acc += x[r * k + kk] * w[j * k + kk];
            }
            y[r * m + j] = acc;
        }
    }
    y
}

/// LayerNorm over the last dimension of x (R, D) with biased variance.
pub fn layernorm(x: &[f64], g: &[f64], b: &[f64], rows: usize, d: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; rows * d];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            y[r * d + i] = (row[i] - mean) * rstd * g[i] + b[i];
        }
    }
    y
}

/// Multi-head self-attention on one image's tokens from the fused qkv (T, 3D), columns
/// [q | k | v] with head h at columns h·Dh..(h+1)·Dh of each. Returns the concatenated
/// heads (T, D) and the probabilities (H, T, T).
pub fn attention(qkv: &[f64], t: usize, d: usize, heads: usize) -> (Vec<f64>, Vec<f64>) {
    let dh = d / heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0.0; t * d];
    let mut probs = vec![0.0; heads * t * t];
    for h in 0..heads {
        for i in 0..t {
            let q = &qkv[i * 3 * d + h * dh..i * 3 * d + (h + 1) * dh];
            let mut s: Vec<f64> = (0..t)
                .map(|j| {
                    let k = &qkv[j * 3 * d + d + h * dh..j * 3 * d + d + (h + 1) * dh];
                    q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut z = 0.0;
            for v in s.iter_mut() {
                *v = (*v - mx).exp();
                z += *v;
            }
            for j in 0..t {
                let p = s[j] / z;
                probs[(h * t + i) * t + j] = p;
                for c in 0..dh {
                    out[i * d + h * dh + c] += p * qkv[j * 3 * d + 2 * d + h * dh + c];
                }
            }
        }
    }
    (out, probs)
}

/// PyTorch's cubic-convolution constant.
const CUBIC_A: f64 = -0.75;

/// Weights of the taps ⌊x⌋−1 … ⌊x⌋+2 for t = x − ⌊x⌋ (PyTorch's
/// `get_cubic_upsample_coefficients`, Keys' kernel with A = −0.75).
fn cubic_coeffs(t: f64) -> [f64; 4] {
    let near = |x: f64| ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// 1-D (new, old) weights of `F.interpolate(scale_factor=(new+0.1)/old, mode='bicubic',
/// align_corners=False)`: output o samples x = (o + ½)·old/(new+0.1) − ½ (the given factor,
/// not old/new), taps clamped to the border. Identity when old == new: iBOT does not
/// interpolate then.
pub fn interp_weights_1d(old: usize, new: usize) -> Vec<f64> {
    let mut w = vec![0.0; new * old];
    if old == new {
        for i in 0..new {
            w[i * old + i] = 1.0;
        }
        return w;
    }
    let scale = old as f64 / (new as f64 + 0.1);
    for o in 0..new {
        let x = scale * (o as f64 + 0.5) - 0.5;
        let i0 = (x.floor() as i64).min(old as i64 - 1);
        let t = (x - i0 as f64).clamp(0.0, 1.0);
        for (j, c) in cubic_coeffs(t).into_iter().enumerate() {
            let src = (i0 - 1 + j as i64).clamp(0, old as i64 - 1) as usize;
            w[o * old + src] += c;
        }
    }
    w
}

/// iBOT's `interpolate_pos_encoding` of the patch rows as a (new², old²) row-major matrix
/// (grid cells in row-major order y·G + x): W ⊗ W of the 1-D weights, since the bicubic
/// resampling is separable. pos'[patches] = M · pos[patches]; the backward is Mᵀ.
pub fn pos_embed_interp_matrix(old_grid: usize, new_grid: usize) -> Vec<f64> {
    let w = interp_weights_1d(old_grid, new_grid);
    let (n_old, n_new) = (old_grid * old_grid, new_grid * new_grid);
    let mut m = vec![0.0; n_new * n_old];
    for oy in 0..new_grid {
        for ox in 0..new_grid {
            for iy in 0..old_grid {
                for ix in 0..old_grid {
                    m[(oy * new_grid + ox) * n_old + iy * old_grid + ix] =
                        w[oy * old_grid + iy] * w[ox * old_grid + ix];
                }
            }
        }
    }
    m
}

/// The (1 + new², D) position embedding for a new grid from the stored (1 + old², D) one:
/// [CLS] row kept, patch rows M · pos.
pub fn interpolate_pos_embed(pos: &[f64], old_grid: usize, new_grid: usize, d: usize) -> Vec<f64> {
    let (n_old, n_new) = (old_grid * old_grid, new_grid * new_grid);
    assert_eq!(pos.len(), (1 + n_old) * d, "pos_embed is not (1 + {n_old}, {d})");
    let m = pos_embed_interp_matrix(old_grid, new_grid);
    let mut out = vec![0.0; (1 + n_new) * d];
    out[..d].copy_from_slice(&pos[..d]);
    for r in 0..n_new {
        for k in 0..n_old {
            let w = m[r * n_old + k];
            for c in 0..d {
                out[(1 + r) * d + c] += w * pos[(1 + k) * d + c];
            }
        }
    }
    out
}

/// Patch embedding: Conv2d(C, D, kernel P, stride P) of x (C, S, S) → (N, D), patches in
/// row-major grid order.
pub fn patch_embed(x: &[f64], w: &[f64], b: &[f64], c: usize, s: usize, p: usize, d: usize) -> Vec<f64> {
    let g = s / p;
    let mut e = vec![0.0; g * g * d];
    for gy in 0..g {
        for gx in 0..g {
            let n = gy * g + gx;
            for o in 0..d {
                let mut acc = b[o];
                for ch in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            acc += w[((o * c + ch) * p + ky) * p + kx] * x[(ch * s + gy * p + ky) * s + gx * p + kx];
                        }
                    }
                }
                e[n * d + o] = acc;
            }
        }
    }
    e
}

/// The whole forward for images x (B, C, S, S) with S a multiple of the patch size;
/// `mask` (B, N), true = replace that patch's embedding with `backbone.masked_embed`.
/// The sizes D, P, C, depth and the head's layers are read from the parameter shapes; only
/// the number of heads is given. Panics on a missing parameter or inconsistent sizes.
pub fn vit_forward(params: &Params, heads: usize, x: &[f64], b: usize, s: usize, mask: Option<&[bool]>) -> VitOutput {
    let (wshape, pw) = get(params, "backbone.patch_embed.proj.weight");
    let (d, c, p) = (wshape[0], wshape[1], wshape[2]);
    assert!(s.is_multiple_of(p) && d.is_multiple_of(heads), "reference vit: S {s} vs P {p}, D {d} vs H {heads}");
    assert_eq!(x.len(), b * c * s * s, "reference vit: x is not (B, C, S, S)");
    let g = s / p;
    let n = g * g;
    let t = 1 + n;
    let pb = &get(params, "backbone.patch_embed.proj.bias").1;
    let cls = &get(params, "backbone.cls_token").1;
    let (pos_shape, pos_stored) = get(params, "backbone.pos_embed");
    let g_stored = ((pos_shape[1] - 1) as f64).sqrt().round() as usize;
    assert_eq!(g_stored * g_stored + 1, pos_shape[1], "reference vit: pos_embed grid is not square");
    let pos = interpolate_pos_embed(pos_stored, g_stored, g, d);
    let depth = (0..).take_while(|i| params.contains_key(&format!("backbone.blocks.{i}.norm1.weight"))).count();
    let head_names: Vec<String> = if params.contains_key("head.mlp.weight") {
        vec!["head.mlp".into()]
    } else {
        (0..)
            .map(|i| format!("head.mlp.{}", 2 * i))
            .take_while(|nm| params.contains_key(&format!("{nm}.weight")))
            .collect()
    };
    assert!(!head_names.is_empty(), "reference vit: no head.mlp.* parameters");
    let o = get(params, &format!("{}.weight", head_names.last().unwrap())).0[0];
    if let Some(m) = mask {
        assert_eq!(m.len(), b * n, "reference vit: mask is not (B, N)");
    }

    let mut tokens_all = vec![0.0; b * t * d];
    let mut head_all = vec![0.0; b * t * o];
    let mut cls_attn = vec![0.0; b * heads * t];
    for bi in 0..b {
        let mut e = patch_embed(&x[bi * c * s * s..(bi + 1) * c * s * s], pw, pb, c, s, p, d);
        if let Some(m) = mask {
            let me = &get(params, "backbone.masked_embed").1;
            for k in 0..n {
                if m[bi * n + k] {
                    e[k * d..(k + 1) * d].copy_from_slice(me);
                }
            }
        }
        let mut z = vec![0.0; t * d];
        for i in 0..d {
            z[i] = cls[i] + pos[i];
        }
        for k in 0..n {
            for i in 0..d {
                z[(1 + k) * d + i] = e[k * d + i] + pos[(1 + k) * d + i];
            }
        }
        for l in 0..depth {
            let pr = |nm: &str| &get(params, &format!("backbone.blocks.{l}.{nm}")).1;
            let h = layernorm(&z, pr("norm1.weight"), pr("norm1.bias"), t, d, LN_EPS);
            let qkv = linear(&h, pr("attn.qkv.weight"), pr("attn.qkv.bias"), t, d, 3 * d);
            let (a, probs) = attention(&qkv, t, d, heads);
            if l + 1 == depth {
                for hh in 0..heads {
                    let row = &probs[hh * t * t..hh * t * t + t]; // query 0 = [CLS]
                    cls_attn[(bi * heads + hh) * t..(bi * heads + hh + 1) * t].copy_from_slice(row);
                }
            }
            let a = linear(&a, pr("attn.proj.weight"), pr("attn.proj.bias"), t, d, d);
            for (zi, ai) in z.iter_mut().zip(&a) {
                *zi += ai;
            }
            let h = layernorm(&z, pr("norm2.weight"), pr("norm2.bias"), t, d, LN_EPS);
            let f = get(params, &format!("backbone.blocks.{l}.mlp.fc1.weight")).0[0];
            let u: Vec<f64> =
                linear(&h, pr("mlp.fc1.weight"), pr("mlp.fc1.bias"), t, d, f).into_iter().map(gelu).collect();
            let m = linear(&u, pr("mlp.fc2.weight"), pr("mlp.fc2.bias"), t, f, d);
            for (zi, mi) in z.iter_mut().zip(&m) {
                *zi += mi;
            }
        }
        let tok =
            layernorm(&z, &get(params, "backbone.norm.weight").1, &get(params, "backbone.norm.bias").1, t, d, LN_EPS);
        let mut y = tok.clone();
        let mut width = d;
        for (li, nm) in head_names.iter().enumerate() {
            let (ws, w) = get(params, &format!("{nm}.weight"));
            y = linear(&y, w, &get(params, &format!("{nm}.bias")).1, t, width, ws[0]);
            width = ws[0];
            if li + 1 < head_names.len() {
                y.iter_mut().for_each(|v| *v = gelu(*v));
            }
        }
        for r in 0..t {
            let row = &mut y[r * o..(r + 1) * o];
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(L2_EPS);
            row.iter_mut().for_each(|v| *v /= norm);
        }
        tokens_all[bi * t * d..(bi + 1) * t * d].copy_from_slice(&tok);
        head_all[bi * t * o..(bi + 1) * t * o].copy_from_slice(&y);
    }
    VitOutput { head: head_all, tokens: tokens_all, cls_attn, t, d, o }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from mpmath (30 digits). The series sums up to ~e^{x²} before the e^{-x²}
        // factor, so a few ulps of rounding accumulate at x = 3.5: 1e-14 absolute.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {} vs {want}", erf(x));
        }
    }

    #[test]
    fn interp_rows_sum_to_one() {
        for (g, h) in [(4, 3), (4, 6), (14, 6), (1, 2)] {
            let m = pos_embed_interp_matrix(g, h);
            for r in 0..h * h {
                let s: f64 = m[r * g * g..(r + 1) * g * g].iter().sum();
                assert!((s - 1.0).abs() < 1e-12, "{g}->{h} row {r}: {s}");
            }
        }
    }
}
