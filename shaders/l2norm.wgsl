// l2norm.wgsl: L2 normalisation of every row, PyTorch F.normalize(x, dim=-1, eps) semantics:
//   n = ‖x‖₂ = √(Σ_j x_j²),  y_j = x_j / max(n, eps),
// for every row of x (R, C). The forward saves n (the unclamped norm).
//
// Bindings (the Rust op passes them in this order):
//   0 p     uniform Params { R, C, eps }
//   1 x     read        (R, C)
//   2 out   read_write  (R, C)  y in the forward, dx in the backward
//   3 norm  read_write  (R)     forward writes, backward reads
//   4 dy    read        (R, C)  backward only
// `norm` is read_write because one kernel writes what the other reads and a file has one
// declaration per binding; the Rust op binds it as writable in both.
//
// Dispatch: one invocation per row r = (wid.x + wid.y * nwg.x) * WG + lid.x, workgroups laid
// out by `gpu.grid`, bound-checked.
// Numerics: f32 accumulation of squares in column order; y divides (no reciprocal), as PyTorch.

struct Params {
    R: u32, C: u32, eps: f32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> norm: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;

override WG: u32 = 64u;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn l2norm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.C;
    var ss = 0.0;
    for (var j = 0u; j < p.C; j++) {
        let v = x[o + j];
        ss += v * v;
    }
    let n = sqrt(ss);
    let d = max(n, p.eps);
    for (var j = 0u; j < p.C; j++) { out[o + j] = x[o + j] / d; }
    norm[r] = n;
}

// Backward. When n > eps, y = x/n and ∂n/∂x_j = x_j/n, so
//   ∂y_i/∂x_j = δ_ij/n − x_i x_j/n³,  dx_j = dy_j/n − x_j · (Σ_i x_i dy_i)/n³
//                                        = (dy_j − x_j/n · (Σ_i y_i dy_i)) / n.
// When n ≤ eps the denominator is the constant eps: dx_j = dy_j/eps. (At n = eps exactly
// PyTorch's clamp_min passes the norm's gradient through; the two one-sided derivatives
// differ there, a set of measure zero.)
// Evaluated as inv = 1/n, k = (Σ x_i dy_i)·inv·inv, dx_j = (dy_j − x_j·k)·inv: every
// intermediate stays O(|dy|/n), so no n³ underflows for tiny n above a tiny eps.
@compute @workgroup_size(WG)
fn l2norm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.C;
    let n = norm[r];
    if (n > p.eps) {
        let inv = 1.0 / n;
        var s = 0.0;
        for (var j = 0u; j < p.C; j++) { s += x[o + j] * dy[o + j]; }
        let k = s * inv * inv;
        for (var j = 0u; j < p.C; j++) { out[o + j] = (dy[o + j] - x[o + j] * k) * inv; }
    } else {
        let inv = 1.0 / p.eps;
        for (var j = 0u; j < p.C; j++) { out[o + j] = dy[o + j] * inv; }
    }
}
