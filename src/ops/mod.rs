//! One op family per file: shape checks, dispatch, and the backward with its derivation.

pub mod adamw;
pub mod anchor_keep;
pub mod attention;
pub mod attention_unfused;
pub mod attention_variant;
pub mod autotune_cache;
pub mod clip;
pub mod cross_entropy;
pub mod elementwise;
pub mod ema;
pub mod finite;
pub mod gather;
pub mod gelu;
pub mod koleo;
pub mod l2norm;
pub mod launch;
pub mod layernorm;
pub mod mask_tokens;
pub mod matmul;
pub mod prototypes;
pub mod reduce;
pub mod soft_assign;
pub mod soft_assign_flash;
pub mod soft_assign_variant;
pub mod softmax;
pub mod tokens;
pub mod topk;
pub mod variant;

#[cfg(test)]
mod tests {
    /// Every op's Rust `Params` has the size and field offsets of the WGSL struct its
    /// shaders read (naga parses each shader file).
    #[test]
    fn params_structs_match_their_shaders() {
        let all = [
            super::adamw::params_layouts(),
            super::anchor_keep::params_layouts(),
            super::attention::params_layouts(),
            super::attention_unfused::params_layouts(),
            super::clip::params_layouts(),
            super::cross_entropy::params_layouts(),
            super::elementwise::params_layouts(),
            super::ema::params_layouts(),
            super::finite::params_layouts(),
            super::gather::params_layouts(),
            super::gelu::params_layouts(),
            super::koleo::params_layouts(),
            super::l2norm::params_layouts(),
            super::layernorm::params_layouts(),
            super::mask_tokens::params_layouts(),
            super::matmul::params_layouts(),
            super::prototypes::params_layouts(),
            super::reduce::params_layouts(),
            super::soft_assign::params_layouts(),
            super::soft_assign_flash::params_layouts(),
            super::softmax::params_layouts(),
            super::tokens::params_layouts(),
            super::topk::params_layouts(),
        ];
        let layouts: Vec<_> = all.into_iter().flatten().collect();
        assert_eq!(layouts.len(), 27, "one layout per shader file with a Params struct");
        let errors: Vec<String> = layouts.iter().filter_map(|l| l.check().err()).collect();
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
}
