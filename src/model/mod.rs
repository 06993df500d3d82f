//! The model half of the engine: the ViT backbone and SOP head shapes (`config`), their
//! parameters under the authors' names and PyTorch layouts (`params`), and the position
//! embedding interpolation to other crop sizes (`pos_embed`).

pub mod config;
pub mod params;
pub mod pos_embed;

pub use config::VitConfig;
pub use params::{backbone_specs, init_params, param_specs, Init, ParamSpec};
pub use pos_embed::pos_embed_interp_matrix;
pub mod vit;
