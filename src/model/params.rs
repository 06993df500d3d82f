//! Every parameter of the ViT backbone and the SOP head, under the authors' (iBOT/timm)
//! names and in PyTorch layouts, so checkpoints interoperate with PyTorch state dicts; plus
//! the host-side initialisation.
//!
//! Layouts (row-major, PyTorch): a Linear weight is (out, in) and computes y = x Wᵀ + b; the
//! patch embedding is a Conv2d weight (D, C, P, P) with stride P, i.e. a Linear from the
//! flattened (C, P, P) patch; attention qkv is one Linear (3D, D) whose output columns are
//! [q | k | v], each split into H heads of Dh consecutive columns.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::config::VitConfig;

/// How a parameter starts out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal(0, std) redrawn outside [lo, hi] (PyTorch's `trunc_normal_(std, a, b)`).
    TruncNormal {
        std: f64,
        lo: f64,
        hi: f64,
    },
    /// Uniform in [lo, hi) (PyTorch's default Linear init, U(±1/√in)).
    Uniform {
        lo: f64,
        hi: f64,
    },
}

/// One parameter tensor: its state-dict name, PyTorch shape, whether AdamW decays it, and
/// its initialisation.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Weight decay applies: false for biases and other 1-D parameters (LayerNorm weights),
    /// as in the authors' `get_params_groups`; [CLS], pos_embed and the mask token have 2+
    /// dimensions and are decayed.
    pub decay: bool,
    pub init: Init,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// timm/iBOT `trunc_normal_(std=.02)`: the bounds are the PyTorch defaults a = -2, b = 2 in
/// absolute units (100 standard deviations), so in effect an untruncated normal; kept for
/// fidelity.
const TRUNC_002: Init = Init::TruncNormal { std: 0.02, lo: -2.0, hi: 2.0 };

fn spec(name: String, shape: Vec<usize>, init: Init) -> ParamSpec {
    let decay = !(name.ends_with(".bias") || shape.len() == 1);
    ParamSpec { name, shape, decay, init }
}

/// A Linear layer `prefix.weight` (out, in) and `prefix.bias` (out): timm init
/// (trunc_normal 0.02, zero bias).
fn linear(out: &mut Vec<ParamSpec>, prefix: &str, n_out: usize, n_in: usize) {
    out.push(spec(format!("{prefix}.weight"), vec![n_out, n_in], TRUNC_002));
    out.push(spec(format!("{prefix}.bias"), vec![n_out], Init::Zeros));
}

fn layernorm(out: &mut Vec<ParamSpec>, prefix: &str, d: usize) {
    out.push(spec(format!("{prefix}.weight"), vec![d], Init::Ones));
    out.push(spec(format!("{prefix}.bias"), vec![d], Init::Zeros));
}

/// Name of the head's i-th Linear: iBOT's DINOHead is `nn.Sequential(Linear, GELU, Linear,
/// GELU, Linear)`, so Linear i sits at index 2i (`head.mlp.0`, `head.mlp.2`, `head.mlp.4`);
/// with a single layer the head is a bare `nn.Linear` (`head.mlp`).
pub fn head_linear_name(cfg: &VitConfig, i: usize) -> String {
    if cfg.head_layers == 1 {
        "head.mlp".to_string()
    } else {
        format!("head.mlp.{}", 2 * i)
    }
}

/// Every parameter, backbone first (`backbone.*`), then the head (`head.*`).
pub fn param_specs(cfg: &VitConfig) -> Vec<ParamSpec> {
    let d = cfg.dim;
    let mut s = backbone_specs(cfg);
    for i in 0..cfg.head_layers {
        let n_in = if i == 0 { d } else { cfg.head_hidden };
        let n_out = if i + 1 == cfg.head_layers { cfg.head_bottleneck } else { cfg.head_hidden };
        linear(&mut s, &head_linear_name(cfg, i), n_out, n_in);
    }
    s
}

/// The `backbone.*` parameters only (what `sop embed` needs).
pub fn backbone_specs(cfg: &VitConfig) -> Vec<ParamSpec> {
    let (d, p, c) = (cfg.dim, cfg.patch_size, cfg.in_chans);
    // The patch embedding is initialised like a Linear (trunc_normal 0.02, zero bias). Note:
    // iBOT's `_init_weights` leaves this Conv2d at PyTorch's default (uniform in
    // ±1/sqrt(C·P²)); the difference only matters for from-scratch training. The student's
    // mask token starts at zero (docs/METHOD.md "Networks").
    let mut s = vec![
        spec("backbone.cls_token".into(), vec![1, 1, d], TRUNC_002),
        spec("backbone.pos_embed".into(), vec![1, cfg.tokens(), d], TRUNC_002),
        spec("backbone.masked_embed".into(), vec![1, d], Init::Zeros),
        spec("backbone.patch_embed.proj.weight".into(), vec![d, c, p, p], TRUNC_002),
        spec("backbone.patch_embed.proj.bias".into(), vec![d], Init::Zeros),
    ];
    for i in 0..cfg.depth {
        let b = format!("backbone.blocks.{i}");
        layernorm(&mut s, &format!("{b}.norm1"), d);
        linear(&mut s, &format!("{b}.attn.qkv"), 3 * d, d);
        linear(&mut s, &format!("{b}.attn.proj"), d, d);
        layernorm(&mut s, &format!("{b}.norm2"), d);
        linear(&mut s, &format!("{b}.mlp.fc1"), cfg.mlp_hidden(), d);
        linear(&mut s, &format!("{b}.mlp.fc2"), d, cfg.mlp_hidden());
    }
    layernorm(&mut s, "backbone.norm", d);
    s
}

/// Fresh parameters for `cfg`, in `param_specs` order, as (name, shape, values). The same
/// seed gives the same values on every platform (ChaCha12 `StdRng`, specs drawn in order).
pub fn init_params(cfg: &VitConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    init_specs(param_specs(cfg), seed)
}

/// Fresh values of `specs`, drawn in order from `seed` (a list that extends
/// `param_specs(cfg)` gives its first tensors the values of `init_params(cfg, seed)`).
pub fn init_specs(specs: Vec<ParamSpec>, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    specs
        .into_iter()
        .map(|ps| {
            let n = ps.numel();
            let v = match ps.init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::TruncNormal { std, lo, hi } => (0..n)
                    .map(|_| loop {
                        let z: f64 = rng.sample::<f64, _>(StandardNormal) * std;
                        if (lo..=hi).contains(&z) {
                            break z as f32;
                        }
                    })
                    .collect(),
                Init::Uniform { lo, hi } => (0..n).map(|_| rng.random_range(lo..hi) as f32).collect(),
            };
            (ps.name, ps.shape, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VitConfig {
        VitConfig::micro()
    }

    #[test]
    fn names_shapes_and_decay() {
        let c = tiny();
        let s = param_specs(&c);
        let get = |n: &str| s.iter().find(|p| p.name == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(get("backbone.pos_embed").shape, vec![1, 5, 8]);
        assert_eq!(get("backbone.patch_embed.proj.weight").shape, vec![8, 3, 4, 4]);
        assert_eq!(get("backbone.blocks.1.attn.qkv.weight").shape, vec![24, 8]);
        assert_eq!(get("backbone.blocks.0.mlp.fc2.weight").shape, vec![8, 32]);
        assert_eq!(get("head.mlp.0.weight").shape, vec![16, 8]);
        assert_eq!(get("head.mlp.2.weight").shape, vec![16, 16]);
        assert_eq!(get("head.mlp.4.weight").shape, vec![4, 16]);
        assert!(get("backbone.cls_token").decay && get("backbone.masked_embed").decay);
        assert!(!get("backbone.blocks.0.norm1.weight").decay && !get("head.mlp.4.bias").decay);
        // 5 top-level (cls, pos, mask, patch w/b) + 12 per block + 2 final norm + 2 per head layer.
        assert_eq!(s.len(), 5 + 12 * 2 + 2 + 6);
        let mut names: Vec<_> = s.iter().map(|p| &p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), s.len(), "duplicate names");
        assert_eq!(backbone_specs(&c).len(), s.len() - 6);
        let one = VitConfig { head_layers: 1, ..c };
        assert_eq!(param_specs(&one).last().unwrap().name, "head.mlp.bias");
    }

    #[test]
    fn init_is_deterministic_and_timm_like() {
        let c = tiny();
        let a = init_params(&c, 7);
        assert_eq!(a, init_params(&c, 7));
        assert_ne!(a, init_params(&c, 8));
        for (name, shape, v) in &a {
            assert_eq!(v.len(), shape.iter().product::<usize>());
            if name.ends_with(".bias") || name.ends_with("masked_embed") {
                assert!(v.iter().all(|&x| x == 0.0), "{name}");
            } else if name.contains("norm") {
                assert!(v.iter().all(|&x| x == 1.0), "{name}");
            }
        }
        let w: Vec<f64> = a.iter().find(|p| p.0 == "head.mlp.2.weight").unwrap().2.iter().map(|&x| x as f64).collect();
        let std = (w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.005, "std {std}");
    }
}
