// attention_subgroup.wgsl: attention for short sequences (T ≤ 64, e.g. the default model's
// T = 17) built like matmul_subgroup.wgsl: groups of 8 lanes, each lane loads its own
// values and the group shares them by subgroup shuffles; no workgroup memory, no barriers,
// the whole score row of a query lives in the group's registers (no online softmax).
// Math, layout, bindings and Params: attention.wgsl's header (attention_common.wgsl is
// prepended at compile time). A separate module because subgroup operations do not
// validate on a device without them (src/ops/attention.rs checks `gpu.subgroups`: subgroups
// of at least 8 lanes, queried from the adapter).
//
// Work split: a workgroup is one group of 8 invocations (on a CPU adapter one SIMD vector;
// the same lane assumption as matmul_subgroup.wgsl: lane = subgroup_invocation_id % 8).
// Workgroup gid (gpu.grid(B·H·NB)) takes head bh = gid / NB and the block of RB rows
// r0 = RB·(gid % NB) .. r0 + RB − 1 (query rows, or key rows in
// attention_subgroup_backward_dkv); src/ops/attention.rs (`row_blocks`) splits the head's T
// rows into as few even blocks as keep RB·TC ≤ 64 (forward: 32) score accumulators per lane
// (8 ≤ RB ≤ 24; T = 17: the backward one block of 17 rows, the forward two of 9). Lane l owns
//   - the block's rows r0 + l + 8m, m < RM = ceil(RB / 8), for the loads that are shared by
//     shuffles,
//   - the columns c·8 + l, c < TC = ceil(T / 8), of the block's RB score rows (s[r][c]),
//   - the head channels l + 8e, e < EC = ceil(DH / 8), of the block's RB output rows.
// Per channel d of a score product: RM (or 2·RM) loads of the lane's rows, TC (or 2·TC)
// loads of its columns, RB (or 2·RB) shuffles, RB·TC (or 2·RB·TC) FMAs. Per column j of the
// product with V (or dO, K, Q): EC (or 2·EC) loads, RB (or 2·RB) shuffles, RB·EC (or
// 2·RB·EC) FMAs. On lavapipe the loads are what costs (a storage load is a gather; a
// shuffle a register permute): one block of 17 rows loads a head's Q and K once per d where
// three blocks of 8 loaded K three times, and computes 17 rows instead of 24.
// Rows and columns past T (and channels past DH) are clamped to the last one for the loads,
// get weight 0 in the softmax sums and are never stored (the products with V, dO, K, Q stop
// at column T − 1: a uniform branch); workgroups past the last head are clamped to it and
// store nothing. Every control-flow decision before a shuffle is uniform
// over the dispatch (loop bounds are override constants), so every lane of a group takes
// part in every shuffle.
// Numerics: f32; row max subtracted before exp (every exponent ≤ 0); sums in a fixed order
// (per lane in column order, then an xor butterfly over the 8 lanes): deterministic.

override WG: u32 = 8u;  // one group of 8 lanes per workgroup (never overridden)
override TC: u32 = 3u;  // ceil(T / 8): column blocks of a score row
override EC: u32 = 4u;  // ceil(DH / 8): channels per lane
override RB: u32 = 17u; // rows per block (≤ MAX_RB), the head's T rows split evenly
override RM: u32 = 3u;  // ceil(RB / 8): rows each lane loads (rows r0 + l + 8m, m < RM)
override NB: u32 = 1u;  // row blocks per head: ceil(T / RB)
const MAX_TC: u32 = 8u; // T ≤ 64
const MAX_EC: u32 = 8u; // DH ≤ 64
const MAX_RB: u32 = 24u;
const MAX_RM: u32 = 3u;

// Where a group works: its head's token-0 index b·T, channel offset h·DH and bh, the first
// row of its block, and whether it is a real group (false for the padding past B·H·NB).
struct Group { tok0: u32, head: u32, bh: u32, r0: u32, live: bool }

fn group_of(wid: vec3<u32>, nwg: vec3<u32>) -> Group {
    let gid = wid.x + wid.y * nwg.x;
    let live = gid < p.BH * NB;
    let g = min(gid, p.BH * NB - 1u);
    let bh = g / NB;
    return Group((bh / p.H) * p.T, (bh % p.H) * DH, bh, (g % NB) * RB, live);
}

// Whether row r0 + r of the block is a row of the head this lane loads (r = 8m + lane, m < RM).
fn own_row(gr: Group, lane: u32, m: u32) -> bool {
    return 8u * m + lane < RB && gr.r0 + 8u * m + lane < p.T;
}

// qkv offset of token t's channel 0 of this head (q; k at + D, v at + 2D), t clamped to T − 1.
fn qkv_row(gr: Group, t: u32) -> u32 {
    return (gr.tok0 + min(t, p.T - 1u)) * 3u * p.D + gr.head;
}

// out / dout offset of token t's channel 0 of this head, t clamped to T − 1.
fn o_row(gr: Group, t: u32) -> u32 {
    return (gr.tok0 + min(t, p.T - 1u)) * p.D + gr.head;
}

// Lane l's channel l + 8e, clamped to DH − 1 for loads.
fn chan(lane: u32, e: u32) -> u32 {
    return min(lane + 8u * e, DH - 1u);
}

// Sum and max over the 8 lanes of a group (xor butterfly; every lane gets the result).
fn group_sum(x: f32) -> f32 {
    var s = x + subgroupShuffleXor(x, 4u);
    s += subgroupShuffleXor(s, 2u);
    return s + subgroupShuffleXor(s, 1u);
}

fn group_max(x: f32) -> f32 {
    var m = max(x, subgroupShuffleXor(x, 4u));
    m = max(m, subgroupShuffleXor(m, 2u));
    return max(m, subgroupShuffleXor(m, 1u));
}

// Forward: s[r][c] = scale·q_{r0+r}·k_{8c+l}; P = softmax over the row's T columns (max and
// sum by butterfly); O_{r0+r} channel l+8e = Σ_j P_rj v_j; lse_r = m_r + log l_r.
@compute @workgroup_size(WG)
fn attention_subgroup_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(subgroup_invocation_id) sid: u32) {
    let gr = group_of(wid, nwg);
    let lane = sid % 8u;
    let base = sid - lane;
    var qi: array<u32, MAX_RM>;
    for (var m = 0u; m < RM; m++) { qi[m] = qkv_row(gr, gr.r0 + 8u * m + lane); }
    var kj: array<u32, MAX_TC>;
    for (var c = 0u; c < TC; c++) { kj[c] = qkv_row(gr, 8u * c + lane) + p.D; }
    var s: array<array<f32, MAX_TC>, MAX_RB>;
    for (var d = 0u; d < DH; d++) {
        var qd: array<f32, MAX_RM>;
        for (var m = 0u; m < RM; m++) { qd[m] = p.scale * qkv[qi[m] + d]; }
        var kd: array<f32, MAX_TC>;
        for (var c = 0u; c < TC; c++) { kd[c] = qkv[kj[c] + d]; }
        for (var r = 0u; r < RB; r++) {
            let qr = subgroupShuffle(qd[r / 8u], base + r % 8u);
            for (var c = 0u; c < TC; c++) { s[r][c] += qr * kd[c]; }
        }
    }
    var my_lse: array<f32, MAX_RM>;  // lse of row r0 + 8m + lane
    for (var r = 0u; r < RB; r++) {
        var mx = -1e30;  // finite sentinel; column 0 is always real (T ≥ 1)
        for (var c = 0u; c < TC; c++) {
            if (8u * c + lane < p.T) { mx = max(mx, s[r][c]); }
        }
        mx = group_max(mx);
        var l = 0.0;
        for (var c = 0u; c < TC; c++) {
            s[r][c] = select(0.0, exp(s[r][c] - mx), 8u * c + lane < p.T);
            l += s[r][c];
        }
        l = group_sum(l);
        let inv = 1.0 / l;
        for (var c = 0u; c < TC; c++) { s[r][c] *= inv; }  // now P
        if (r % 8u == lane) { my_lse[r / 8u] = mx + log(l); }
    }
    var o: array<array<f32, MAX_EC>, MAX_RB>;
    for (var c = 0u; c < TC; c++) {
        for (var src = 0u; src < 8u; src++) {
            if (8u * c + src >= p.T) { break; }  // uniform: columns past T have weight 0
            let vj = qkv_row(gr, 8u * c + src) + 2u * p.D;
            var vv: array<f32, MAX_EC>;
            for (var e = 0u; e < EC; e++) { vv[e] = qkv[vj + chan(lane, e)]; }
            for (var r = 0u; r < RB; r++) {
                let pr = subgroupShuffle(s[r][c], base + src);
                for (var e = 0u; e < EC; e++) { o[r][e] += pr * vv[e]; }
            }
        }
    }
    if (!gr.live) { return; }
    for (var r = 0u; r < RB; r++) {
        if (gr.r0 + r >= p.T) { break; }
        let orow = o_row(gr, gr.r0 + r);
        for (var e = 0u; e < EC; e++) {
            if (lane + 8u * e < DH) { out[orow + lane + 8u * e] = o[r][e]; }
        }
    }
    for (var m = 0u; m < RM; m++) {
        if (own_row(gr, lane, m)) { lse[gr.bh * p.T + gr.r0 + 8u * m + lane] = my_lse[m]; }
    }
}

// Backward, dQ pass (derivation in attention.wgsl): rows are queries i, columns keys j.
// s_ij = scale·q_i·k_j and dP_ij = dO_i·v_j from one loop over d (which also gives lane l
// the D_i = dO_i·O_i of its rows), dS_ij = exp(s_ij − lse_i)(dP_ij − D_i),
// dQ_i = scale Σ_j dS_ij k_j. Writes D (for the dK/dV pass) and the q part of dqkv.
@compute @workgroup_size(WG)
fn attention_subgroup_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(subgroup_invocation_id) sid: u32) {
    let gr = group_of(wid, nwg);
    let lane = sid % 8u;
    let base = sid - lane;
    var qi: array<u32, MAX_RM>;
    var oi: array<u32, MAX_RM>;
    for (var m = 0u; m < RM; m++) {
        qi[m] = qkv_row(gr, gr.r0 + 8u * m + lane);
        oi[m] = o_row(gr, gr.r0 + 8u * m + lane);
    }
    var kj: array<u32, MAX_TC>;
    for (var c = 0u; c < TC; c++) { kj[c] = qkv_row(gr, 8u * c + lane) + p.D; }
    var s: array<array<f32, MAX_TC>, MAX_RB>;
    var dp: array<array<f32, MAX_TC>, MAX_RB>;
    var my_delta: array<f32, MAX_RM>;  // D of row r0 + 8m + lane
    for (var d = 0u; d < DH; d++) {
        var qd: array<f32, MAX_RM>;
        var gd: array<f32, MAX_RM>;
        for (var m = 0u; m < RM; m++) {
            qd[m] = p.scale * qkv[qi[m] + d];
            gd[m] = dout[oi[m] + d];
            my_delta[m] += gd[m] * out[oi[m] + d];
        }
        var kd: array<f32, MAX_TC>;
        var vd: array<f32, MAX_TC>;
        for (var c = 0u; c < TC; c++) {
            kd[c] = qkv[kj[c] + d];
            vd[c] = qkv[kj[c] + p.D + d];
        }
        for (var r = 0u; r < RB; r++) {
            let qr = subgroupShuffle(qd[r / 8u], base + r % 8u);
            let gr_ = subgroupShuffle(gd[r / 8u], base + r % 8u);
            for (var c = 0u; c < TC; c++) {
                s[r][c] += qr * kd[c];
                dp[r][c] += gr_ * vd[c];
            }
        }
    }
    var my_lse: array<f32, MAX_RM>;
    for (var m = 0u; m < RM; m++) { my_lse[m] = lse[gr.bh * p.T + min(gr.r0 + 8u * m + lane, p.T - 1u)]; }
    for (var r = 0u; r < RB; r++) {
        let lse_r = subgroupShuffle(my_lse[r / 8u], base + r % 8u);
        let delta_r = subgroupShuffle(my_delta[r / 8u], base + r % 8u);
        for (var c = 0u; c < TC; c++) {
            s[r][c] = select(0.0, exp(s[r][c] - lse_r) * (dp[r][c] - delta_r), 8u * c + lane < p.T);  // dS
        }
    }
    var dq: array<array<f32, MAX_EC>, MAX_RB>;
    for (var c = 0u; c < TC; c++) {
        for (var src = 0u; src < 8u; src++) {
            if (8u * c + src >= p.T) { break; }
            let kk = qkv_row(gr, 8u * c + src) + p.D;
            var kv: array<f32, MAX_EC>;
            for (var e = 0u; e < EC; e++) { kv[e] = qkv[kk + chan(lane, e)]; }
            for (var r = 0u; r < RB; r++) {
                let ds = subgroupShuffle(s[r][c], base + src);
                for (var e = 0u; e < EC; e++) { dq[r][e] += ds * kv[e]; }
            }
        }
    }
    if (!gr.live) { return; }
    for (var r = 0u; r < RB; r++) {
        if (gr.r0 + r >= p.T) { break; }
        let qrow = qkv_row(gr, gr.r0 + r);
        for (var e = 0u; e < EC; e++) {
            if (lane + 8u * e < DH) { dqkv[qrow + lane + 8u * e] = p.scale * dq[r][e]; }
        }
    }
    for (var m = 0u; m < RM; m++) {
        if (own_row(gr, lane, m)) { delta[gr.bh * p.T + gr.r0 + 8u * m + lane] = my_delta[m]; }
    }
}

// Backward, dK/dV pass: rows are keys j, columns queries i. s_ji = scale·k_j·q_i and
// dP_ji = v_j·dO_i, P = exp(s − lse_i), dS = P (dP − D_i) (lse and D of column i loaded per
// lane), dV_j = Σ_i P dO_i and dK_j = scale Σ_i dS q_i. Writes the k and v parts of dqkv.
@compute @workgroup_size(WG)
fn attention_subgroup_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                   @builtin(subgroup_invocation_id) sid: u32) {
    let gr = group_of(wid, nwg);
    let lane = sid % 8u;
    let base = sid - lane;
    var kr: array<u32, MAX_RM>;
    for (var m = 0u; m < RM; m++) { kr[m] = qkv_row(gr, gr.r0 + 8u * m + lane) + p.D; }
    var qi: array<u32, MAX_TC>;
    var oi: array<u32, MAX_TC>;
    for (var c = 0u; c < TC; c++) {
        qi[c] = qkv_row(gr, 8u * c + lane);
        oi[c] = o_row(gr, 8u * c + lane);
    }
    var s: array<array<f32, MAX_TC>, MAX_RB>;
    var dp: array<array<f32, MAX_TC>, MAX_RB>;
    for (var d = 0u; d < DH; d++) {
        var kd: array<f32, MAX_RM>;
        var vd: array<f32, MAX_RM>;
        for (var m = 0u; m < RM; m++) {
            kd[m] = p.scale * qkv[kr[m] + d];
            vd[m] = qkv[kr[m] + p.D + d];
        }
        var qd: array<f32, MAX_TC>;
        var gd: array<f32, MAX_TC>;
        for (var c = 0u; c < TC; c++) {
            qd[c] = qkv[qi[c] + d];
            gd[c] = dout[oi[c] + d];
        }
        for (var r = 0u; r < RB; r++) {
            let kr_ = subgroupShuffle(kd[r / 8u], base + r % 8u);
            let vr = subgroupShuffle(vd[r / 8u], base + r % 8u);
            for (var c = 0u; c < TC; c++) {
                s[r][c] += kr_ * qd[c];
                dp[r][c] += vr * gd[c];
            }
        }
    }
    for (var c = 0u; c < TC; c++) {
        let i = min(8u * c + lane, p.T - 1u);
        let lse_i = lse[gr.bh * p.T + i];
        let delta_i = delta[gr.bh * p.T + i];
        let real = 8u * c + lane < p.T;
        for (var r = 0u; r < RB; r++) {
            let pr = select(0.0, exp(s[r][c] - lse_i), real);
            s[r][c] = pr;                           // P
            dp[r][c] = pr * (dp[r][c] - delta_i);   // dS
        }
    }
    var dk: array<array<f32, MAX_EC>, MAX_RB>;
    var dv: array<array<f32, MAX_EC>, MAX_RB>;
    for (var c = 0u; c < TC; c++) {
        for (var src = 0u; src < 8u; src++) {
            if (8u * c + src >= p.T) { break; }
            let qq = qkv_row(gr, 8u * c + src);
            let oo = o_row(gr, 8u * c + src);
            var qv: array<f32, MAX_EC>;
            var gv: array<f32, MAX_EC>;
            for (var e = 0u; e < EC; e++) {
                qv[e] = qkv[qq + chan(lane, e)];
                gv[e] = dout[oo + chan(lane, e)];
            }
            for (var r = 0u; r < RB; r++) {
                let pr = subgroupShuffle(s[r][c], base + src);
                let ds = subgroupShuffle(dp[r][c], base + src);
                for (var e = 0u; e < EC; e++) {
                    dv[r][e] += pr * gv[e];
                    dk[r][e] += ds * qv[e];
                }
            }
        }
    }
    if (!gr.live) { return; }
    for (var r = 0u; r < RB; r++) {
        if (gr.r0 + r >= p.T) { break; }
        let krow = qkv_row(gr, gr.r0 + r) + p.D;
        for (var e = 0u; e < EC; e++) {
            if (lane + 8u * e < DH) {
                dqkv[krow + lane + 8u * e] = p.scale * dk[r][e];
                dqkv[krow + p.D + lane + 8u * e] = dv[r][e];
            }
        }
    }
}
