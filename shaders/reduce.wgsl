// reduce.wgsl: deterministic sums without atomics: `sum` / `sum_squares` of a whole tensor
// (gradient norms) and `sum_rows`, column sums of a (R, C) matrix (bias gradients). Every
// entry point computes one stage of partial sums; the Rust op repeats stages until one row
// (or one value) is left. Each stage's order is a fixed function of the shape: deterministic.
//
// Bindings (the Rust op passes them in this order):
//   0 p    uniform Params
//   1 x    read        n elements, declared as vec4<f32> (element e is x[e / 4][e % 4])
//   2 out  read_write  the stage's partial sums (f32)
//   3 segs read        sum_segments only: 6 u32 per segment (see there)
// f(v) = v, or v² when `square` is 1.
//
// Entry points (index g = (wid.x + wid.y * nwg.x) * WG + lid.x, workgroups laid out by
// `gpu.grid`, bound-checked):
//   sum                 x seen as nu = ceil(n/4) vec4 units; invocation j < cols sums the units
//                       j, j + cols, j + 2·cols, … (at most `rows` of them; neighbouring
//                       invocations read neighbouring addresses) lane by lane, then its four
//                       lanes ((l0 + l1) + l2) + l3, and writes out[j]. Lanes past n (the last
//                       unit's padding) count as 0. The Rust op picks cols = ceil(nu/256).
//   sum_rows            x (rows, cols) with cols % 4 == 0: invocation g = c·(cols/4) + q sums
//                       columns 4q .. 4q+3 over the rows of chunk c (rows c·chunk ..
//                       min((c+1)·chunk, rows)) and writes out[c·cols + 4q .. 4q+3].
//   sum_rows_unaligned  the same for any cols, one column per invocation g = c·cols + j.
//   sum_rows_fused      both `sum_rows` stages of a (rows ≤ 64·chunk, cols) matrix in one
//                       dispatch (cols % 4 == 0): workgroup w = q (by `gpu.grid`) covers
//                       columns 4q .. 4q+3; its invocation c sums the rows of chunk c as
//                       `sum_rows` does into workgroup memory, then invocation 0 adds the
//                       nchunks partials in chunk order: the second stage's arithmetic, so the
//                       bits of the two-stage sum (or of the one stage when nchunks = 1:
//                       0 + s = s). Requires WG = 64 ≥ nchunks.
//   sum_rows_fused_unaligned  the same for any cols, workgroup w = column j.
//   sum_segments        one `sum` stage for many tensors at once (the gradients' sums of
//                       squares, all tensors in one dispatch): segment s is 6 words
//                       [base, n, cols, rows, out_at, first], its tensor x[base..] (base in
//                       vec4 units) of n elements with `sum`'s cols and rows, its invocations
//                       first .. first + cols − 1 (segments in order, first ascending from 0,
//                       p.cols invocations in all, p.nchunks segments). Invocation g finds its
//                       segment by binary search and does exactly what `sum`'s invocation
//                       g − first does on that tensor, writing out[out_at + g − first]; so a
//                       tensor's stages give the bits `sum_squares` gives it alone.
//
// Numerics: f32 accumulation in row (unit) order within an invocation; the next stage sums the
// partials in order. A sum of n terms is thus a tree of depth ~log_256(n) (sum) or
// ~log_64(R) (sum_rows) of sequential sums: relative error of order stages·256·2⁻²⁴ in the
// worst case for terms of one sign, far less on average.
// vec4 loads: ~4x fewer load instructions and bounds checks than f32 loads, which is what a
// stage costs on lavapipe.

struct Params {
    n: u32, cols: u32, rows: u32, chunk: u32,
    nchunks: u32, square: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> segs: array<u32>;

override WG: u32 = 64u;

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

fn f(v: vec4<f32>) -> vec4<f32> {
    return select(v, v * v, p.square != 0u);
}

@compute @workgroup_size(WG)
fn sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = invocation(wid, nwg, lid);
    if (j >= p.cols) { return; }
    let nu = (p.n + 3u) / 4u;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < p.rows; k++) {
        let u = j + k * p.cols;
        if (u >= nu) { break; }
        let lanes = vec4<u32>(4u * u) + vec4<u32>(0u, 1u, 2u, 3u);
        acc += select(vec4<f32>(0.0), f(x[u]), lanes < vec4<u32>(p.n));
    }
    out[j] = ((acc.x + acc.y) + acc.z) + acc.w;
}

@compute @workgroup_size(WG)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = invocation(wid, nwg, lid);
    let cols4 = p.cols / 4u;
    if (g >= p.nchunks * cols4) { return; }
    let c = g / cols4;
    let q = g % cols4;
    let r1 = min((c + 1u) * p.chunk, p.rows);
    var acc = vec4<f32>(0.0);
    for (var r = c * p.chunk; r < r1; r++) {
        acc += f(x[r * cols4 + q]);
    }
    let o = c * p.cols + 4u * q;
    out[o] = acc.x;
    out[o + 1u] = acc.y;
    out[o + 2u] = acc.z;
    out[o + 3u] = acc.w;
}

@compute @workgroup_size(WG)
fn sum_rows_unaligned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = invocation(wid, nwg, lid);
    if (g >= p.nchunks * p.cols) { return; }
    let c = g / p.cols;
    let j = g % p.cols;
    let r1 = min((c + 1u) * p.chunk, p.rows);
    var acc = 0.0;
    for (var r = c * p.chunk; r < r1; r++) {
        let e = r * p.cols + j;
        let v = x[e / 4u][e % 4u];
        acc += select(v, v * v, p.square != 0u);
    }
    out[g] = acc;
}

const SEG: u32 = 6u;

@compute @workgroup_size(WG)
fn sum_segments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = invocation(wid, nwg, lid);
    if (g >= p.cols) { return; }
    // The last segment whose first invocation is <= g: segs[lo].first <= g < segs[hi].first.
    var lo = 0u;
    var hi = p.nchunks;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (segs[mid * SEG + 5u] <= g) { lo = mid; } else { hi = mid; }
    }
    let s = lo * SEG;
    let base = segs[s];
    let n = segs[s + 1u];
    let cols = segs[s + 2u];
    let rows = segs[s + 3u];
    let j = g - segs[s + 5u];
    let nu = (n + 3u) / 4u;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < rows; k++) {
        let u = j + k * cols;
        if (u >= nu) { break; }
        let lanes = vec4<u32>(4u * u) + vec4<u32>(0u, 1u, 2u, 3u);
        acc += select(vec4<f32>(0.0), f(x[base + u]), lanes < vec4<u32>(n));
    }
    out[segs[s + 4u] + j] = ((acc.x + acc.y) + acc.z) + acc.w;
}

var<workgroup> partials: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn sum_rows_fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) c: u32) {
    let q = wid.x + wid.y * nwg.x;
    let cols4 = p.cols / 4u;
    // q is uniform across the workgroup, so every invocation reaches the barrier or none.
    if (q >= cols4) { return; }
    var acc = vec4<f32>(0.0);
    if (c < p.nchunks) {
        let r1 = min((c + 1u) * p.chunk, p.rows);
        for (var r = c * p.chunk; r < r1; r++) {
            acc += x[r * cols4 + q];
        }
    }
    partials[c] = acc;
    workgroupBarrier();
    if (c == 0u) {
        var total = vec4<f32>(0.0);
        for (var k = 0u; k < p.nchunks; k++) {
            total += partials[k];
        }
        out[4u * q] = total.x;
        out[4u * q + 1u] = total.y;
        out[4u * q + 2u] = total.z;
        out[4u * q + 3u] = total.w;
    }
}

@compute @workgroup_size(64)
fn sum_rows_fused_unaligned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) c: u32) {
    let j = wid.x + wid.y * nwg.x;
    if (j >= p.cols) { return; }
    var acc = 0.0;
    if (c < p.nchunks) {
        let r1 = min((c + 1u) * p.chunk, p.rows);
        for (var r = c * p.chunk; r < r1; r++) {
            let e = r * p.cols + j;
            acc += x[e / 4u][e % 4u];
        }
    }
    partials[c] = vec4<f32>(acc, 0.0, 0.0, 0.0);
    workgroupBarrier();
    if (c == 0u) {
        var total = 0.0;
        for (var k = 0u; k < p.nchunks; k++) {
            total += partials[k].x;
        }
        out[j] = total;
    }
}
