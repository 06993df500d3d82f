// attention_common.wgsl: what the fused attention (attention.wgsl) and the tiled
// FlashAttention-2 kernels (attention_flash.wgsl) share, prepended to each when it is
// compiled (src/ops/attention.rs), so naga's line numbers for those files count from the
// first line of this one. Layout and bindings: see attention.wgsl's header.

struct Params {
    B: u32, T: u32, H: u32, D: u32,
    BH: u32, scale: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqkv: array<f32>;

override DH: u32 = 64u;
const MAX_DH: u32 = 64u;

// Where row t of head bh = b·H + h lives: the qkv offset of its q (k at + D, v at + 2D), the
// out/dout offset of its head, and the qkv offset of token 0's k for the same (b, h).
struct Row { q: u32, o: u32, k0: u32 }

fn row_of(bh: u32, t: u32) -> Row {
    let b = bh / p.H;
    let head = (bh % p.H) * DH;
    let tok = b * p.T + t;
    return Row(tok * 3u * p.D + head, tok * p.D + head, b * p.T * 3u * p.D + p.D + head);
}

// The (b·H + h) of a workgroup: workgroups are laid out (ceil(T / WG), grid of B·H), so bh
// and everything derived from it is uniform across the workgroup.
fn bh_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y + wid.z * nwg.y;
}
