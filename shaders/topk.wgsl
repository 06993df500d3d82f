// topk.wgsl: per row of x (R, C), the k largest values (1 <= k <= 16, k <= C) and their
// column indices, sorted descending, ties broken by the LOWER index. SOP uses it to find
// each anchor's nearest bank vectors (its support embeddings) in a (P, N - P) similarity
// matrix.
//
// Bindings: 0 params (uniform), 1 x (read, (R, C)), 2 cand_v (read_write, (R, L, k)),
// 3 cand_i (read_write, (R, L, k) u32), 4 values (read_write, (R, k)),
// 5 indices (read_write, (R, k) u32).
//
// Two barrier-free passes (the Rust op picks L, the lanes per row, ~256 columns each):
//   topk_forward_candidates  one invocation per (row, lane); lane l scans the columns
//       l, l + L, l + 2L, ... (neighbouring invocations read neighbouring addresses) and keeps
//       a sorted private top-k, then writes its k candidates; slots it could not fill (a lane
//       with fewer than k columns) get index NONE. Dispatch gpu.grid(ceil(R·L / WG)).
//   topk_forward  one invocation per row merges its L·k candidates into the final top-k.
//       Dispatch gpu.grid(ceil(R / WG)).
//
// Order: a comes before b when a.v > b.v, or a.v == b.v and a.i < b.i (`before`). A lane
// sees its columns in increasing order, so a new column enters a full list only when it is
// strictly greater than the current k-th value. Each lane's list is sorted in that order, so
// the merge leaves a lane at its first candidate that does not enter.
// Numerics: values are copied, never computed: the output is exact.
// NaN: needs no special handling but is unspecified. Every comparison with NaN is false, so
// a NaN enters a list only while it is not yet full and then sits where it landed; rows
// holding NaN get some valid column indices (always in 0..C, never NONE) in an unspecified
// order. -inf and +inf are ordinary values.

struct Params {
    R: u32,
    C: u32,
    k: u32,
    lanes: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cand_v: array<f32>;
@group(0) @binding(3) var<storage, read_write> cand_i: array<u32>;
@group(0) @binding(4) var<storage, read_write> values: array<f32>;
@group(0) @binding(5) var<storage, read_write> indices: array<u32>;

override WG: u32 = 64u;

const KMAX: u32 = 16u;
const NONE: u32 = 0xffffffffu;

fn before(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
    return av > bv || (av == bv && ai < bi);
}

@compute @workgroup_size(WG)
fn topk_forward_candidates(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.R * p.lanes) { return; }
    let row = t / p.lanes;
    let lane = t % p.lanes;
    let k = p.k;
    var vals: array<f32, KMAX>;
    var idx: array<u32, KMAX>;
    var n = 0u;
    var kth = 0.0; // vals[k - 1] once n == k
    let base = row * p.C;
    for (var j = lane; j < p.C; j += p.lanes) {
        let v = x[base + j];
        if (n == k && !(v > kth)) { continue; }
        // Insert at the first slot whose value is < v (later columns lose ties).
        var pos = min(n, k - 1u);
        loop {
            if (pos == 0u || !(v > vals[pos - 1u])) { break; }
            vals[pos] = vals[pos - 1u];
            idx[pos] = idx[pos - 1u];
            pos -= 1u;
        }
        vals[pos] = v;
        idx[pos] = j;
        n = min(n + 1u, k);
        kth = vals[k - 1u];
    }
    let out = t * k;
    for (var s = 0u; s < k; s++) {
        if (s < n) {
            cand_v[out + s] = vals[s];
            cand_i[out + s] = idx[s];
        } else {
            cand_v[out + s] = 0.0;
            cand_i[out + s] = NONE;
        }
    }
}

@compute @workgroup_size(WG)
fn topk_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = (wid.x + wid.y * nwg.x) * WG + li;
    if (row >= p.R) { return; }
    let k = p.k;
    var vals: array<f32, KMAX>;
    var idx: array<u32, KMAX>;
    var n = 0u;
    for (var lane = 0u; lane < p.lanes; lane++) {
        let base = (row * p.lanes + lane) * k;
        for (var s = 0u; s < k; s++) {
            let i = cand_i[base + s];
            if (i == NONE) { break; } // the rest of this lane is unfilled too
            let v = cand_v[base + s];
            if (n == k && !before(v, i, vals[k - 1u], idx[k - 1u])) { break; }
            var pos = min(n, k - 1u);
            loop {
                if (pos == 0u || !before(v, i, vals[pos - 1u], idx[pos - 1u])) { break; }
                vals[pos] = vals[pos - 1u];
                idx[pos] = idx[pos - 1u];
                pos -= 1u;
            }
            vals[pos] = v;
            idx[pos] = i;
            n = min(n + 1u, k);
        }
    }
    // n == k here because C >= k and every column reached some lane's list (or lost to k
    // better ones); the host checks C >= k.
    for (var s = 0u; s < k; s++) {
        values[row * k + s] = vals[s];
        indices[row * k + s] = idx[s];
    }
}
