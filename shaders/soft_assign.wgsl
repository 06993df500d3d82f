// soft_assign.wgsl: SOP soft assignment p = softmax(logits / tau) · Y.
// logits (R, M) compare R embeddings with the M support embeddings (rows of D); Y (M, K)
// is the vote matrix of the M support embeddings for the K prototypes; p (R, K) is each
// embedding's distribution over the prototypes.
//
// Bindings: 0 params (uniform), 1 logits (read, (R, M)), 2 y (read, (M, K)),
// 3 dp (read, (R, K); backward only, bound to any buffer in the forward),
// 4 out (read_write): p (R, K) in the forward, dlogits (R, M) in the backward.
//
// Two families of entry points:
// - dense Y (`tiled16`): any Y, described below.
// - owned Y (`votes`, the `soft_assign_votes_*` entries at the end): SOP's vote matrix, where
//   M = K·E, member m belongs to prototype o(m) = m / E, and every entry of row m off the owner
//   column equals c_m = Y[m, (o(m) + 1) % K] (prototypes.wgsl writes them with one expression,
//   so they are the same f32); d_m = Y[m, o(m)]. Then, exactly in real arithmetic,
//     Σ_m a_m Y[m, q] = C + Σ_{m: o(m) = q} a_m (d_m − c_m),   C = Σ_m a_m c_m
//     Σ_k dp_k Y[m, k] = c_m · Σ_k dp_k + (d_m − c_m) · dp_{o(m)}
//   so the (R, M)·(M, K) product becomes O(M + K) work per row, one invocation per row.
//
// Dispatch (all barrier-free, one invocation per row or per row tile, loops inside; linear
// invocation id t = (wid.x + wid.y·nwg.x)·WG + lid, from gpu.grid(ceil(R·tiles / WG))):
//   soft_assign_forward     one invocation per (row, tile of 16 output columns): tiles =
//                           ceil(K / 16). With K <= 16 that is one invocation per row.
//   soft_assign_backward_g  one invocation per (row, tile of 16 rows of Y): tiles =
//                           ceil(M / 16); writes g = dp · Yᵀ into dlogits.
//   soft_assign_backward    one invocation per row (tiles = 1); turns g into dlogits.
// Tiles of 16 outputs let each exp (forward) or each dp load (backward) feed 16 FMAs while
// neighbouring invocations read neighbouring addresses of Y.
//
// Numerics: the softmax subtracts the row max before exp: e_m = exp((l_m - max) / tau), and
// the forward normalises once at the end, p_k = (Σ_m e_m Y[m, k]) / Σ_m e_m. f32 accumulation
// in m (or k) order, no atomics: deterministic. tau > 0 is checked on the host, which passes
// inv_tau = 1 / tau. Rows holding +inf or NaN give NaN; a row of all -inf gives NaN.

struct Params {
    R: u32,
    M: u32,
    K: u32,
    tiles: u32,
    inv_tau: f32,
    E: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> dp: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

const TILE: u32 = 16u;

fn row_max(lb: u32) -> f32 {
    var mx = logits[lb];
    for (var m = 1u; m < p.M; m++) {
        mx = max(mx, logits[lb + m]);
    }
    return mx;
}

// Forward: p[r, k] = Σ_m a_m Y[m, k], a = softmax(logits[r, :] / tau).
@compute @workgroup_size(WG)
fn soft_assign_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.R * p.tiles) { return; }
    let r = t / p.tiles;
    let k0 = (t % p.tiles) * TILE;
    let last = min(TILE, p.K - k0) - 1u; // columns past K re-read the tile's last one
    let lb = r * p.M;
    let mx = row_max(lb);
    var s = 0.0;
    var acc: array<f32, TILE>;
    for (var m = 0u; m < p.M; m++) {
        let e = exp((logits[lb + m] - mx) * p.inv_tau);
        s += e;
        let yb = m * p.K + k0;
        for (var j = 0u; j < TILE; j++) {
            acc[j] += e * y[yb + min(j, last)];
        }
    }
    let inv_s = 1.0 / s;
    let ob = r * p.K + k0;
    for (var j = 0u; j <= last; j++) {
        out[ob + j] = acc[j] * inv_s;
    }
}

// Backward, first pass: g[r, m] = Σ_k dp[r, k] Y[m, k] (the gradient reaching a_m), stored
// in dlogits for the second pass.
@compute @workgroup_size(WG)
fn soft_assign_backward_g(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.R * p.tiles) { return; }
    let r = t / p.tiles;
    let m0 = (t % p.tiles) * TILE;
    let last = min(TILE, p.M - m0) - 1u;
    let db = r * p.K;
    var acc: array<f32, TILE>;
    for (var k = 0u; k < p.K; k++) {
        let d = dp[db + k];
        for (var j = 0u; j < TILE; j++) {
            acc[j] += d * y[(m0 + min(j, last)) * p.K + k];
        }
    }
    let ob = r * p.M + m0;
    for (var j = 0u; j <= last; j++) {
        out[ob + j] = acc[j];
    }
}

// Backward, second pass. With a = softmax(z), z = logits / tau, p = a · Y and the upstream
// gradient dp: dL/da_m = Σ_k dp_k Y[m, k] = g_m; the softmax Jacobian da_m'/dz_m =
// a_m' (δ_mm' - a_m) gives dL/dz_m = a_m (g_m - Σ_m' a_m' g_m'); and dz/dlogits = 1 / tau:
//   dlogits_m = (1 / tau) · a_m · (g_m - ḡ),   ḡ = Σ_m' a_m' g_m'.
// Overwrites dlogits (no accumulation).
@compute @workgroup_size(WG)
fn soft_assign_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = (wid.x + wid.y * nwg.x) * WG + li;
    if (r >= p.R) { return; }
    let lb = r * p.M;
    let mx = row_max(lb);
    var s = 0.0;
    var eg = 0.0;
    for (var m = 0u; m < p.M; m++) {
        let e = exp((logits[lb + m] - mx) * p.inv_tau);
        s += e;
        eg += e * out[lb + m];
    }
    let inv_s = 1.0 / s;
    let g_bar = eg * inv_s;
    for (var m = 0u; m < p.M; m++) {
        let a = exp((logits[lb + m] - mx) * p.inv_tau) * inv_s;
        out[lb + m] = p.inv_tau * a * (out[lb + m] - g_bar);
    }
}

// ---- owned Y (`votes`): see the header. One invocation per row r, linear invocation id from
// gpu.grid(ceil(R / WG)), no workgroup memory and no barriers (on lavapipe a barrier in a
// one-row-per-workgroup layout cost more than the whole row's work). Loads per row: about
// 4M + 2K in the forward, 5M + K in the backward, against M·(K + 1) for the dense kernels.

// c_m: the value of row m off its owner's column (d_m when K = 1, where no such column exists).
fn off_owner(m: u32) -> f32 {
    return y[m * p.K + (m / p.E + 1u) % p.K];
}

// p[r, q] = (C + Σ_{j<E} e_{qE+j} (d − c)_{qE+j}) / S with e_m = exp((l_m − max)/τ), S = Σ e_m,
// C = Σ_m e_m c_m. The owner sums go to `out` in the m loop (members of one prototype are
// consecutive), and a last pass adds C and divides by S.
@compute @workgroup_size(WG)
fn soft_assign_votes_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = (wid.x + wid.y * nwg.x) * WG + li;
    if (r >= p.R) { return; }
    let lb = r * p.M;
    let ob = r * p.K;
    let mx = row_max(lb);
    var s = 0.0;
    var c_sum = 0.0;
    var own = 0.0;
    for (var m = 0u; m < p.M; m++) {
        let e = exp((logits[lb + m] - mx) * p.inv_tau);
        let q = m / p.E;
        let c = off_owner(m);
        s += e;
        c_sum += e * c;
        own += e * (y[m * p.K + q] - c);
        if (m % p.E == p.E - 1u) {
            out[ob + q] = own;
            own = 0.0;
        }
    }
    let inv_s = 1.0 / s;
    for (var q = 0u; q < p.K; q++) {
        out[ob + q] = (c_sum + out[ob + q]) * inv_s;
    }
}

// g_m = c_m·Σ_k dp_k + (d_m − c_m)·dp_{o(m)}; dlogits_m = (1/τ)·a_m·(g_m − ḡ), ḡ = Σ_m a_m g_m
// (the derivation above `soft_assign_backward`). e_m is parked in `out` between the passes.
@compute @workgroup_size(WG)
fn soft_assign_votes_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = (wid.x + wid.y * nwg.x) * WG + li;
    if (r >= p.R) { return; }
    let lb = r * p.M;
    let db = r * p.K;
    let mx = row_max(lb);
    var sd = 0.0;
    for (var k = 0u; k < p.K; k++) {
        sd += dp[db + k];
    }
    var s = 0.0;
    var eg = 0.0;
    for (var m = 0u; m < p.M; m++) {
        let e = exp((logits[lb + m] - mx) * p.inv_tau);
        let c = off_owner(m);
        let q = m / p.E;
        s += e;
        eg += e * (c * sd + (y[m * p.K + q] - c) * dp[db + q]);
        out[lb + m] = e;
    }
    let inv_s = 1.0 / s;
    let g_bar = eg * inv_s;
    for (var m = 0u; m < p.M; m++) {
        let c = off_owner(m);
        let q = m / p.E;
        let g = c * sd + (y[m * p.K + q] - c) * dp[db + q];
        out[lb + m] = p.inv_tau * (out[lb + m] * inv_s) * (g - g_bar);
    }
}
