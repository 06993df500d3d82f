// softmax.wgsl: row-wise softmax with a scale (a temperature 1/τ, or 1 for a plain softmax):
//   y_j = exp(scale·x_j − m) / Σ_k exp(scale·x_k − m),  m = max_k scale·x_k,
// for every row of x (R, C).
//
// Bindings (the Rust op passes them in this order):
//   0 p    uniform Params { R, C, scale }
//   1 src  read        (R, C)  x in the forward, y (the forward's output) in the backward
//   2 out  read_write  (R, C)  y in the forward, dx in the backward
//   3 dy   read        (R, C)  backward only
//
// Dispatch: one invocation per row r = (wid.x + wid.y * nwg.x) * WG + lid.x, workgroups laid
// out by `gpu.grid`, bound-checked.
// Numerics: the max is subtracted, so every exponent is ≤ 0 and the sum is ≥ 1 (no overflow,
// no division by a tiny number). Three passes over the row: max, Σ exp (exp stored in out),
// divide. f32 accumulation in column order.

struct Params {
    R: u32, C: u32, scale: f32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

override WG: u32 = 64u;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.C;
    // max of scale·x (not scale·max x: scale may be negative)
    var m = p.scale * src[o];
    for (var j = 1u; j < p.C; j++) { m = max(m, p.scale * src[o + j]); }
    var s = 0.0;
    for (var j = 0u; j < p.C; j++) {
        let e = exp(p.scale * src[o + j] - m);
        out[o + j] = e;
        s += e;
    }
    for (var j = 0u; j < p.C; j++) { out[o + j] = out[o + j] / s; }
}

// Backward: ∂y_i/∂(scale·x_j) = y_i (δ_ij − y_j), so with the chain rule through scale
//   dx_j = scale · Σ_i dy_i y_i (δ_ij − y_j) = scale · y_j · (dy_j − Σ_i y_i dy_i).
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.C;
    var s = 0.0;
    for (var j = 0u; j < p.C; j++) { s += src[o + j] * dy[o + j]; }
    for (var j = 0u; j < p.C; j++) {
        out[o + j] = p.scale * src[o + j] * (dy[o + j] - s);
    }
}
