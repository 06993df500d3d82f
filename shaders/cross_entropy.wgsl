// cross_entropy.wgsl: weighted cross-entropy between distributions,
//   loss = Σ_r w_r · Σ_k −q[r, k] · log p[r, k],
// q (R, K) the teacher distribution, p (R, K) the student's mixture probability (a
// probability, not a log-probability), w (R) per-row weights (SOP-MIM's per-image average
// over masked patches, the [CLS] pair averaging).
//
// Bindings: 0 params (uniform), 1 q (read, (R, K)), 2 p (read, (R, K)), 3 w (read, (R)),
// 4 src (read_write), 5 dst (read_write).
//
// Entry points (all barrier-free; linear invocation id t = (wid.x + wid.y·nwg.x)·WG + lid
// from gpu.grid):
//   cross_entropy_forward_rows  one invocation per row: src[r] = w_r · Σ_k −q log p.
//                               Dispatch grid(ceil(R / WG)).
//   cross_entropy_forward_sum   one invocation per chunk of CHUNK entries of src:
//                               dst[i] = Σ_{j < CHUNK} src[i·CHUNK + j] over the first n.
//                               The host repeats it (ping-pong) until one value is left:
//                               a fixed summation tree, so the loss is deterministic.
//   cross_entropy_forward_total both sum stages at once for n ≤ CHUNK² (the only barrier
//                               here): one workgroup of CHUNK invocations, invocation c sums
//                               chunk c into workgroup memory as cross_entropy_forward_sum
//                               does, invocation 0 adds the partials in chunk order into
//                               dst[0] (the second stage's arithmetic: the same bits, and
//                               0 + s = s when there is one chunk). Dispatch (1, 1, 1).
//   cross_entropy_backward      one invocation per element, writes dp into src.
//
// Numerics: log(0) is guarded by clamping p at 1e-30 (a normal f32; −log(1e-30) ≈ 69.1), in
// the forward and in the backward's division, so an underflowed student probability gives
// a large finite loss and gradient instead of inf/NaN. Where q = 0 the term is 0 whatever p
// is. f32 accumulation.

struct Params {
    R: u32,
    K: u32,
    n: u32,
    _p0: u32,
    dloss: f32,
    _p1: u32,
    _p2: u32,
    _p3: u32,
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> src: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;

override WG: u32 = 64u;

const CHUNK: u32 = 64u;
const P_MIN: f32 = 1e-30;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + li;
}

@compute @workgroup_size(WG)
fn cross_entropy_forward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = linear_id(wid, nwg, li);
    if (r >= prm.R) { return; }
    let b = r * prm.K;
    var h = 0.0;
    for (var k = 0u; k < prm.K; k++) {
        let qk = q[b + k];
        if (qk != 0.0) {
            h -= qk * log(max(p[b + k], P_MIN));
        }
    }
    src[r] = w[r] * h;
}

@compute @workgroup_size(WG)
fn cross_entropy_forward_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    let j0 = i * CHUNK;
    if (j0 >= prm.n) { return; }
    let j1 = min(j0 + CHUNK, prm.n);
    var s = 0.0;
    for (var j = j0; j < j1; j++) {
        s += src[j];
    }
    dst[i] = s;
}

var<workgroup> chunk_sums: array<f32, CHUNK>;

@compute @workgroup_size(CHUNK)
fn cross_entropy_forward_total(@builtin(local_invocation_index) c: u32) {
    let j0 = c * CHUNK;
    let j1 = min(j0 + CHUNK, prm.n);
    var s = 0.0;
    for (var j = j0; j < j1; j++) {
        s += src[j];
    }
    chunk_sums[c] = s;
    workgroupBarrier();
    if (c == 0u) {
        let m = (prm.n + CHUNK - 1u) / CHUNK;
        var t = 0.0;
        for (var k = 0u; k < m; k++) {
            t += chunk_sums[k];
        }
        dst[0] = t;
    }
}

// Backward: d/dp[r, k] of w_r · (−q[r, k] · log p[r, k]) = −w_r · q[r, k] / p[r, k], times
// the upstream dloss: dp = −dloss · w_r · q / max(p, 1e-30). Below the clamp the clamped
// function is flat, but the unclamped gradient (pushing p up) is the useful one, so the
// backward divides by the same clamped p. Where q = 0, dp = 0. Overwrites dp.
@compute @workgroup_size(WG)
fn cross_entropy_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= prm.R * prm.K) { return; }
    let r = i / prm.K;
    src[i] = -prm.dloss * w[r] * q[i] / max(p[i], P_MIN);
}
