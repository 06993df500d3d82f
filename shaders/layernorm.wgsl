// layernorm.wgsl: LayerNorm over the last dimension, PyTorch semantics (biased variance):
//   μ = mean_j x_j,  σ² = mean_j (x_j − μ)²,  rstd = 1/√(σ² + eps),
//   x̂_j = (x_j − μ) · rstd,  y_j = x̂_j · γ_j + β_j,
// for every row of x (R, D) (leading dims flattened into R). The forward saves μ and rstd.
//
// Bindings (every entry point uses a prefix; the Rust op passes them in this order, binding
// slot 3 to γ when β is unused):
//   0 p      uniform Params { R, D, eps, chunk, acc }
//   1 x      read        (R, D)
//   2 gamma  read        (D)
//   3 beta   read        (D)
//   4 mean   read_write  (R)  forward writes, the backward entry points read
//   5 rstd   read_write  (R)  likewise
//   6 out    read_write  y (R, D) | dx (R, D) | dγ partial sums (ceil(R/chunk), D)
//   7 dy     read        (R, D)
//   8 out2   read_write  dβ partial sums (ceil(R/chunk), D) | in the dx entry points with
//                        acc = 1, the gradient dx accumulates onto: out = out2 + dx (the
//                        bits of a separate `add`, one dispatch fewer; out2 is read only)
// `mean` and `rstd` are read_write because one kernel writes what another reads and a file
// has one declaration per binding; the Rust op binds them as writable in both.
// The (R, D) and (D) arrays are declared as vec4<f32> (element e is x[e / 4][e % 4]): with
// D % 4 == 0 a row is D/4 whole units, and vec4 loads and stores make these kernels about
// 1.5x faster on lavapipe (fewer memory instructions and bounds checks).
//
// Entry points and dispatch (index = (wid.x + wid.y * nwg.x) * WG + lid.x, workgroups laid
// out by `gpu.grid`, bound-checked):
//   layernorm_forward, layernorm_backward (dx)
//       D % 4 == 0: one invocation per row, vec4 access.
//   layernorm_forward_unaligned, layernorm_backward_unaligned
//       any D: one invocation per group of 4 rows, f32 access through the vec4 view. Rows
//       4g .. 4g+3 span whole units, so no two invocations write parts of one vec4 (a write
//       to one component may be a read-modify-write of the whole vector on some backends).
//   layernorm_backward_params_joint
//       dγ and dβ partial sums over chunks of `chunk` rows (D % 4 == 0), side by side in out
//       as (ceil(R/chunk), 2D) rows [dγ | dβ]; one invocation per vec4 unit of either half
//       (4 columns of one chunk). The Rust op sums the chunks with one `sum_rows`. No atomics.
//   layernorm_backward_params_unaligned
//       for any D: dγ to out, dβ to out2, each (ceil(R/chunk), D); the unit's 4 elements may
//       belong to two chunks, each lane loops over its own (chunk, column).
// Numerics: f32 accumulation in column order (lane-wise over the row's vec4 units, then
// ((l0 + l1) + l2) + l3 in the aligned kernels). The variance is a second pass over the row
// (Σ (x − μ)², not Σ x² − μ²), so rows with a large mean lose no precision.

struct Params {
    R: u32, D: u32, eps: f32, chunk: u32,
    acc: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> beta: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> dy: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> out2: array<vec4<f32>>;

override WG: u32 = 64u;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

fn hsum(v: vec4<f32>) -> f32 {
    return ((v.x + v.y) + v.z) + v.w;
}

// Element access through the vec4 view (unaligned kernels).
fn x_at(e: u32) -> f32 { return x[e / 4u][e % 4u]; }
fn dy_at(e: u32) -> f32 { return dy[e / 4u][e % 4u]; }
fn gamma_at(j: u32) -> f32 { return gamma[j / 4u][j % 4u]; }
fn beta_at(j: u32) -> f32 { return beta[j / 4u][j % 4u]; }

@compute @workgroup_size(WG)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let d4 = p.D / 4u;
    let o = r * d4;
    var s = vec4<f32>(0.0);
    for (var q = 0u; q < d4; q++) { s += x[o + q]; }
    let m = hsum(s) / f32(p.D);
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < d4; q++) {
        let c = x[o + q] - m;
        v += c * c;
    }
    let rs = inverseSqrt(hsum(v) / f32(p.D) + p.eps);
    for (var q = 0u; q < d4; q++) {
        out[o + q] = (x[o + q] - m) * rs * gamma[q] + beta[q];
    }
    mean[r] = m;
    rstd[r] = rs;
}

@compute @workgroup_size(WG)
fn layernorm_forward_unaligned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = invocation(wid, nwg, lid);
    let r1 = min(4u * g + 4u, p.R);
    for (var r = 4u * g; r < r1; r++) {
        let o = r * p.D;
        var s = 0.0;
        for (var j = 0u; j < p.D; j++) { s += x_at(o + j); }
        let m = s / f32(p.D);
        var v = 0.0;
        for (var j = 0u; j < p.D; j++) {
            let c = x_at(o + j) - m;
            v += c * c;
        }
        let rs = inverseSqrt(v / f32(p.D) + p.eps);
        for (var j = 0u; j < p.D; j++) {
            let e = o + j;
            out[e / 4u][e % 4u] = (x_at(e) - m) * rs * gamma_at(j) + beta_at(j);
        }
        mean[r] = m;
        rstd[r] = rs;
    }
}

// Backward (dx). With g_j = dy_j · γ_j, ∂x̂_i/∂x_j = rstd · (δ_ij − 1/D − x̂_i x̂_j / D)
// (μ contributes −1/D, σ² contributes −x̂_i x̂_j / D), so
//   dx_j = Σ_i g_i ∂x̂_i/∂x_j = rstd · (g_j − mean_i(g_i) − x̂_j · mean_i(g_i x̂_i)).
@compute @workgroup_size(WG)
fn layernorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = invocation(wid, nwg, lid);
    if (r >= p.R) { return; }
    let d4 = p.D / 4u;
    let o = r * d4;
    let m = mean[r];
    let rs = rstd[r];
    var sg = vec4<f32>(0.0);
    var sgx = vec4<f32>(0.0);
    for (var q = 0u; q < d4; q++) {
        let g = dy[o + q] * gamma[q];
        sg += g;
        sgx += g * (x[o + q] - m) * rs;
    }
    let mg = hsum(sg) / f32(p.D);
    let mgx = hsum(sgx) / f32(p.D);
    for (var q = 0u; q < d4; q++) {
        let xh = (x[o + q] - m) * rs;
        var dx = rs * (dy[o + q] * gamma[q] - mg - xh * mgx);
        if (p.acc != 0u) { dx = out2[o + q] + dx; }
        out[o + q] = dx;
    }
}

// Backward (dx), any D, rows 4g .. 4g+3; the math of layernorm_backward.
@compute @workgroup_size(WG)
fn layernorm_backward_unaligned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g4 = invocation(wid, nwg, lid);
    let r1 = min(4u * g4 + 4u, p.R);
    for (var r = 4u * g4; r < r1; r++) {
        let o = r * p.D;
        let m = mean[r];
        let rs = rstd[r];
        var sg = 0.0;
        var sgx = 0.0;
        for (var j = 0u; j < p.D; j++) {
            let g = dy_at(o + j) * gamma_at(j);
            sg += g;
            sgx += g * (x_at(o + j) - m) * rs;
        }
        let mg = sg / f32(p.D);
        let mgx = sgx / f32(p.D);
        for (var j = 0u; j < p.D; j++) {
            let e = o + j;
            let xh = (x_at(e) - m) * rs;
            var dx = rs * (dy_at(e) * gamma_at(j) - mg - xh * mgx);
            if (p.acc != 0u) { dx = out2[e / 4u][e % 4u] + dx; }
            out[e / 4u][e % 4u] = dx;
        }
    }
}

// Backward (parameters): dγ_j = Σ_r dy[r, j] · x̂[r, j], dβ_j = Σ_r dy[r, j], as partial
// sums over the rows c·chunk .. (c+1)·chunk − 1 written to out[c, j], out2[c, j].
// D % 4 == 0: invocation u sums columns 4q .. 4q+3 of chunk c = u / (D/4), q = u % (D/4).
// dγ, dβ partials as (ceil(R/chunk), 2D) rows [dγ | dβ] (D % 4 == 0).
@compute @workgroup_size(WG)
fn layernorm_backward_params_joint(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u = invocation(wid, nwg, lid);
    let d4 = p.D / 4u;
    let nchunks = (p.R + p.chunk - 1u) / p.chunk;
    if (u >= nchunks * d4) { return; }
    let c = u / d4;
    let q = u % d4;
    let r1 = min((c + 1u) * p.chunk, p.R);
    var sgamma = vec4<f32>(0.0);
    var sbeta = vec4<f32>(0.0);
    for (var r = c * p.chunk; r < r1; r++) {
        let i = r * d4 + q;
        let dyv = dy[i];
        sgamma += dyv * (x[i] - mean[r]) * rstd[r];
        sbeta += dyv;
    }
    out[2u * c * d4 + q] = sgamma;
    out[2u * c * d4 + d4 + q] = sbeta;
}

// The same for any D: lane l of unit u is output element e = 4u + l, chunk e / D, column e % D.
@compute @workgroup_size(WG)
fn layernorm_backward_params_unaligned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u = invocation(wid, nwg, lid);
    let nchunks = (p.R + p.chunk - 1u) / p.chunk;
    let n = nchunks * p.D;
    if (4u * u >= n) { return; }
    var sgamma = vec4<f32>(0.0);
    var sbeta = vec4<f32>(0.0);
    for (var l = 0u; l < 4u; l++) {
        let e = 4u * u + l;
        if (e >= n) { break; }
        let c = e / p.D;
        let j = e % p.D;
        let r1 = min((c + 1u) * p.chunk, p.R);
        var sg = 0.0;
        var sb = 0.0;
        for (var r = c * p.chunk; r < r1; r++) {
            let i = r * p.D + j;
            let dyv = dy_at(i);
            sg += dyv * (x_at(i) - mean[r]) * rstd[r];
            sb += dyv;
        }
        sgamma[l] = sg;
        sbeta[l] = sb;
    }
    out[u] = sgamma;
    out2[u] = sbeta;
}
