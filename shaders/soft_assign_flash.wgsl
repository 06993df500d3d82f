// soft_assign_flash.wgsl: the whole SOP assignment P(u) = softmax(u·Dᵀ/τ)·Y in the
// FlashAttention style, for GPUs: the (R, M) logits are never stored.
// u (R, W) embeddings, D (M, W) support embeddings, Y (M, K) votes (any Y), p (R, K).
//
// Bindings: 0 params (uniform), 1 u (read, (R, W)), 2 d (read, (M, W)), 3 y (read, (M, K)),
// 4 dp (read, (R, K); backward only, any buffer in the forward), 5 p_in (read, (R, K): the
// forward's p; backward only, any buffer in the forward), 6 lse (read_write, (R): the
// forward writes logsumexp_m(l_m / τ) per row, the backward reads it), 7 out (read_write):
// p (R, K) in the forward, du (R, W) in the backward.
//
// Dispatch: one workgroup of BC = 64 invocations per block of BR = 8 rows, block index
// b = wid.x + wid.y·nwg.x from gpu.grid(ceil(R / BR)); the early return depends only on the
// workgroup, so every barrier is reached by the whole workgroup.
//
// Each tile of BC members m0..m0+BC: invocation c computes the BR logits z[i, c] = u_i·D_{m0+c}/τ,
// with u staged through workgroup memory BC columns at a time (D read from storage, one row
// per invocation); the tile's z goes to workgroup memory.
// Forward: online softmax per row (invocation i < BR keeps row i's running max μ_i and sum
// ℓ_i): μ' = max(μ, max_c z), α = exp(μ − μ'), P = exp(z − μ'), ℓ' = α ℓ + Σ_c P; then each
// invocation owns output columns k ≡ lid (mod BC) and updates o[i, k] = α_i o[i, k] +
// Σ_c P[i, c] Y[m0 + c, k] in place in `out` (each workgroup owns its rows: no atomics).
// At the end p = o / ℓ and lse_i = μ_i + log ℓ_i.
// Backward (derivation in soft_assign.wgsl, `soft_assign_backward`): with a = exp(z − lse),
// g_m = Σ_k dp_k Y[m, k] and ḡ = Σ_m a_m g_m = Σ_k dp_k p_k (since p = a·Y),
//   dlogits_m = (1/τ)·a_m·(g_m − ḡ),   du = Σ_m dlogits_m · D_m
// accumulated tile by tile in `out`, each workgroup its own rows: no atomics, deterministic.
//
// Guards: rows ≥ R read row R − 1 (clamped) and are never written; members ≥ M read member
// M − 1 and get P = 0 (forward) or dlogits = 0 (backward); u columns ≥ W are staged as 0.
// Every storage index is clamped or guarded, so the module is trusted (no naga checks).

struct Params {
    R: u32,
    M: u32,
    K: u32,
    W: u32,
    inv_tau: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> d: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read> dp: array<f32>;
@group(0) @binding(5) var<storage, read> p_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

const BR: u32 = 8u;
const BC: u32 = 64u;

var<workgroup> ub: array<f32, 512>; // BR × BC: a slice of the block's u rows
var<workgroup> zt: array<f32, 512>; // BR × BC: the tile's z, then P (forward) or dlogits
var<workgroup> row_a: array<f32, BR>; // forward: α of the tile; backward: ḡ
var<workgroup> row_b: array<f32, BR>; // forward: μ; backward: lse
var<workgroup> row_l: array<f32, BR>; // forward: ℓ

// z[i] = u_{r0+i}·D_m / τ for the BR rows of the block (m already clamped below M).
fn tile_logits(li: u32, r0: u32, m: u32) -> array<f32, BR> {
    var acc: array<f32, BR>;
    for (var w0 = 0u; w0 < p.W; w0 += BC) {
        for (var i = 0u; i < BR; i++) {
            let w = w0 + li;
            var v = 0.0;
            if (w < p.W) {
                v = u[min(r0 + i, p.R - 1u) * p.W + w];
            }
            ub[i * BC + li] = v;
        }
        workgroupBarrier();
        let wn = min(BC, p.W - w0);
        for (var w = 0u; w < wn; w++) {
            let dv = d[m * p.W + w0 + w];
            for (var i = 0u; i < BR; i++) {
                acc[i] += ub[i * BC + w] * dv;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < BR; i++) {
        acc[i] *= p.inv_tau;
    }
    return acc;
}

@compute @workgroup_size(BC)
fn soft_assign_flash_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r0 = (wid.x + wid.y * nwg.x) * BR;
    if (r0 >= p.R) { return; }
    let rows = min(BR, p.R - r0);
    if (li < BR) {
        row_b[li] = -3.0e38; // μ: below any finite z, and exp(μ − μ') is 0, never NaN
        row_l[li] = 0.0;
    }
    for (var m0 = 0u; m0 < p.M; m0 += BC) {
        let cn = min(BC, p.M - m0);
        let z = tile_logits(li, r0, min(m0 + li, p.M - 1u));
        for (var i = 0u; i < BR; i++) {
            zt[i * BC + li] = z[i];
        }
        workgroupBarrier();
        if (li < BR) {
            var mx = zt[li * BC];
            for (var c = 1u; c < cn; c++) {
                mx = max(mx, zt[li * BC + c]);
            }
            let mu = max(row_b[li], mx);
            let alpha = exp(row_b[li] - mu);
            var s = 0.0;
            for (var c = 0u; c < cn; c++) {
                let e = exp(zt[li * BC + c] - mu);
                zt[li * BC + c] = e;
                s += e;
            }
            row_a[li] = alpha;
            row_b[li] = mu;
            row_l[li] = row_l[li] * alpha + s;
        }
        workgroupBarrier();
        for (var k = li; k < p.K; k += BC) {
            for (var i = 0u; i < rows; i++) {
                let o = (r0 + i) * p.K + k;
                var acc = 0.0;
                if (m0 > 0u) {
                    acc = out[o] * row_a[i];
                }
                for (var c = 0u; c < cn; c++) {
                    acc += zt[i * BC + c] * y[(m0 + c) * p.K + k];
                }
                out[o] = acc;
            }
        }
        workgroupBarrier();
    }
    for (var k = li; k < p.K; k += BC) {
        for (var i = 0u; i < rows; i++) {
            let o = (r0 + i) * p.K + k;
            out[o] = out[o] / row_l[i];
        }
    }
    if (li < rows) {
        lse[r0 + li] = row_b[li] + log(row_l[li]);
    }
}

@compute @workgroup_size(BC)
fn soft_assign_flash_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r0 = (wid.x + wid.y * nwg.x) * BR;
    if (r0 >= p.R) { return; }
    let rows = min(BR, p.R - r0);
    if (li < BR) {
        let r = min(r0 + li, p.R - 1u);
        var g_bar = 0.0;
        for (var k = 0u; k < p.K; k++) {
            g_bar += dp[r * p.K + k] * p_in[r * p.K + k];
        }
        row_a[li] = g_bar;
        row_b[li] = lse[r];
    }
    workgroupBarrier();
    for (var m0 = 0u; m0 < p.M; m0 += BC) {
        let cn = min(BC, p.M - m0);
        let m = min(m0 + li, p.M - 1u);
        let z = tile_logits(li, r0, m);
        var g: array<f32, BR>;
        for (var k = 0u; k < p.K; k++) {
            let yv = y[m * p.K + k];
            for (var i = 0u; i < BR; i++) {
                g[i] += dp[min(r0 + i, p.R - 1u) * p.K + k] * yv;
            }
        }
        for (var i = 0u; i < BR; i++) {
            var dl = 0.0;
            if (m0 + li < p.M) {
                dl = p.inv_tau * exp(z[i] - row_b[i]) * (g[i] - row_a[i]);
            }
            zt[i * BC + li] = dl;
        }
        workgroupBarrier();
        for (var w = li; w < p.W; w += BC) {
            for (var i = 0u; i < rows; i++) {
                let o = (r0 + i) * p.W + w;
                var acc = 0.0;
                if (m0 > 0u) {
                    acc = out[o];
                }
                for (var c = 0u; c < cn; c++) {
                    acc += zt[i * BC + c] * d[(m0 + c) * p.W + w];
                }
                out[o] = acc;
            }
        }
        workgroupBarrier();
    }
}
