// attention_unfused.wgsl: the pieces of the unfused attention (src/ops/attention_unfused.rs)
// that are not matmuls. The products S = scale·Q·Kᵀ, O = P·V, dV = Pᵀ·dO, dP = dO·Vᵀ,
// dQ = dS·K and dK = dSᵀ·Q run in the batched matmul; this file moves heads in and out of
// the (B·H, T, Dh) layout that matmul needs and does the row-wise softmax parts.
//
// Layout of the fused op (shaders/attention.wgsl's header): qkv (B, T, 3D) viewed as
// (B, T, 3, H, Dh), out (B, T, D), lse (B, H, T) = (B·H·T) in row order r = bh·T + t.
//
// Bindings (each entry point uses a prefix; the Rust op passes them in this order):
//   0 p    uniform Params
//   1 x    read_write  heads_split: (B, T, C) source; heads_merge: (B·H, T, Dh) source;
//                      softmax entries: the (R, T) scores / probabilities
//   2 y    read_write  heads_split: (B·H, T, Dh) destination; heads_merge: (B, T, C)
//                      destination; softmax entries: lse (R)
//   3 g    read_write  attention_dscores: dP (R, T) in, dS (R, T) out, in place
// Everything is read_write because one entry reads what another writes through the same
// binding; the op binds them all as writable.
//
// Dispatch: one workgroup per token (heads_*, see there) or one invocation per row (softmax
// entries, index (wid.x + wid.y·nwg.x)·WG + lid.x), bound-checked against the count; every
// other address is derived from an in-range index (col0 + H·Dh ≤ C, checked by the op), so
// the module is trusted (no naga runtime checks).
// Numerics: f32; the softmax subtracts the row max (every exponent ≤ 0, sum ≥ 1) and sums in
// column order: deterministic.

struct Params {
    B: u32, T: u32, H: u32, DH: u32,
    C: u32, col0: u32, R: u32, scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> g: array<f32>;

override WG: u32 = 64u;
override DH: u32 = 64u;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

// heads_split / heads_merge: one workgroup per token (b, t) (index wid.x + wid.y·nwg.x, so
// b and t are workgroup-uniform and their divisions scalar); invocation lid moves the
// elements e = lid, lid + WG, … < H·Dh of the token's row, e = h·Dh + d: consecutive lanes
// touch consecutive addresses on the (B, T, C) side and within a head on the other. On
// lavapipe (ViT-S, B 8, `--example`-style kernel profile, shared machine) one invocation per
// element, dividing its index by T, H and Dh at run time, took 27% of the unfused attention's
// time; this layout about 12% (8 tokens per workgroup: no better); the matmuls take 67–80%.
// The (B·H, T, Dh) address of element e of token (b, t): ((b·H + h)·T + t)·Dh + d.
// DH: the head width as an override constant (= p.DH), so e / DH is no run-time division.
fn head_address(b: u32, t: u32, e: u32) -> u32 {
    let h = e / DH;
    return ((b * p.H + h) * p.T + t) * DH + (e - h * DH);
}

// y (B·H, T, Dh) = the head-split view of columns col0.. of x (B, T, C).
@compute @workgroup_size(WG)
fn heads_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let tok = wid.x + wid.y * nwg.x;
    if (tok >= p.B * p.T) { return; }
    let b = tok / p.T;
    let t = tok - b * p.T;
    let src = tok * p.C + p.col0;
    for (var e = lid.x; e < p.H * DH; e += WG) { y[head_address(b, t, e)] = x[src + e]; }
}

// y (B, T, C) columns col0..col0 + H·Dh = x (B·H, T, Dh) with its heads joined (the inverse
// of heads_split); other columns of y are left as they are.
@compute @workgroup_size(WG)
fn heads_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let tok = wid.x + wid.y * nwg.x;
    if (tok >= p.B * p.T) { return; }
    let b = tok / p.T;
    let t = tok - b * p.T;
    let dst = tok * p.C + p.col0;
    for (var e = lid.x; e < p.H * DH; e += WG) { y[dst + e] = x[head_address(b, t, e)]; }
}

// Row r of the scores S (R, T), already scaled by the matmul's alpha, becomes its softmax
// P_rj = exp(S_rj − m) / l in place, and y[r] = lse_r = m + log l, with m = max_j S_rj and
// l = Σ_j exp(S_rj − m).
@compute @workgroup_size(WG)
fn attention_softmax_lse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.T;
    var m = x[o];
    for (var j = 1u; j < p.T; j++) { m = max(m, x[o + j]); }
    var l = 0.0;
    for (var j = 0u; j < p.T; j++) {
        let e = exp(x[o + j] - m);
        x[o + j] = e;
        l += e;
    }
    let inv = 1.0 / l;
    for (var j = 0u; j < p.T; j++) { x[o + j] *= inv; }
    y[r] = m + log(l);
}

// The backward's probabilities from the forward's lse: P_rj = exp(S_rj − lse_r), in place.
@compute @workgroup_size(WG)
fn attention_probs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.T;
    let lse_r = y[r];
    for (var j = 0u; j < p.T; j++) { x[o + j] = exp(x[o + j] - lse_r); }
}

// Softmax backward with the score scale folded in (derivation in shaders/attention.wgsl):
//   dS_rj = scale · P_rj (dP_rj − D_r),  D_r = Σ_j P_rj dP_rj  (= dO_r·O_r),
// so dQ = dS·K and dK = dSᵀ·Q need no further scaling. x holds P, g holds dP and gets dS.
@compute @workgroup_size(WG)
fn attention_dscores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.T;
    var dsum = 0.0;
    for (var j = 0u; j < p.T; j++) { dsum += x[o + j] * g[o + j]; }
    for (var j = 0u; j < p.T; j++) { g[o + j] = p.scale * x[o + j] * (g[o + j] - dsum); }
}
