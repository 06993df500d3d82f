//! Every kernel's `Params` exists twice: a `#[repr(C)]` Rust struct the op uploads and the
//! WGSL struct the shader reads at `@group(0) @binding(0)`. `ParamsLayout` records the Rust
//! side (size and field offsets); `check` parses the shader with naga and compares, so a
//! field added on one side only, or a padding mistake, fails a test instead of a kernel.

use crate::gpu::Shader;

/// Size and named field offsets of a Rust `Params` struct, for one shader that reads it.
pub struct ParamsLayout {
    pub shader: &'static Shader,
    pub size: usize,
    /// (field name, byte offset), padding fields (`_…`) left out.
    pub fields: Vec<(&'static str, usize)>,
}

/// `params_layout!(SHADER, Params, [field, …])`: the layout of `Params` as `SHADER` reads it.
macro_rules! params_layout {
    ($shader:expr, $ty:ty, [$($field:ident),* $(,)?]) => {
        $crate::gpu::params_layout::ParamsLayout {
            shader: &$shader,
            size: std::mem::size_of::<$ty>(),
            fields: vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
        }
    };
}
pub(crate) use params_layout;

impl ParamsLayout {
    /// Compare with the struct bound at group 0, binding 0 of the shader: the same size,
    /// and the same non-padding fields (names compared without case) at the same offsets.
    pub fn check(&self) -> Result<(), String> {
        let file = self.shader.file;
        let module = naga::front::wgsl::parse_str(self.shader.source).map_err(|e| format!("{file}: {e}"))?;
        let uniform = module
            .global_variables
            .iter()
            .find(|(_, v)| v.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 0))
            .map(|(_, v)| v.ty)
            .ok_or_else(|| format!("{file}: no binding 0 in group 0"))?;
        let naga::TypeInner::Struct { members, span } = &module.types[uniform].inner else {
            return Err(format!("{file}: binding 0 is not a struct"));
        };
        let wgsl: Vec<(String, usize)> = members
            .iter()
            .filter_map(|m| m.name.clone().map(|n| (n, m.offset as usize)))
            .filter(|(n, _)| !n.starts_with('_'))
            .collect();
        let rust: Vec<(String, usize)> =
            self.fields.iter().filter(|(n, _)| !n.starts_with('_')).map(|&(n, o)| (n.to_string(), o)).collect();
        let same_fields = wgsl.len() == rust.len()
            && wgsl.iter().zip(&rust).all(|(w, r)| w.0.eq_ignore_ascii_case(&r.0) && w.1 == r.1);
        if *span as usize != self.size || !same_fields {
            return Err(format!("{file}: WGSL Params {span} bytes {wgsl:?}, Rust Params {} bytes {rust:?}", self.size));
        }
        Ok(())
    }
}
