//! Reference multi-head self-attention (no mask) in the timm / iBOT ViT layout, materialising
//! the full (B, H, T, T) softmax.
//!
//! qkv (B, T, 3·D) is viewed as (B, T, 3, H, Dh): q[b,h,t,d] = qkv[(b·T + t)·3D + h·Dh + d],
//! k at + D, v at + 2D. out (B, T, D) has channel h·Dh + d. scale = Dh^-1/2.
//! s_ij = scale·q_i·k_j, P = softmax_j(s), O_i = Σ_j P_ij v_j, lse_i = log Σ_j exp(s_ij).

/// Sizes of one attention call: B images, T tokens, H heads of width Dh (D = H·Dh).
#[derive(Clone, Copy, Debug)]
pub struct Attn {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub dh: usize,
}

impl Attn {
    pub fn d(&self) -> usize {
        self.h * self.dh
    }
    /// Index in qkv of component `c` (0 q, 1 k, 2 v) of token t, head h, channel d.
    pub fn qkv_at(&self, b: usize, t: usize, c: usize, h: usize, d: usize) -> usize {
        (b * self.t + t) * 3 * self.d() + c * self.d() + h * self.dh + d
    }
    /// Index in out / dout (B, T, D).
    pub fn out_at(&self, b: usize, t: usize, h: usize, d: usize) -> usize {
        (b * self.t + t) * self.d() + h * self.dh + d
    }
    pub fn scale(&self) -> f64 {
        (self.dh as f64).powf(-0.5)
    }
}

/// The scaled scores s (B, H, T, T) and probabilities P = softmax over the last axis.
pub fn attention_probs(qkv: &[f64], a: Attn) -> (Vec<f64>, Vec<f64>) {
    let (t_, scale) = (a.t, a.scale());
    let mut s = vec![0.0; a.b * a.h * t_ * t_];
    let mut probs = vec![0.0; s.len()];
    for b in 0..a.b {
        for h in 0..a.h {
            for i in 0..t_ {
                let row = ((b * a.h + h) * t_ + i) * t_;
                for j in 0..t_ {
                    let mut acc = 0.0;
                    for d in 0..a.dh {
                        acc += qkv[a.qkv_at(b, i, 0, h, d)] * qkv[a.qkv_at(b, j, 1, h, d)];
                    }
                    s[row + j] = scale * acc;
                }
                let m = s[row..row + t_].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s[row..row + t_].iter().map(|x| (x - m).exp()).sum();
                for j in 0..t_ {
                    probs[row + j] = (s[row + j] - m).exp() / z;
                }
            }
        }
    }
    (s, probs)
}

/// Forward: (out (B, T, D), lse (B, H, T)).
pub fn attention_forward(qkv: &[f64], a: Attn) -> (Vec<f64>, Vec<f64>) {
    let (s, probs) = attention_probs(qkv, a);
    let t_ = a.t;
    let mut out = vec![0.0; a.b * t_ * a.d()];
    let mut lse = vec![0.0; a.b * a.h * t_];
    for b in 0..a.b {
        for h in 0..a.h {
            for i in 0..t_ {
                let row = ((b * a.h + h) * t_ + i) * t_;
                let m = s[row..row + t_].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse[(b * a.h + h) * t_ + i] = m + s[row..row + t_].iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                for d in 0..a.dh {
                    let mut acc = 0.0;
                    for j in 0..t_ {
                        acc += probs[row + j] * qkv[a.qkv_at(b, j, 2, h, d)];
                    }
                    out[a.out_at(b, i, h, d)] = acc;
                }
            }
        }
    }
    (out, lse)
}

/// The [CLS] (query 0) rows of P: (B, H, T).
pub fn attention_cls_probs(qkv: &[f64], a: Attn) -> Vec<f64> {
    let (_, probs) = attention_probs(qkv, a);
    let mut cls = vec![0.0; a.b * a.h * a.t];
    for bh in 0..a.b * a.h {
        let row = bh * a.t * a.t; // query 0 of (b, h)
        cls[bh * a.t..(bh + 1) * a.t].copy_from_slice(&probs[row..row + a.t]);
    }
    cls
}

/// Backward: dqkv (B, T, 3D) from dout (B, T, D), through the materialised softmax:
/// dV = Pᵀ·dO, dP = dO·Vᵀ, dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik) (softmax Jacobian),
/// dQ = scale·dS·K, dK = scale·dSᵀ·Q.
pub fn attention_backward(qkv: &[f64], dout: &[f64], a: Attn) -> Vec<f64> {
    let (_, probs) = attention_probs(qkv, a);
    let (t_, scale) = (a.t, a.scale());
    let mut dqkv = vec![0.0; qkv.len()];
    let mut dp = vec![0.0; t_];
    for b in 0..a.b {
        for h in 0..a.h {
            for i in 0..t_ {
                let row = ((b * a.h + h) * t_ + i) * t_;
                for (j, dpj) in dp.iter_mut().enumerate() {
                    *dpj = (0..a.dh).map(|d| dout[a.out_at(b, i, h, d)] * qkv[a.qkv_at(b, j, 2, h, d)]).sum();
                }
                let pdp: f64 = (0..t_).map(|j| probs[row + j] * dp[j]).sum();
                for j in 0..t_ {
                    let pij = probs[row + j];
                    let ds = pij * (dp[j] - pdp);
                    for d in 0..a.dh {
                        dqkv[a.qkv_at(b, i, 0, h, d)] += scale * ds * qkv[a.qkv_at(b, j, 1, h, d)];
                        dqkv[a.qkv_at(b, j, 1, h, d)] += scale * ds * qkv[a.qkv_at(b, i, 0, h, d)];
                        dqkv[a.qkv_at(b, j, 2, h, d)] += pij * dout[a.out_at(b, i, h, d)];
                    }
                }
            }
        }
    }
    dqkv
}
