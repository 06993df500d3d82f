// koleo.wgsl: the KoLeo regulariser (Sablayrolles et al. 2019, DINOv2's `KoLeoLoss`) on
// groups of rows of x (R, C), R = G·B: each group of B consecutive rows is one batch (one
// global view's student [CLS] rows). Within a group, nn(i) is the row j ≠ i with the largest
// x_i·x_j (the nearest on the unit sphere; ties go to the smaller j), d_i = ‖x_i − x_nn(i)‖₂,
// and
//   L = −(1/B) Σ_i ln(d_i + eps)        (the per-group means, summed over the G groups).
//
// Bindings (the Rust op passes them in this order):
//   0 p     uniform Params { R, C, B, eps, scale }
//   1 x     read        (R, C)
//   2 nn    read_write  (R) u32   neighbours writes, loss and backward read
//   3 dist  read_write  (R)       neighbours writes, loss and backward read
//   4 out   read_write  (1) L in koleo_loss, (R, C) dx in koleo_backward
// nn and dist are read_write because one kernel writes what the others read and a file has
// one declaration per binding; the Rust op binds them as writable everywhere.
//
// Dispatch: koleo_neighbours one invocation per row, koleo_backward one per element of x,
// (wid.x + wid.y·nwg.x)·WG + lid.x, bound-checked; koleo_loss one workgroup, its first
// invocation sums the R rows in order (R is a few hundred: no tree needed, deterministic).
// Numerics: f32 dot products and squared differences accumulated in column order.

struct Params {
    R: u32, C: u32, B: u32, eps: f32,
    scale: f32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> nn: array<u32>;
@group(0) @binding(3) var<storage, read_write> dist: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

// Row i's nearest neighbour in its group (largest dot product, first on ties) and d_i.
@compute @workgroup_size(WG)
fn koleo_neighbours(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = invocation(wid, nwg, lid);
    if (i >= p.R) { return; }
    let g0 = (i / p.B) * p.B;
    let oi = i * p.C;
    var best = 0.0;
    var bj = 0u;
    var first = true;
    for (var j = g0; j < g0 + p.B; j++) {
        if (j == i) { continue; }
        let oj = j * p.C;
        var s = 0.0;
        for (var c = 0u; c < p.C; c++) { s += x[oi + c] * x[oj + c]; }
        if (first || s > best) {
            best = s;
            bj = j;
            first = false;
        }
    }
    let ob = bj * p.C;
    var ss = 0.0;
    for (var c = 0u; c < p.C; c++) {
        let v = x[oi + c] - x[ob + c];
        ss += v * v;
    }
    nn[i] = bj;
    dist[i] = sqrt(ss);
}

// L = −(1/B) Σ_i ln(d_i + eps), rows in order.
@compute @workgroup_size(WG)
fn koleo_loss(@builtin(local_invocation_id) lid: vec3<u32>) {
    if (lid.x != 0u) { return; }
    var s = 0.0;
    for (var i = 0u; i < p.R; i++) { s += log(dist[i] + p.eps); }
    out[0] = -s / f32(p.B);
}

// Backward, upstream gradient `scale` (dL_total/dL). With nn held fixed (the arg-max is
// locally constant), ∂d_k/∂x_k = (x_k − x_nn(k))/d_k = −∂d_k/∂x_nn(k) and
// ∂L/∂d_k = −(1/B)/(d_k + eps). Write a_k = 1/(d_k (d_k + eps)) (0 when d_k = 0: two equal
// rows, where the direction is undefined). Row i collects its own term and one from every
// row k that picked it as neighbour:
//   dx_i = −(scale/B) [ a_i (x_i − x_nn(i)) − Σ_{k: nn(k) = i} a_k (x_k − x_i) ].
// The Σ runs over the group in row order (no atomics): O(B) per element.
@compute @workgroup_size(WG)
fn koleo_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = invocation(wid, nwg, lid);
    if (e >= p.R * p.C) { return; }
    let i = e / p.C;
    let c = e % p.C;
    let g0 = (i / p.B) * p.B;
    let xi = x[e];
    let di = dist[i];
    var acc = 0.0;
    if (di > 0.0) {
        acc = (xi - x[nn[i] * p.C + c]) / (di * (di + p.eps));
    }
    for (var k = g0; k < g0 + p.B; k++) {
        let dk = dist[k];
        if (k != i && nn[k] == i && dk > 0.0) {
            acc -= (x[k * p.C + c] - xi) / (dk * (dk + p.eps));
        }
    }
    out[e] = -(p.scale / f32(p.B)) * acc;
}
