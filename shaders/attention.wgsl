// attention.wgsl: fused multi-head self-attention (no mask), forward and backward, without
// ever storing the T×T score matrix, without atomics and without barriers.
//
// Layout (timm / iBOT ViT): the qkv Linear's output (B, T, 3·D) is viewed as
// (B, T, 3, H, Dh), so for token t of image b and head h
//   q[b,h,t,d] = qkv[(b·T + t)·3D + 0·D + h·Dh + d],  k at + D,  v at + 2D,
// and the output (B, T, D) holds head h in channels h·Dh .. h·Dh + Dh - 1
// (timm's `x.transpose(1, 2).reshape(B, T, D)`). scale = Dh^-1/2.
//   s_ij = scale · q_i·k_j,  P_ij = softmax_j(s_ij),  O_i = Σ_j P_ij v_j,
//   lse_i = log Σ_j exp(s_ij)  (saved for the backward, which recomputes P_ij = exp(s_ij - lse_i)).
//
// Bindings (every entry point uses a subset; the Rust op passes them in this order):
//   0 p      uniform Params
//   1 qkv    read        (B, T, 3D)
//   2 out    read_write  (B, T, D) attention output (forward writes, backward reads);
//                        attention_cls_probs writes its (B, H, T) probabilities here
//   3 lse    read_write  (B, H, T) log-sum-exp per query row (forward writes, backward reads)
//   4 dout   read        (B, T, D)
//   5 delta  read_write  (B, H, T) D_i = dO_i·O_i (attention_backward_dq writes, dkv reads)
//   6 dqkv   read_write  (B, T, 3D)
// `out`, `lse` and `delta` are read_write because one kernel writes what another reads and a
// file has one declaration per binding; the Rust op binds them as writable in both.
//
// Dispatch: one invocation per row t (a query row, or a key row in attention_backward_dkv)
// of every head bh = b·H + h: workgroups (ceil(T / WG), grid of B·H) with bh from
// (wid.y, wid.z) and t = wid.x·WG + lid.x. So bh, and every address of the key/value (or
// query) rows an invocation loops over, is uniform across the workgroup (broadcast loads).
// attention_cls_probs: one invocation per bh, workgroups `gpu.grid(ceil(B·H / WG))`.
// DH (the head width, ≤ 64) is an override constant so every loop over d has a constant
// bound and the private arrays can live in registers.
// Blocking: the loop over the other rows (keys, or queries in attention_backward_dkv) takes
// KB = 8 rows at a time. The KB dot products of a block are independent chains (ILP), each
// private q/acc element is touched once per block instead of once per row, and the forward
// rescales its accumulator at most once per block. The last block's rows past T are clamped
// to T − 1 for the loads and get weight 0.
// Measured on lavapipe (Mesa 25, LP_NUM_THREADS=1, forward at B=8 T=197 H=6 Dh=64: ~0.8
// GFLOP/s): the time goes to the loops over d (per-lane loads and private-array accesses).
// KB = 8 was ~5% faster than one key at a time; vec4 loads ~25% faster (not taken: they need
// Dh % 4 == 0 and a vec4 view of qkv); 2 or 4 query rows per invocation no faster. On an
// H100 and an H200 (benches/RESULTS.md): 167 and 568 GFLOP/s forward at ViT-S shapes, a
// few percent of those cards' FP32 peak: attention_flash.wgsl is the tiled (FlashAttention-2)
// variant for GPUs, and src/ops/attention_unfused.rs the matmul-based one for CPU adapters.
// Numerics: f32 throughout; the online softmax rescales its running sum and accumulator only
// when the running max grows, so every exponent is ≤ 0 (no overflow). Sums run in a fixed
// order: deterministic.

// Params, bindings, row_of and bh_of come from attention_common.wgsl, prepended at compile time.

override WG: u32 = 64u;
const KB: u32 = 8u;

// Forward: flash-attention style online softmax over the keys of one query row.
// After a block of keys: m = max s so far, l = Σ exp(s − m), acc = Σ exp(s − m) v;
// at the end O = acc / l and lse = m + log l.
@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    let t = wid.x * WG + lid.x;
    if (bh >= p.BH || t >= p.T) { return; }
    let row = row_of(bh, t);
    let stride = 3u * p.D;
    var q: array<f32, MAX_DH>;  // scale · q_t
    var acc: array<f32, MAX_DH>;
    for (var d = 0u; d < DH; d++) { q[d] = p.scale * qkv[row.q + d]; }
    // Finite sentinel: exp(m − s) underflows to 0 against the first real score.
    var m = -1e30;
    var l = 0.0;
    for (var j0 = 0u; j0 < p.T; j0 += KB) {
        var k: array<u32, KB>;  // qkv offsets of this block's keys (v at + D)
        var s: array<f32, KB>;
        for (var jj = 0u; jj < KB; jj++) { k[jj] = row.k0 + min(j0 + jj, p.T - 1u) * stride; }
        for (var d = 0u; d < DH; d++) {
            let qd = q[d];
            for (var jj = 0u; jj < KB; jj++) { s[jj] += qd * qkv[k[jj] + d]; }
        }
        var bm = m;
        for (var jj = 0u; jj < KB; jj++) {
            if (j0 + jj < p.T) { bm = max(bm, s[jj]); }
        }
        if (bm > m) {
            let c = exp(m - bm);
            l *= c;
            for (var d = 0u; d < DH; d++) { acc[d] *= c; }
            m = bm;
        }
        var e: array<f32, KB>;
        for (var jj = 0u; jj < KB; jj++) {
            e[jj] = select(0.0, exp(s[jj] - m), j0 + jj < p.T);
            l += e[jj];
        }
        for (var d = 0u; d < DH; d++) {
            var a = acc[d];
            for (var jj = 0u; jj < KB; jj++) { a += e[jj] * qkv[k[jj] + p.D + d]; }
            acc[d] = a;
        }
    }
    let inv = 1.0 / l;
    for (var d = 0u; d < DH; d++) { out[row.o + d] = acc[d] * inv; }
    lse[bh * p.T + t] = m + log(l);
}

// Backward (derivation). With s_ij = scale·q_i·k_j, P = softmax_j(s), O_i = Σ_j P_ij v_j and
// upstream dO:
//   dV_j  = Σ_i P_ij dO_i                        (O is linear in V)
//   dP_ij = dO_i·v_j
//   dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik)        (softmax Jacobian: diag(P) − P Pᵀ)
//         = P_ij (dP_ij − D_i),  D_i = Σ_k P_ik dO_i·v_k = dO_i·O_i
//   dQ_i  = scale Σ_j dS_ij k_j,  dK_j = scale Σ_i dS_ij q_i
// P_ij is recomputed as exp(s_ij − lse_i) from the saved lse, so nothing T×T is stored.
// Two kernels: D_i and dQ per query row (attention_backward_dq, loops over keys), then dK
// and dV per key row (attention_backward_dkv, loops over queries). Each element of dqkv is
// written (overwritten, not accumulated) once.

// dQ_i = scale Σ_j P_ij (dO_i·v_j − D_i) k_j, one invocation per query row i, which also
// computes and writes its D_i.
@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    let t = wid.x * WG + lid.x;
    if (bh >= p.BH || t >= p.T) { return; }
    let row = row_of(bh, t);
    let stride = 3u * p.D;
    var q: array<f32, MAX_DH>;  // scale · q_i
    var g: array<f32, MAX_DH>;  // dO_i
    var dq: array<f32, MAX_DH>;
    for (var d = 0u; d < DH; d++) {
        q[d] = p.scale * qkv[row.q + d];
        g[d] = dout[row.o + d];
    }
    let lse_i = lse[bh * p.T + t];
    // D_i = dO_i·O_i, written for attention_backward_dkv (which runs after this kernel).
    var delta_i = 0.0;
    for (var d = 0u; d < DH; d++) { delta_i += dout[row.o + d] * out[row.o + d]; }
    delta[bh * p.T + t] = delta_i;
    for (var j0 = 0u; j0 < p.T; j0 += KB) {
        var k: array<u32, KB>;  // qkv offsets of this block's keys (v at + D)
        var s: array<f32, KB>;
        var dp: array<f32, KB>;
        for (var jj = 0u; jj < KB; jj++) { k[jj] = row.k0 + min(j0 + jj, p.T - 1u) * stride; }
        for (var d = 0u; d < DH; d++) {
            let qd = q[d];
            let gd = g[d];
            for (var jj = 0u; jj < KB; jj++) {
                s[jj] += qd * qkv[k[jj] + d];
                dp[jj] += gd * qkv[k[jj] + p.D + d];
            }
        }
        var ds: array<f32, KB>;
        for (var jj = 0u; jj < KB; jj++) {
            ds[jj] = select(0.0, exp(s[jj] - lse_i) * (dp[jj] - delta_i), j0 + jj < p.T);
        }
        for (var d = 0u; d < DH; d++) {
            var a = dq[d];
            for (var jj = 0u; jj < KB; jj++) { a += ds[jj] * qkv[k[jj] + d]; }
            dq[d] = a;
        }
    }
    for (var d = 0u; d < DH; d++) { dqkv[row.q + d] = p.scale * dq[d]; }
}

// dK_j = scale Σ_i dS_ij q_i and dV_j = Σ_i P_ij dO_i, one invocation per key row j
// (t names the key row j here).
@compute @workgroup_size(WG)
fn attention_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    let t = wid.x * WG + lid.x;
    if (bh >= p.BH || t >= p.T) { return; }
    let row = row_of(bh, t);
    let stride = 3u * p.D;
    let kj = row.q + p.D;  // this key row's k in qkv; its v at + D
    var k: array<f32, MAX_DH>;  // scale · k_j
    var v: array<f32, MAX_DH>;
    var dk: array<f32, MAX_DH>;
    var dv: array<f32, MAX_DH>;
    for (var d = 0u; d < DH; d++) {
        k[d] = p.scale * qkv[kj + d];
        v[d] = qkv[kj + p.D + d];
    }
    let q0 = row.k0 - p.D;     // token 0's q for this (b, h)
    let o0 = row.o - t * p.D;  // token 0's dO for this (b, h)
    let r0 = bh * p.T;         // token 0's lse / delta index
    for (var i0 = 0u; i0 < p.T; i0 += KB) {
        var qi: array<u32, KB>;  // qkv offsets of this block's queries
        var oi: array<u32, KB>;  // their dout offsets
        var ri: array<u32, KB>;  // their lse / delta indices
        var s: array<f32, KB>;
        var dp: array<f32, KB>;
        for (var ii = 0u; ii < KB; ii++) {
            let i = min(i0 + ii, p.T - 1u);
            qi[ii] = q0 + i * stride;
            oi[ii] = o0 + i * p.D;
            ri[ii] = r0 + i;
        }
        for (var d = 0u; d < DH; d++) {
            let kd = k[d];
            let vd = v[d];
            for (var ii = 0u; ii < KB; ii++) {
                s[ii] += qkv[qi[ii] + d] * kd;
                dp[ii] += dout[oi[ii] + d] * vd;
            }
        }
        var pr: array<f32, KB>;  // P_ij
        var ds: array<f32, KB>;
        for (var ii = 0u; ii < KB; ii++) {
            pr[ii] = select(0.0, exp(s[ii] - lse[ri[ii]]), i0 + ii < p.T);
            ds[ii] = pr[ii] * (dp[ii] - delta[ri[ii]]);
        }
        for (var d = 0u; d < DH; d++) {
            var a = dv[d];
            var b = dk[d];
            for (var ii = 0u; ii < KB; ii++) {
                a += pr[ii] * dout[oi[ii] + d];
                b += ds[ii] * qkv[qi[ii] + d];
            }
            dv[d] = a;
            dk[d] = b;
        }
    }
    for (var d = 0u; d < DH; d++) {
        dqkv[kj + d] = p.scale * dk[d];
        dqkv[kj + p.D + d] = dv[d];
    }
}

// The softmax row of query 0 ([CLS]) for every (b, h): out[(b·H + h)·T + j] = P_0j.
// One invocation per bh = b·H + h: a first pass finds the max and the sum, a second
// writes the normalised probabilities.
@compute @workgroup_size(WG)
fn attention_cls_probs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (bh >= p.BH) { return; }
    let row = row_of(bh, 0u);
    let stride = 3u * p.D;
    var q: array<f32, MAX_DH>;
    var s = 0.0;
    for (var d = 0u; d < DH; d++) {
        q[d] = p.scale * qkv[row.q + d];
        s += q[d] * qkv[row.k0 + d];
    }
    var m = s;
    var l = 1.0;
    for (var j = 1u; j < p.T; j++) {
        let k = row.k0 + j * stride;
        s = 0.0;
        for (var d = 0u; d < DH; d++) { s += q[d] * qkv[k + d]; }
        if (s > m) {
            l *= exp(m - s);
            m = s;
        }
        l += exp(s - m);
    }
    let inv = 1.0 / l;
    for (var j = 0u; j < p.T; j++) {
        let k = row.k0 + j * stride;
        s = 0.0;
        for (var d = 0u; d < DH; d++) { s += q[d] * qkv[k + d]; }
        out[bh * p.T + j] = exp(s - m) * inv;
    }
}
