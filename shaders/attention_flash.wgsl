// attention_flash.wgsl: FlashAttention-2 style tiled attention for GPUs, forward and an
// atomics-free backward (a dQ pass, then a dK/dV pass). Same layout, Params, bindings,
// math and results (up to rounding) as the fused kernels in attention.wgsl (see its header
// for the derivation of the backward); Params, bindings, row_of and bh_of come from
// attention_common.wgsl, prepended at compile time.
//
// Dispatch as attention.wgsl: workgroups (ceil(T / WG), grid of B·H), one invocation per row
// t (a query row in the forward and the dQ pass, a key row in the dK/dV pass) of the head
// bh of its workgroup. A workgroup holds a block of WG rows of one head; the rows it loops
// over (keys and values, or queries with their dO, lse and D) go through workgroup memory
// BK rows at a time: each tile is loaded once per workgroup, cooperatively (consecutive
// invocations read consecutive channels: coalesced), and read by all WG invocations from
// workgroup memory (broadcast reads) instead of each invocation reading it from the cache.
// Forward: the FlashAttention-2 online softmax (running max m, sum l and unnormalised
// accumulator, rescaled only when m grows, normalised once at the end; lse = m + log l
// saved for the backward). Backward: P is recomputed from lse; the dQ pass (per query row)
// also writes D_i = dO_i·O_i, which the dK/dV pass (per key row) reads; every gradient
// element is written once by one invocation: no atomics, deterministic.
// Each invocation owns a whole row (Dh ≤ 64 values per operand in registers), so no
// cross-lane reduction is needed and none is used; splitting Dh across a subgroup (with
// subgroup reductions of the dot products) is the next step for GPUs, not taken here.
// Barriers: rows past T are clamped to T − 1 for every load and their results are not
// written, so all invocations of a workgroup reach every barrier (the loop bounds and the
// early return for bh ≥ B·H are workgroup-uniform).
// Bounds: every index is a clamped row (< T) of an in-range head, a channel d < Dh ≤ MAX_DH
// (Dh = D / H ≤ 64 is checked by the op) or a tile slot < BK·MAX_DH: the module is trusted.

override WG: u32 = 64u;
const BK: u32 = 16u;

// Dh = D / H (= the override DH), as a runtime value: loops bounded by it are not unrolled.
// With DH as the bound, lavapipe's compiler took minutes per pipeline on these barrier-split
// kernels (Dh 32: over 2 minutes for the forward alone); GPU drivers unroll as they see fit.
fn head_width() -> u32 {
    return p.D / p.H;
}

var<workgroup> tile_a: array<f32, 1024>;  // BK × MAX_DH: k rows (forward, dQ) or q rows (dK/dV)
var<workgroup> tile_b: array<f32, 1024>;  // BK × MAX_DH: v rows (forward, dQ) or dO rows (dK/dV)
var<workgroup> tile_l: array<f32, BK>;    // dK/dV: lse of the tile's queries
var<workgroup> tile_d: array<f32, BK>;    // dK/dV: D of the tile's queries

// Load the BK key rows from row j0 on (clamped to T − 1) of the head whose token 0 has its k
// at qkv[k0]: k into tile_a, v (at + D) into tile_b. Invocation lid loads slots lid, lid + WG, …
fn load_kv_tiles(lid: u32, j0: u32, k0: u32) {
    let dh = head_width();
    let stride = 3u * p.D;
    for (var e = lid; e < BK * dh; e += WG) {
        let a = k0 + min(j0 + e / dh, p.T - 1u) * stride + e % dh;
        tile_a[e] = qkv[a];
        tile_b[e] = qkv[a + p.D];
    }
}

// The dK/dV pass's query tile from row i0 on: q (token 0's at qkv[q0]) into tile_a, dO
// (token 0's at dout[o0]) into tile_b, their lse and D into tile_l and tile_d.
fn load_query_tiles(lid: u32, i0: u32, q0: u32, o0: u32, r0: u32) {
    let dh = head_width();
    for (var e = lid; e < BK * dh; e += WG) {
        let i = min(i0 + e / dh, p.T - 1u);
        let d = e % dh;
        tile_a[e] = qkv[q0 + i * 3u * p.D + d];
        tile_b[e] = dout[o0 + i * p.D + d];
    }
    if (lid < BK) {
        let i = min(i0 + lid, p.T - 1u);
        tile_l[lid] = lse[r0 + i];
        tile_d[lid] = delta[r0 + i];
    }
}

@compute @workgroup_size(WG)
fn attention_flash_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if (bh >= p.BH) { return; }
    let dh = head_width();
    let t = wid.x * WG + lid.x;
    let row = row_of(bh, min(t, p.T - 1u));
    var q: array<f32, MAX_DH>;  // scale · q_t
    var acc: array<f32, MAX_DH>;
    for (var d = 0u; d < dh; d++) { q[d] = p.scale * qkv[row.q + d]; }
    var m = -1e30;  // finite sentinel: exp(m − s) underflows to 0 against the first real score
    var l = 0.0;
    for (var j0 = 0u; j0 < p.T; j0 += BK) {
        workgroupBarrier();  // the previous tile has been read by every invocation
        load_kv_tiles(lid.x, j0, row.k0);
        workgroupBarrier();
        let n = min(BK, p.T - j0);
        var s: array<f32, BK>;
        var bm = m;
        for (var jj = 0u; jj < n; jj++) {
            var a = 0.0;
            for (var d = 0u; d < dh; d++) { a += q[d] * tile_a[jj * dh + d]; }
            s[jj] = a;
            bm = max(bm, a);
        }
        if (bm > m) {
            let c = exp(m - bm);
            l *= c;
            for (var d = 0u; d < dh; d++) { acc[d] *= c; }
            m = bm;
        }
        for (var jj = 0u; jj < n; jj++) {
            let e = exp(s[jj] - m);
            l += e;
            for (var d = 0u; d < dh; d++) { acc[d] += e * tile_b[jj * dh + d]; }
        }
    }
    if (t < p.T) {
        let inv = 1.0 / l;
        for (var d = 0u; d < dh; d++) { out[row.o + d] = acc[d] * inv; }
        lse[bh * p.T + t] = m + log(l);
    }
}

// dQ_i = scale Σ_j P_ij (dO_i·v_j − D_i) k_j per query row i, which also writes D_i.
@compute @workgroup_size(WG)
fn attention_flash_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                               @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if (bh >= p.BH) { return; }
    let dh = head_width();
    let t = wid.x * WG + lid.x;
    let ti = min(t, p.T - 1u);
    let row = row_of(bh, ti);
    var q: array<f32, MAX_DH>;  // scale · q_i
    var g: array<f32, MAX_DH>;  // dO_i
    var dq: array<f32, MAX_DH>;
    var delta_i = 0.0;
    for (var d = 0u; d < dh; d++) {
        q[d] = p.scale * qkv[row.q + d];
        g[d] = dout[row.o + d];
        delta_i += g[d] * out[row.o + d];
    }
    if (t < p.T) { delta[bh * p.T + t] = delta_i; }
    let lse_i = lse[bh * p.T + ti];
    for (var j0 = 0u; j0 < p.T; j0 += BK) {
        workgroupBarrier();
        load_kv_tiles(lid.x, j0, row.k0);
        workgroupBarrier();
        let n = min(BK, p.T - j0);
        for (var jj = 0u; jj < n; jj++) {
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < dh; d++) {
                s += q[d] * tile_a[jj * dh + d];
                dp += g[d] * tile_b[jj * dh + d];
            }
            let ds = exp(s - lse_i) * (dp - delta_i);
            for (var d = 0u; d < dh; d++) { dq[d] += ds * tile_a[jj * dh + d]; }
        }
    }
    if (t < p.T) {
        for (var d = 0u; d < dh; d++) { dqkv[row.q + d] = p.scale * dq[d]; }
    }
}

// dK_j = scale Σ_i dS_ij q_i and dV_j = Σ_i P_ij dO_i per key row j (t names j here); the
// query tiles carry q, dO, lse and D (written by attention_flash_backward_dq).
@compute @workgroup_size(WG)
fn attention_flash_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if (bh >= p.BH) { return; }
    let dh = head_width();
    let t = wid.x * WG + lid.x;
    let row = row_of(bh, min(t, p.T - 1u));
    let kj = row.q + p.D;  // this key row's k in qkv; its v at + D
    var k: array<f32, MAX_DH>;  // scale · k_j
    var v: array<f32, MAX_DH>;
    var dk: array<f32, MAX_DH>;
    var dv: array<f32, MAX_DH>;
    for (var d = 0u; d < dh; d++) {
        k[d] = p.scale * qkv[kj + d];
        v[d] = qkv[kj + p.D + d];
    }
    let q0 = row.k0 - p.D;                         // token 0's q for this (b, h)
    let o0 = row.o - min(t, p.T - 1u) * p.D;       // token 0's dO for this (b, h)
    let r0 = bh * p.T;                             // token 0's lse / D index
    for (var i0 = 0u; i0 < p.T; i0 += BK) {
        workgroupBarrier();
        load_query_tiles(lid.x, i0, q0, o0, r0);
        workgroupBarrier();
        let n = min(BK, p.T - i0);
        for (var ii = 0u; ii < n; ii++) {
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < dh; d++) {
                s += tile_a[ii * dh + d] * k[d];
                dp += tile_b[ii * dh + d] * v[d];
            }
            let pr = exp(s - tile_l[ii]);
            let ds = pr * (dp - tile_d[ii]);
            for (var d = 0u; d < dh; d++) {
                dv[d] += pr * tile_b[ii * dh + d];
                dk[d] += ds * tile_a[ii * dh + d];
            }
        }
    }
    if (t < p.T) {
        for (var d = 0u; d < dh; d++) {
            dqkv[kj + d] = p.scale * dk[d];
            dqkv[kj + p.D + d] = dv[d];
        }
    }
}
