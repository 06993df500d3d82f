// layernorm.wgsl: LayerNorm over the last dimension, PyTorch semantics (biased variance):
//   μ = mean_j x_j,  σ² = mean_j (x_j − μ)²,  rstd = 1/√(σ² + eps),
//   x̂_j = (x_j − μ) · rstd,  y_j = x̂_j · γ_j + β_j,
// for every row of x (R, D) (leading dims flattened into R). The forward saves μ and rstd.
//
// Bindings (every entry point uses a prefix; the Rust op passes them in this order, binding
// slot 3 to γ when β is unused):
//   0 p      uniform Params { R, D, eps, chunk }
//   1 x      read        (R, D)
//   2 gamma  read        (D)
//   3 beta   read        (D)
//   4 mean   read_write  (R)  forward writes, the backward entry points read
//   5 rstd   read_write  (R)  likewise
//   6 out    read_write  y (R, D) | dx (R, D) | dγ partial sums (ceil(R/chunk), D)
//   7 dy     read        (R, D)
//   8 out2   read_write  dβ partial sums (ceil(R/chunk), D)
// `mean` and `rstd` are read_write because one kernel writes what another reads and a file
// has one declaration per binding; the Rust op binds them as writable in both.
//
// Entry points and dispatch (index = (wid.x + wid.y * nwg.x) * WG + lid.x, workgroups laid
// out by `gpu.grid`, bound-checked):
//   layernorm_forward          one invocation per row.
//   layernorm_backward         dx, one invocation per row.
//   layernorm_backward_params  dγ and dβ partial sums over chunks of `chunk` rows, one
//                              invocation per (chunk, column); the Rust op sums the chunks
//                              with `sum_rows`. No atomics: deterministic.
// Numerics: f32 accumulation in column order. The variance is a second pass over the row
// (Σ (x − μ)², not Σ x² − μ²), so rows with a large mean lose no precision.

struct Params {
    R: u32, D: u32, eps: f32, chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> dy: array<f32>;
@group(0) @binding(8) var<storage, read_write> out2: array<f32>;

override WG: u32 = 64u;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.D;
    let d = f32(p.D);
    var s = 0.0;
    for (var j = 0u; j < p.D; j++) { s += x[o + j]; }
    let m = s / d;
    var v = 0.0;
    for (var j = 0u; j < p.D; j++) {
        let c = x[o + j] - m;
        v += c * c;
    }
    let rs = inverseSqrt(v / d + p.eps);
    for (var j = 0u; j < p.D; j++) {
        out[o + j] = (x[o + j] - m) * rs * gamma[j] + beta[j];
    }
    mean[r] = m;
    rstd[r] = rs;
}

// Backward (dx). With g_j = dy_j · γ_j, ∂x̂_i/∂x_j = rstd · (δ_ij − 1/D − x̂_i x̂_j / D)
// (μ contributes −1/D, σ² contributes −x̂_i x̂_j / D), so
//   dx_j = Σ_i g_i ∂x̂_i/∂x_j = rstd · (g_j − mean_i(g_i) − x̂_j · mean_i(g_i x̂_i)).
@compute @workgroup_size(WG)
fn layernorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let o = r * p.D;
    let m = mean[r];
    let rs = rstd[r];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = 0u; j < p.D; j++) {
        let g = dy[o + j] * gamma[j];
        sg += g;
        sgx += g * (x[o + j] - m) * rs;
    }
    let d = f32(p.D);
    let mg = sg / d;
    let mgx = sgx / d;
    for (var j = 0u; j < p.D; j++) {
        let xh = (x[o + j] - m) * rs;
        out[o + j] = rs * (dy[o + j] * gamma[j] - mg - xh * mgx);
    }
}

// Backward (parameters): dγ_j = Σ_r dy[r, j] · x̂[r, j], dβ_j = Σ_r dy[r, j]. This entry
// writes the sums over rows c·chunk .. (c+1)·chunk − 1 to out[c, j] and out2[c, j].
@compute @workgroup_size(WG)
fn layernorm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = invocation(wid, nwg, lid);
    let nchunks = (p.R + p.chunk - 1u) / p.chunk;
    if (g >= nchunks * p.D) { return; }
    let c = g / p.D;
    let j = g % p.D;
    let r1 = min((c + 1u) * p.chunk, p.R);
    var sgamma = 0.0;
    var sbeta = 0.0;
    for (var r = c * p.chunk; r < r1; r++) {
        let i = r * p.D + j;
        let dyv = dy[i];
        sgamma += dyv * (x[i] - mean[r]) * rstd[r];
        sbeta += dyv;
    }
    out[g] = sgamma;
    out2[g] = sbeta;
}
