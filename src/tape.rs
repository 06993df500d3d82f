//! The autograd tape: a thin reverse-mode recorder over the GPU ops (micrograd's idea, the
//! candle layout: one `Op` enum, one reverse loop, each arm with its derivative).
//!
//! A `Var` is a tensor plus its place on the tape. Each op records the ids of its inputs and
//! exactly the tensors its backward needs (llm.c style: layernorm saves mean and rstd).
//! `backward` walks the records once in reverse, accumulating (`+=`) into input gradients,
//! and drops every record's saved tensors as soon as its backward ran, so their buffers go
//! back to the pool. With `grad_enabled = false` (the teacher) nothing is recorded and
//! activations are freed as soon as the caller drops them.
//!
//! Shapes use the legend of src/lib.rs (B images, T = 1 + N tokens, N patches, D width,
//! p patch side); a product with a constant is matmul m×k · k×n.
//!
//! Why one file of about 650 lines: the tape is one `Op` enum and one reverse loop, and
//! each forward method sits beside the arm that differentiates it (candle's layout); the
//! loop's `Readiness` says when a leaf's gradient is whole (data parallel overlaps there).

use std::collections::HashMap;

use crate::error::{Result, SopError};
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::matmul::Matmul;
use crate::ops::{attention, elementwise, gelu, l2norm, layernorm, mask_tokens, reduce, tokens};

/// A value on the tape. `id` is `None` for values that carry no gradient.
#[derive(Clone, Debug)]
pub struct Var {
    pub id: Option<usize>,
    pub value: Tensor,
}

impl Var {
    pub fn shape(&self) -> &[usize] {
        &self.value.shape
    }
}

enum Op {
    /// y = x·Wᵀ + b, x (R, in), W (out, in), b (out).
    /// y = x·Wᵀ + b, plus `residual` when it was fused in (`linear_residual`).
    Linear {
        x: Tensor,
        w: Tensor,
        ids: [Option<usize>; 3],
        residual: Option<usize>,
    },
    /// y = A·x with a constant A (m, k) and x (k, n) (position-embedding interpolation).
    ConstMatmul {
        a: Tensor,
        id: Option<usize>,
    },
    LayerNorm {
        x: Tensor,
        gamma: Tensor,
        mean: Tensor,
        rstd: Tensor,
        ids: [Option<usize>; 3],
    },
    Gelu {
        x: Tensor,
        id: Option<usize>,
    },
    Attention {
        qkv: Tensor,
        out: Tensor,
        lse: Tensor,
        heads: usize,
        id: Option<usize>,
    },
    Add {
        ids: [Option<usize>; 2],
    },
    /// y = x + b with b repeated along leading dims.
    AddBroadcast {
        b_shape: Vec<usize>,
        ids: [Option<usize>; 2],
    },
    /// y[b, …] = s[b]·x[b, …] (drop path).
    ScaleSamples {
        s: Tensor,
        id: Option<usize>,
    },
    MaskTokens {
        mask: Tensor,
        ids: [Option<usize>; 2],
    },
    Patchify {
        image_shape: Vec<usize>,
        patch: usize,
        id: Option<usize>,
    },
    /// out = [cls; x]; `cls_shape` tells a shared (D) cls from a per-sample (B, D) one.
    TokensJoin {
        cls_shape: Vec<usize>,
        ids: [Option<usize>; 2],
    },
    /// (cls, rest) = split(x): a record with two outputs.
    TokensSplit {
        id: Option<usize>,
    },
    L2Norm {
        x: Tensor,
        norm: Tensor,
        eps: f32,
        id: Option<usize>,
    },
    Reshape {
        from: Vec<usize>,
        id: Option<usize>,
    },
}

/// The gradients reaching a record's outputs: one output's, or a split's two (either may
/// be missing: it is then zero).
enum OutGrads {
    One(Tensor),
    Two(Option<Tensor>, Option<Tensor>),
}

impl Op {
    /// The ids of the values this record reads that carry a gradient.
    fn inputs(&self) -> Vec<usize> {
        let ids: Vec<Option<usize>> = match self {
            Op::Linear { ids, residual, .. } => vec![ids[0], ids[1], ids[2], *residual],
            Op::LayerNorm { ids, .. } => ids.to_vec(),
            Op::Add { ids }
            | Op::AddBroadcast { ids, .. }
            | Op::MaskTokens { ids, .. }
            | Op::TokensJoin { ids, .. } => ids.to_vec(),
            Op::ConstMatmul { id, .. }
            | Op::Gelu { id, .. }
            | Op::Attention { id, .. }
            | Op::ScaleSamples { id, .. }
            | Op::Patchify { id, .. }
            | Op::TokensSplit { id }
            | Op::L2Norm { id, .. }
            | Op::Reshape { id, .. } => vec![*id],
        };
        ids.into_iter().flatten().collect()
    }
}

/// When each watched leaf's gradient is whole (`backward_watching`): the leaves by the
/// index of the first record that reads them, latest first. The backward pops records from
/// the end, so once fewer than that many remain, nothing will add to the leaf's gradient.
struct Readiness {
    /// (first record reading the leaf, or 0 when none does; index in `watched`), the
    /// latest first use first.
    order: Vec<(usize, usize)>,
    next: usize,
}

impl Readiness {
    fn new(nodes: &[Node], watched: &[Var]) -> Readiness {
        let mut first: HashMap<usize, usize> = HashMap::new();
        for (k, node) in nodes.iter().enumerate().rev().filter(|_| !watched.is_empty()) {
            for id in node.op.inputs() {
                first.insert(id, k);
            }
        }
        let mut order: Vec<(usize, usize)> = watched
            .iter()
            .enumerate()
            .map(|(i, v)| (v.id.and_then(|id| first.get(&id).copied()).unwrap_or(0), i))
            .collect();
        // Latest first use first; ties in `watched` order.
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        Readiness { order, next: 0 }
    }

    /// Hands `done` every watched leaf whose first use is among the records differentiated
    /// (`remaining` records left), with its gradient (taken out of `grads`, leaf-shaped).
    fn hand_over(
        &mut self,
        remaining: usize,
        watched: &[Var],
        grads: &mut HashMap<usize, Tensor>,
        done: &mut impl FnMut(usize, Option<Tensor>) -> Result<()>,
    ) -> Result<()> {
        while let Some(&(first, i)) = self.order.get(self.next) {
            // A leaf no record reads (first use 0 by convention) is handed over at the end.
            if first < remaining {
                break;
            }
            self.next += 1;
            let v = &watched[i];
            let g = v.id.and_then(|id| grads.remove(&id)).map(|g| g.reshape(v.shape())).transpose()?;
            done(i, g)?;
        }
        Ok(())
    }
}

/// One record: the op, and its outputs' ids and shapes (one output, or two for a split).
struct Node {
    outs: Vec<(usize, Vec<usize>)>,
    op: Op,
}

pub struct Tape<'g> {
    pub gpu: &'g Gpu,
    /// When false, ops compute values only (no records, no saved tensors).
    pub grad_enabled: bool,
    nodes: Vec<Node>,
    next_id: usize,
    /// (id, shape) of every leaf that takes a gradient.
    leaves: Vec<(usize, Vec<usize>)>,
}

/// Gradients of the leaves, by leaf id.
pub struct Grads {
    map: HashMap<usize, Tensor>,
}

impl Grads {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        v.id.and_then(|id| self.map.get(&id))
    }
    pub fn take(&mut self, v: &Var) -> Option<Tensor> {
        v.id.and_then(|id| self.map.remove(&id))
    }
}

impl<'g> Tape<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Tape { gpu, grad_enabled: true, nodes: Vec::new(), next_id: 0, leaves: Vec::new() }
    }
    pub fn no_grad(gpu: &'g Gpu) -> Self {
        Tape { grad_enabled: false, ..Tape::new(gpu) }
    }

    /// A leaf (parameter or input). It gets a gradient when `requires_grad` and grads are on.
    pub fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        if !(requires_grad && self.grad_enabled) {
            return Var { id: None, value };
        }
        let id = self.fresh();
        self.leaves.push((id, value.shape.clone()));
        Var { id: Some(id), value }
    }

    /// A constant input.
    pub fn constant(&self, value: Tensor) -> Var {
        Var { id: None, value }
    }

    fn fresh(&mut self) -> usize {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Record `op` producing `value` if any input carries a gradient.
    fn record(&mut self, value: Tensor, any_grad: bool, op: impl FnOnce() -> Op) -> Var {
        if !(self.grad_enabled && any_grad) {
            return Var { id: None, value };
        }
        let out = self.fresh();
        self.nodes.push(Node { outs: vec![(out, value.shape.clone())], op: op() });
        Var { id: Some(out), value }
    }

    /// Number of records waiting for `backward` (their saved tensors are alive).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    // ---- ops -------------------------------------------------------------------------------

    /// y (…, out) = x (…, in) · Wᵀ + b.
    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        self.linear_into(x, w, b, None)
    }

    /// y = residual + (x · Wᵀ + b) in one matmul (its epilogue adds the residual, held in
    /// the output beforehand): the bits of `add(residual, linear(x, w, b))`, one dispatch
    /// fewer. Backward: d residual = dy, the rest as `linear`.
    pub fn linear_residual(&mut self, x: &Var, w: &Var, b: Option<&Var>, residual: &Var) -> Result<Var> {
        self.linear_into(x, w, b, Some(residual))
    }

    /// x (…, in) seen as (rows, in), and the shape (…, out) of x · Wᵀ.
    fn linear_shapes(x: &Var, w: &Var) -> Result<(Tensor, Vec<usize>)> {
        let in_dim = *x.shape().last().unwrap_or(&0);
        let x2 = x.value.reshape(&[x.value.numel() / in_dim.max(1), in_dim])?;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = w.shape()[0];
        Ok((x2, shape))
    }

    fn linear_into(&mut self, x: &Var, w: &Var, b: Option<&Var>, residual: Option<&Var>) -> Result<Var> {
        let (x2, shape) = Self::linear_shapes(x, w)?;
        let mut mm = Matmul::new(&x2, &w.value).trans_b();
        if let Some(b) = b {
            mm = mm.bias(&b.value);
        }
        let y = match residual {
            None => mm.run(self.gpu)?,
            Some(r) => {
                if r.shape() != shape.as_slice() {
                    return Err(SopError::shape(
                        "linear_residual",
                        format!("residual {:?}, output {shape:?}", r.shape()),
                    ));
                }
                let y = self.gpu.duplicate(&r.value)?;
                mm.run_into(self.gpu, &y, true)?;
                y
            }
        };
        let y = y.reshape(&shape)?;
        let ids = [x.id, w.id, b.and_then(|b| b.id)];
        let residual = residual.and_then(|r| r.id);
        let (xv, wv) = (x2, w.value.clone());
        let needs = ids.iter().any(Option::is_some) || residual.is_some();
        Ok(self.record(y, needs, || Op::Linear { x: xv, w: wv, ids, residual }))
    }

    /// y = A·x for a constant A (m, k), x (k, n): matmul m×k · k×n.
    pub fn const_matmul(&mut self, a: &Tensor, x: &Var) -> Result<Var> {
        let y = Matmul::new(a, &x.value).run(self.gpu)?;
        let a = a.clone();
        Ok(self.record(y, x.id.is_some(), || Op::ConstMatmul { a, id: x.id }))
    }

    pub fn layernorm(&mut self, x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
        let d = *x.shape().last().unwrap_or(&0);
        let x2 = x.value.reshape(&[x.value.numel() / d.max(1), d])?;
        let (y, mean, rstd) = layernorm::layernorm_forward(self.gpu, &x2, &gamma.value, &beta.value, eps)?;
        let y = y.reshape(x.shape())?;
        let ids = [x.id, gamma.id, beta.id];
        let g = gamma.value.clone();
        Ok(self.record(y, ids.iter().any(Option::is_some), || Op::LayerNorm { x: x2, gamma: g, mean, rstd, ids }))
    }

    /// GELU(x · Wᵀ + b) in one matmul (its GELU epilogue), recorded as `linear` then `gelu`:
    /// the same values and the same backward, one dispatch fewer. When the next record is a
    /// Linear taking this output, the GELU's backward rides in that layer's dx product
    /// (`gelu_below`).
    pub fn linear_gelu(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let (x2, shape) = Self::linear_shapes(x, w)?;
        let mut mm = Matmul::new(&x2, &w.value).trans_b();
        if let Some(b) = b {
            mm = mm.bias(&b.value);
        }
        let (pre, post) = mm.run_gelu(self.gpu)?;
        let (pre, post) = (pre.reshape(&shape)?, post.reshape(&shape)?);
        let ids = [x.id, w.id, b.and_then(|b| b.id)];
        let wv = w.value.clone();
        let h = self.record(pre.clone(), ids.iter().any(Option::is_some), || Op::Linear {
            x: x2,
            w: wv,
            ids,
            residual: None,
        });
        Ok(self.record(post, h.id.is_some(), || Op::Gelu { x: pre, id: h.id }))
    }

    pub fn gelu(&mut self, x: &Var) -> Result<Var> {
        let y = gelu::gelu_forward(self.gpu, &x.value)?;
        let xv = x.value.clone();
        Ok(self.record(y, x.id.is_some(), || Op::Gelu { x: xv, id: x.id }))
    }

    /// Multi-head self-attention core: qkv (B, T, 3D) -> (B, T, D).
    pub fn attention(&mut self, qkv: &Var, heads: usize) -> Result<Var> {
        let (out, lse) = attention::attention_forward(self.gpu, &qkv.value, heads)?;
        let (q, o) = (qkv.value.clone(), out.clone());
        Ok(self.record(out, qkv.id.is_some(), || Op::Attention { qkv: q, out: o, lse, heads, id: qkv.id }))
    }

    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = elementwise::add(self.gpu, &a.value, &b.value)?;
        let ids = [a.id, b.id];
        Ok(self.record(y, ids.iter().any(Option::is_some), || Op::Add { ids }))
    }

    /// y = x + b, b repeated along x's leading dims (b's element count divides x's).
    pub fn add_broadcast(&mut self, x: &Var, b: &Var) -> Result<Var> {
        let y = elementwise::add_broadcast(self.gpu, &x.value, &b.value)?;
        let ids = [x.id, b.id];
        let b_shape = b.shape().to_vec();
        Ok(self.record(y, ids.iter().any(Option::is_some), || Op::AddBroadcast { b_shape, ids }))
    }

    /// y[b, …] = s[b]·x[b, …] with a constant s (B).
    pub fn scale_samples(&mut self, x: &Var, s: &Tensor) -> Result<Var> {
        let y = elementwise::scale_samples(self.gpu, &x.value, s)?;
        let s = s.clone();
        Ok(self.record(y, x.id.is_some(), || Op::ScaleSamples { s, id: x.id }))
    }

    /// Replace masked patch embeddings (mask (B, N) u32, 1 = masked) by `token` (D).
    pub fn mask_tokens(&mut self, x: &Var, mask: &Tensor, token: &Var) -> Result<Var> {
        let y = mask_tokens::mask_tokens_forward(self.gpu, &x.value, mask, &token.value)?;
        let ids = [x.id, token.id];
        let mask = mask.clone();
        Ok(self.record(y, ids.iter().any(Option::is_some), || Op::MaskTokens { mask, ids }))
    }

    /// images (B, C, S, S) -> patches (B·N, C·p·p), N = (S/p)².
    pub fn patchify(&mut self, images: &Var, patch: usize) -> Result<Var> {
        let y = tokens::patchify_forward(self.gpu, &images.value, patch)?;
        let image_shape = images.shape().to_vec();
        Ok(self.record(y, images.id.is_some(), || Op::Patchify { image_shape, patch, id: images.id }))
    }

    pub fn tokens_join(&mut self, cls: &Var, x: &Var) -> Result<Var> {
        let y = tokens::tokens_join(self.gpu, &cls.value, &x.value)?;
        let ids = [cls.id, x.id];
        let cls_shape = cls.shape().to_vec();
        Ok(self.record(y, ids.iter().any(Option::is_some), || Op::TokensJoin { cls_shape, ids }))
    }

    /// x (B, 1+N, D) -> (cls (B, D), rest (B, N, D)).
    pub fn tokens_split(&mut self, x: &Var) -> Result<(Var, Var)> {
        let (cls, rest) = tokens::tokens_split(self.gpu, &x.value)?;
        if !(self.grad_enabled && x.id.is_some()) {
            return Ok((Var { id: None, value: cls }, Var { id: None, value: rest }));
        }
        let (a, b) = (self.fresh(), self.fresh());
        let outs = vec![(a, cls.shape.clone()), (b, rest.shape.clone())];
        self.nodes.push(Node { outs, op: Op::TokensSplit { id: x.id } });
        Ok((Var { id: Some(a), value: cls }, Var { id: Some(b), value: rest }))
    }

    /// y = x / max(‖x‖₂, eps) over the last dim.
    pub fn l2norm(&mut self, x: &Var, eps: f32) -> Result<Var> {
        let d = *x.shape().last().unwrap_or(&0);
        let x2 = x.value.reshape(&[x.value.numel() / d.max(1), d])?;
        let (y, norm) = l2norm::l2norm_forward(self.gpu, &x2, eps)?;
        let y = y.reshape(x.shape())?;
        Ok(self.record(y, x.id.is_some(), || Op::L2Norm { x: x2, norm, eps, id: x.id }))
    }

    pub fn reshape(&mut self, x: &Var, shape: &[usize]) -> Result<Var> {
        let y = x.value.reshape(shape)?;
        let from = x.shape().to_vec();
        Ok(self.record(y, x.id.is_some(), || Op::Reshape { from, id: x.id }))
    }

    // ---- backward --------------------------------------------------------------------------

    /// Reverse pass from the given output gradients (`seeds`: (output, dL/doutput)).
    /// Returns the gradients of the leaves; the tape is empty afterwards.
    pub fn backward(&mut self, seeds: Vec<(&Var, Tensor)>) -> Result<Grads> {
        self.backward_watching(seeds, &[], |_, _| Ok(()))
    }

    /// `backward`, handing each leaf of `watched` to `done` (its index in `watched`, its
    /// gradient or None) as soon as its gradient is whole: once every record that reads it
    /// has been differentiated (a parameter read in several places, such as a block run on
    /// the global and the local crops, waits for its first use). The leaves handed over are
    /// not in the returned `Grads`. Data-parallel training starts each gradient bucket's
    /// exchange this way while the rest of the backward is still recorded.
    pub fn backward_watching(
        &mut self,
        seeds: Vec<(&Var, Tensor)>,
        watched: &[Var],
        mut done: impl FnMut(usize, Option<Tensor>) -> Result<()>,
    ) -> Result<Grads> {
        let gpu = self.gpu;
        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        for (v, g) in seeds {
            let Some(id) = v.id else { continue };
            if g.shape.iter().product::<usize>() != v.value.numel() {
                return Err(SopError::shape("backward", format!("seed {:?} for output {:?}", g.shape, v.shape())));
            }
            accumulate(gpu, &mut grads, Some(id), g)?;
        }
        let mut ready = Readiness::new(&self.nodes, watched);
        ready.hand_over(self.nodes.len(), watched, &mut grads, &mut done)?;
        while let Some(node) = self.nodes.pop() {
            self.backward_record(node, &mut grads)?;
            ready.hand_over(self.nodes.len(), watched, &mut grads, &mut done)?;
        }
        let leaves = std::mem::take(&mut self.leaves);
        let mut map = HashMap::new();
        for (id, shape) in leaves {
            if let Some(g) = grads.remove(&id) {
                map.insert(id, g.reshape(&shape)?);
            }
        }
        Ok(Grads { map })
    }

    /// One record's backward: its outputs' gradients (taken from `grads`) pushed onto its
    /// inputs' (`+=`).
    fn backward_record(&mut self, node: Node, grads: &mut HashMap<usize, Tensor>) -> Result<()> {
        let gpu = self.gpu;
        // The gradients of the record's outputs; a record none of whose outputs got one
        // contributes nothing.
        let mut dys: Vec<Option<Tensor>> = Vec::with_capacity(node.outs.len());
        for (out, shape) in &node.outs {
            dys.push(grads.remove(out).map(|g| g.reshape(shape)).transpose()?);
        }
        if dys.iter().all(Option::is_none) {
            return Ok(());
        }
        let grads_of_outputs = match dys.len() {
            1 => OutGrads::One(dys.pop().flatten().expect("a record with a gradient")),
            _ => {
                let second = dys.pop().flatten();
                OutGrads::Two(dys.pop().flatten(), second)
            }
        };
        match (node.op, grads_of_outputs) {
            (Op::Linear { x, w, ids: [xid, wid, bid], residual }, OutGrads::One(dy)) => {
                // y = x·Wᵀ + b [+ r]: dx = dy·W, dW = dyᵀ·x, db = Σ_rows dy [, dr = dy].
                accumulate(gpu, grads, residual, dy.clone())?;
                let out = w.shape[0];
                let dy2 = dy.reshape(&[dy.numel() / out, out])?;
                if let Some((pre, pre_id)) = self.gelu_below(xid, grads) {
                    // x = GELU(pre), its only gradient this product: d pre = (dy·W)·GELU'(pre)
                    // in the product's epilogue, and the GELU record is done.
                    self.nodes.pop();
                    let dpre = Matmul::new(&dy2, &w).run_gelu_backward(gpu, &pre)?;
                    accumulate(gpu, grads, pre_id, dpre)?;
                } else if xid.is_some() {
                    accumulate(gpu, grads, xid, Matmul::new(&dy2, &w).run(gpu)?)?;
                }
                if wid.is_some() {
                    accumulate(gpu, grads, wid, Matmul::new(&dy2, &x).trans_a().run(gpu)?)?;
                }
                if bid.is_some() {
                    accumulate(gpu, grads, bid, reduce::sum_rows(gpu, &dy2)?)?;
                }
            }
            (Op::ConstMatmul { a, id }, OutGrads::One(dy)) => {
                // y = A·x: dx = Aᵀ·dy.
                accumulate(gpu, grads, id, Matmul::new(&a, &dy).trans_a().run(gpu)?)?;
            }
            (Op::LayerNorm { x, gamma, mean, rstd, ids: [xid, gid, bid] }, OutGrads::One(dy)) => {
                // dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂)) with ĝ = dy⊙γ; dγ = Σ dy⊙x̂; dβ = Σ dy.
                // dx lands on the gradient x already holds (a residual's) in the same
                // dispatch, unless that one shares a buffer with an input of the kernel.
                let dy2 = dy.reshape(&x.shape)?;
                let prev = xid.and_then(|id| grads.remove(&id));
                let onto = match &prev {
                    Some(g) if !g.same_buffer(&dy2) && !g.same_buffer(&x) => Some(g.reshape(&x.shape)?),
                    _ => None,
                };
                let (dx, dg, db) =
                    layernorm::layernorm_backward_onto(gpu, &dy2, &x, &gamma, &mean, &rstd, onto.as_ref())?;
                match (prev, onto) {
                    (Some(g), Some(_)) => accumulate(gpu, grads, xid, dx.reshape(&g.shape)?)?,
                    (prev, _) => {
                        if let (Some(id), Some(g)) = (xid, prev) {
                            grads.insert(id, g);
                        }
                        accumulate(gpu, grads, xid, dx)?;
                    }
                }
                accumulate(gpu, grads, gid, dg)?;
                accumulate(gpu, grads, bid, db)?;
            }
            (Op::Gelu { x, id }, OutGrads::One(dy)) => {
                // dx = dy·(Φ(x) + x·φ(x)).
                accumulate(gpu, grads, id, gelu::gelu_backward(gpu, &x, &dy)?)?;
            }
            (Op::Attention { qkv, out, lse, heads, id }, OutGrads::One(dy)) => {
                // Flash-attention backward (derivation in shaders/attention.wgsl).
                accumulate(gpu, grads, id, attention::attention_backward(gpu, &qkv, &out, &lse, &dy, heads)?)?;
            }
            (Op::Add { ids: [a, b] }, OutGrads::One(dy)) => {
                // y = a + b: da = db = dy.
                if b.is_some() {
                    accumulate(gpu, grads, b, dy.clone())?;
                }
                accumulate(gpu, grads, a, dy)?;
            }
            (Op::AddBroadcast { b_shape, ids: [x, b] }, OutGrads::One(dy)) => {
                // y = x + repeat(b): dx = dy, db = Σ over the repeats.
                if b.is_some() {
                    let n: usize = b_shape.iter().product();
                    let db = reduce::sum_rows(gpu, &dy.reshape(&[dy.numel() / n, n])?)?;
                    accumulate(gpu, grads, b, db.reshape(&b_shape)?)?;
                }
                accumulate(gpu, grads, x, dy)?;
            }
            (Op::ScaleSamples { s, id }, OutGrads::One(dy)) => {
                // y = s·x per sample: dx = s·dy.
                accumulate(gpu, grads, id, elementwise::scale_samples(gpu, &dy, &s)?)?;
            }
            (Op::MaskTokens { mask, ids: [x, token] }, OutGrads::One(dy)) => {
                // dx = dy off the mask, 0 on it; dtoken = Σ_masked dy.
                let (dx, dtoken) = mask_tokens::mask_tokens_backward(gpu, &dy, &mask)?;
                accumulate(gpu, grads, x, dx)?;
                accumulate(gpu, grads, token, dtoken)?;
            }
            (Op::Patchify { image_shape, patch, id }, OutGrads::One(dy)) => {
                // A permutation of pixels: the backward copies each entry back.
                accumulate(gpu, grads, id, tokens::patchify_backward(gpu, &dy, &image_shape, patch)?)?;
            }
            (Op::TokensJoin { cls_shape, ids: [cls, x] }, OutGrads::One(dy)) => {
                // out = [cls; x]: (dcls_b, dx) = split(dy); a shared cls sums dcls_b over b.
                let (dc, dx) = tokens::tokens_split(gpu, &dy)?;
                if cls.is_some() {
                    let d = dc.shape[1];
                    let dc = if cls_shape.iter().product::<usize>() == d && dc.shape[0] != 1 {
                        reduce::sum_rows(gpu, &dc)?
                    } else {
                        dc
                    };
                    accumulate(gpu, grads, cls, dc.reshape(&cls_shape)?)?;
                }
                accumulate(gpu, grads, x, dx)?;
            }
            (Op::TokensSplit { id }, OutGrads::Two(dc, dr)) => {
                // d/dx of split is join: dx = [dcls; drest], a missing output gradient zero.
                let zeros_or = |dy: Option<Tensor>, shape: &[usize]| match dy {
                    Some(t) => Ok(t),
                    None => gpu.zeros(shape, DType::F32),
                };
                let (dc, dr) = (zeros_or(dc, &node.outs[0].1)?, zeros_or(dr, &node.outs[1].1)?);
                accumulate(gpu, grads, id, tokens::tokens_join(gpu, &dc, &dr)?)?;
            }
            (Op::L2Norm { x, norm, eps, id }, OutGrads::One(dy)) => {
                // y = x/n, n = max(‖x‖, eps): dx = (dy − y(y·dy))/n when ‖x‖ > eps, else dy/eps.
                let dy2 = dy.reshape(&x.shape)?;
                accumulate(gpu, grads, id, l2norm::l2norm_backward(gpu, &dy2, &x, &norm, eps)?)?;
            }
            (Op::Reshape { from, id }, OutGrads::One(dy)) => {
                accumulate(gpu, grads, id, dy.reshape(&from)?)?;
            }
            (_, _) => unreachable!("every op has one output but the split, which has two"),
        }
        Ok(())
    }
}

impl Tape<'_> {
    /// When the record below the one being differentiated is a GELU whose output is `xid`
    /// and that output has no gradient yet, its input (the saved pre-activation) and the
    /// input's id: every other consumer of the GELU's output was recorded later and has
    /// been differentiated already, so the product about to run gives its whole gradient.
    fn gelu_below(&self, xid: Option<usize>, grads: &HashMap<usize, Tensor>) -> Option<(Tensor, Option<usize>)> {
        let xid = xid?;
        match self.nodes.last() {
            Some(Node { outs, op: Op::Gelu { x, id } }) if outs[0].0 == xid && !grads.contains_key(&xid) => {
                Some((x.clone(), *id))
            }
            _ => None,
        }
    }
}

/// grads[id] += g (or = g when absent). The sum is a new tensor: `g` may alias another grad.
fn accumulate(gpu: &Gpu, grads: &mut HashMap<usize, Tensor>, id: Option<usize>, g: Tensor) -> Result<()> {
    let Some(id) = id else { return Ok(()) };
    let g = match grads.remove(&id) {
        Some(prev) => elementwise::add(gpu, &prev, &g.reshape(&prev.shape)?)?,
        None => g,
    };
    grads.insert(id, g);
    Ok(())
}
