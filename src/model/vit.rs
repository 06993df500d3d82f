//! The Vision Transformer backbone and the SOP head on the tape (docs/METHOD.md
//! "Networks").
//!
//! Shapes use the legend of src/lib.rs: B images, S image side, p patch side, N = (S/p)²
//! patches, T = 1 + N tokens, D width, W head output width (`head_bottleneck`).
//!
//! backbone: patches (B·N, 3·p·p) → Linear (the conv weight (D, 3, p, p) seen as (D, 3·p·p))
//!   → mask-token substitution (student) → [CLS] joined → + position embedding (bicubically
//!   interpolated for another grid) → depth × pre-norm blocks → final LayerNorm. (B, T, D)
//! block: x += dp(proj(attn(qkv(norm1(x))))); x += dp(fc2(gelu(fc1(norm2(x))))), dp = drop path.
//! head: Linear D→hidden, GELU, Linear hidden→hidden, GELU, Linear hidden→out, L2-normalise
//!   (eps 1e-6), applied to every token. (B, T, W), W = out
//! Parameter names and layouts are the authors' (see `model::params`).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::error::{Result, SopError};
use crate::gpu::{DType, FlatLayout, FlatTensors, Gpu, Tensor};
use crate::model::config::VitConfig;
use crate::model::params::head_linear_name;
use crate::model::pos_embed::pos_embed_interp_matrix;
use crate::tape::{Tape, Var};

/// One host tensor: (name, shape, data).
pub type HostTensor = (String, Vec<usize>, Vec<f32>);

/// x + dp(h·Wᵀ + b): with drop path a scaled branch and an add; without, one matmul whose
/// epilogue adds x (`Tape::linear_residual`, the same bits).
fn residual_branch(tape: &mut Tape, x: &Var, h: &Var, w: &Var, b: Option<&Var>, dp: Option<&Tensor>) -> Result<Var> {
    match dp {
        Some(dp) => {
            let branch = tape.linear(h, w, b)?;
            let branch = tape.scale_samples(&branch, dp)?;
            tape.add(x, &branch)
        }
        None => tape.linear_residual(h, w, b, x),
    }
}

/// The parameters of one network (student or teacher) on the GPU, in `param_specs` order:
/// views into one flat buffer (`gpu::flat`), so the optimiser and the EMA update them all
/// in one dispatch.
pub struct Weights {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
    /// The flat buffer the tensors are views of, and its layout.
    pub flat: Tensor,
    pub layout: FlatLayout,
    index: HashMap<String, usize>,
}

impl Weights {
    /// Upload host tensors (name, shape, data) into one flat buffer, in one write.
    pub fn upload(gpu: &Gpu, host: &[HostTensor]) -> Result<Weights> {
        let names: Vec<String> = host.iter().map(|(n, _, _)| n.clone()).collect();
        let layout = FlatLayout::new(&host.iter().map(|(_, s, _)| s.clone()).collect::<Vec<_>>());
        let data: Vec<&[f32]> = host.iter().map(|(_, _, d)| d.as_slice()).collect();
        let FlatTensors { flat, views: tensors } = gpu.flat_upload(&layout, &data)?;
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Ok(Weights { names, tensors, flat, layout, index })
    }

    /// Read every tensor back (name, shape, data).
    pub fn download(&self, gpu: &Gpu) -> Result<Vec<HostTensor>> {
        self.names.iter().zip(&self.tensors).map(|(n, t)| Ok((n.clone(), t.shape.clone(), gpu.read_f32(t)?))).collect()
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| SopError::Invalid(format!("model has no parameter {name}")))
    }

    /// Put every parameter on `tape` as a leaf.
    pub fn leaves(&self, tape: &mut Tape, requires_grad: bool) -> ParamVars {
        let vars = self.tensors.iter().map(|t| tape.leaf(t.clone(), requires_grad)).collect();
        ParamVars { vars, index: self.index.clone() }
    }
}

/// The parameters as tape variables.
pub struct ParamVars {
    pub vars: Vec<Var>,
    index: HashMap<String, usize>,
}

impl ParamVars {
    pub fn get(&self, name: &str) -> Result<&Var> {
        self.index
            .get(name)
            .map(|&i| &self.vars[i])
            .ok_or_else(|| SopError::Invalid(format!("model has no parameter {name}")))
    }
}

/// Per-call options of the backbone.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// (B, N) u32, 1 = masked: those patch embeddings become `backbone.masked_embed`.
    pub mask: Option<&'a Tensor>,
    /// Drop path: for each block, two per-sample scales (B) (attention and MLP branches),
    /// each 0 or 1/(1 − rate). None = no drop path (teacher, evaluation).
    pub drop_path: Option<&'a [[Tensor; 2]]>,
}

/// The network shape plus cached position-embedding interpolation matrices.
pub struct Vit {
    pub cfg: VitConfig,
    interp: RefCell<HashMap<usize, Tensor>>,
}

impl Vit {
    pub fn new(cfg: VitConfig) -> Vit {
        Vit { cfg, interp: RefCell::new(HashMap::new()) }
    }

    /// (N_new, N_old) bicubic interpolation of the patch position embeddings to `grid`².
    fn interp_matrix(&self, gpu: &Gpu, grid: usize) -> Result<Tensor> {
        if let Some(t) = self.interp.borrow().get(&grid) {
            return Ok(t.clone());
        }
        let old = self.cfg.grid();
        let m = pos_embed_interp_matrix(old, grid);
        let t = gpu.upload_f32(&[grid * grid, old * old], &m)?;
        self.interp.borrow_mut().insert(grid, t.clone());
        Ok(t)
    }

    /// images (B, 3, S, S) → final-normed tokens (B, T, D), T = 1 + N, N = (S/p)².
    pub fn backbone(&self, tape: &mut Tape, p: &ParamVars, images: &Var, opts: &ForwardOptions) -> Result<Var> {
        Ok(self.backbone_with_last_qkv(tape, p, images, opts)?.0)
    }

    /// `backbone`, also returning the last block's qkv (B, T, 3D) for attention maps.
    pub fn backbone_with_last_qkv(
        &self,
        tape: &mut Tape,
        p: &ParamVars,
        images: &Var,
        opts: &ForwardOptions,
    ) -> Result<(Var, Option<Tensor>)> {
        let c = &self.cfg;
        let s = images.shape();
        if s.len() != 4 || s[1] != 3 || s[2] != s[3] || s[2] < c.patch_size {
            return Err(SopError::shape(
                "vit",
                format!("images {s:?}: want (B, 3, S, S) with S >= patch {}", c.patch_size),
            ));
        }
        let (b, grid) = (s[0], s[2] / c.patch_size);
        let n = grid * grid;
        let d = c.dim;

        let patches = tape.patchify(images, c.patch_size)?;
        let w = p.get("backbone.patch_embed.proj.weight")?;
        let w2 = tape.reshape(w, &[d, 3 * c.patch_size * c.patch_size])?;
        let x = tape.linear(&patches, &w2, Some(p.get("backbone.patch_embed.proj.bias")?))?;
        let mut x = tape.reshape(&x, &[b, n, d])?;
        if let Some(mask) = opts.mask {
            if mask.shape != [b, n] || mask.dtype != DType::U32 {
                return Err(SopError::shape(
                    "vit",
                    format!("mask {:?} {:?} for {b} images of {n} patches", mask.shape, mask.dtype),
                ));
            }
            let token = tape.reshape(p.get("backbone.masked_embed")?, &[d])?;
            x = tape.mask_tokens(&x, mask, &token)?;
        }
        let cls = tape.reshape(p.get("backbone.cls_token")?, &[d])?;
        let x = tape.tokens_join(&cls, &x)?;
        let pos = self.pos_embed(tape, p, grid)?;
        let mut x = tape.add_broadcast(&x, &pos)?;
        let mut last_qkv = None;

        for i in 0..c.depth {
            let name = |s: &str| format!("backbone.blocks.{i}.{s}");
            let dp = opts.drop_path.map(|v| &v[i]);
            let h = tape.layernorm(&x, p.get(&name("norm1.weight"))?, p.get(&name("norm1.bias"))?, c.ln_eps as f32)?;
            let qkv = tape.linear(&h, p.get(&name("attn.qkv.weight"))?, Some(p.get(&name("attn.qkv.bias"))?))?;
            let a = tape.attention(&qkv, c.heads)?;
            if i + 1 == c.depth {
                last_qkv = Some(qkv.value.clone());
            }
            let (w, b) = (p.get(&name("attn.proj.weight"))?, Some(p.get(&name("attn.proj.bias"))?));
            x = residual_branch(tape, &x, &a, w, b, dp.map(|d| &d[0]))?;
            let h = tape.layernorm(&x, p.get(&name("norm2.weight"))?, p.get(&name("norm2.bias"))?, c.ln_eps as f32)?;
            let h = tape.linear_gelu(&h, p.get(&name("mlp.fc1.weight"))?, Some(p.get(&name("mlp.fc1.bias"))?))?;
            let (w, b) = (p.get(&name("mlp.fc2.weight"))?, Some(p.get(&name("mlp.fc2.bias"))?));
            x = residual_branch(tape, &x, &h, w, b, dp.map(|d| &d[1]))?;
        }
        let out = tape.layernorm(&x, p.get("backbone.norm.weight")?, p.get("backbone.norm.bias")?, c.ln_eps as f32)?;
        Ok((out, last_qkv))
    }

    /// The position embedding for a `grid`² patch grid: (1 + N', D), N' = grid².
    fn pos_embed(&self, tape: &mut Tape, p: &ParamVars, grid: usize) -> Result<Var> {
        let d = self.cfg.dim;
        let pos = p.get("backbone.pos_embed")?;
        if grid == self.cfg.grid() {
            return tape.reshape(pos, &[1 + grid * grid, d]);
        }
        // iBOT's interpolate_pos_encoding: [CLS] position unchanged, patch grid bicubic.
        let old_n = self.cfg.grid() * self.cfg.grid();
        let pos3 = tape.reshape(pos, &[1, 1 + old_n, d])?;
        let (cls_pos, patch_pos) = tape.tokens_split(&pos3)?;
        let patch_pos = tape.reshape(&patch_pos, &[old_n, d])?;
        let m = self.interp_matrix(tape.gpu, grid)?;
        let new_pos = tape.const_matmul(&m, &patch_pos)?;
        let new_pos = tape.reshape(&new_pos, &[1, grid * grid, d])?;
        let joined = tape.tokens_join(&cls_pos, &new_pos)?;
        tape.reshape(&joined, &[1 + grid * grid, d])
    }

    /// tokens (…, D) → L2-normalised head outputs (…, W): Linear layers with GELU between.
    pub fn head(&self, tape: &mut Tape, p: &ParamVars, tokens: &Var) -> Result<Var> {
        let mut h = tokens.clone();
        for i in 0..self.cfg.head_layers {
            let name = head_linear_name(&self.cfg, i);
            let (w, b) = (p.get(&format!("{name}.weight"))?, Some(p.get(&format!("{name}.bias"))?));
            // GELU between the layers, in the matmul's epilogue.
            h = if i + 1 < self.cfg.head_layers { tape.linear_gelu(&h, w, b)? } else { tape.linear(&h, w, b)? };
        }
        tape.l2norm(&h, 1e-6)
    }
}
