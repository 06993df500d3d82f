// prototypes.wgsl: SOP's prototype members and vote matrix, built on the device from the
// task's permutation and the top-k of its similarities, so the host never waits for them
// (docs/METHOD.md "Building the prototypes", steps 3 and 5).
//   prototype_members  for kept anchor a = keep[p] (p < P'), the E member rows r = p·E + j:
//       rows[p·E]     = perm[a]                                  w[p·E]     = 1 − s
//       rows[p·E + j] = perm[P + idx[a·(E−1) + j − 1]]  (j ≥ 1)  w[p·E + j] = vals[a·(E−1) + j − 1]
//     (the anchor, then its E − 1 support embeddings, nearest first; idx holds positions in
//     the pool perm[P..]). With E = 1, rows[p] = perm[keep[p]] and w[p] = 1 − s.
//   prototype_votes    Y (M, P'), M = P'·E, p(r) = r / E the prototype of member r:
//       Y[r, q] = (q == p(r) ? w_r : (1 − w_r) / (P' − 1)) / (w_r + (1 − w_r))
//     label smoothing of each member's weight over the other prototypes; the divisor is the
//     row's sum, 1 up to rounding (kept so each row sums to 1 in the same way as before).
//
// Bindings: 0 params (uniform), 1 perm (read, (N) u32, the first P entries are the
// anchors), 2 idx (read, (P, E − 1) u32 pool positions), 3 vals (read, (P, E − 1) f32
// similarities), 4 keep (read, (P') u32 anchors kept, each < P), 5 rows (read_write, (M)
// u32 bank rows), 6 w (read_write, (M) f32 member weights), 7 y (read_write, (M, P') f32).
// With E = 1, idx and vals are never read (the op binds perm in their place). Both entry
// points take the same bindings, so one bind group serves both dispatches.
//
// Dispatch: linear invocation id t = (wid.x + wid.y·nwg.x)·WG + lid.
//   prototype_members  one invocation per member row, t < M, from gpu.grid(ceil(M / WG)).
//   prototype_votes    one invocation per element of Y, t < M·P' (neighbouring invocations
//                      write neighbouring columns), from gpu.grid(ceil(M·P' / WG)).
// Bounds: keep[p] < P and P' >= 2 are checked on the host; pool positions come from topk
// (always < N − P) and are clamped to N − 1 all the same, so no access is out of bounds.
//
// Numerics: rows and the SE weights are copied exactly; 1 − s, 1 − w_r, the two divisions
// and the row sum are single f32 operations (a few ULP in all; the host passes P' − 1 as an
// exact f32).

struct Params {
    N: u32,
    P: u32,
    E: u32,
    kept: u32,
    smoothing: f32,
    kept_minus_one: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> perm: array<u32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read> vals: array<f32>;
@group(0) @binding(4) var<storage, read> keep: array<u32>;
@group(0) @binding(5) var<storage, read_write> rows: array<u32>;
@group(0) @binding(6) var<storage, read_write> w: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn prototype_members(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.kept * p.E) { return; }
    let a = keep[t / p.E];
    let j = t % p.E;
    if (j == 0u) {
        rows[t] = perm[a];
        w[t] = 1.0 - p.smoothing;
    } else {
        let k = a * (p.E - 1u) + j - 1u;
        rows[t] = perm[min(p.P + idx[k], p.N - 1u)];
        w[t] = vals[k];
    }
}

@compute @workgroup_size(WG)
fn prototype_votes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.kept * p.E * p.kept) { return; }
    let r = t / p.kept;
    let q = t % p.kept;
    let wr = w[r];
    let other = 1.0 - wr;
    var v = other / p.kept_minus_one;
    if (q == r / p.E) { v = wr; }
    y[t] = v / (wr + other);
}
