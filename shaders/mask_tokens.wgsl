// mask_tokens.wgsl: iBOT/SOP mask-token substitution. Every masked patch embedding is
// replaced by the learned mask token:
//   y[b, t, :] = token            where mask[b, t] != 0 (1 = masked)
//   y[b, t, :] = x[b, t, :]        elsewhere
// x, y (B, T, D) seen as (rows = B·T, D); mask (B, T) u32; token (D).
//
// Bindings: 0 params (uniform), 1 x (read; dy in the backward), 2 mask (read, u32),
// 3 token (read; the backward binds any buffer), 4 out (read_write: y, or dx),
// 5 part (read_write, (chunks, D) partial sums), 6 dtoken (read_write, (D)).
//
// Entry points (barrier-free; t = (wid.x + wid.y·nwg.x)·WG + lid, dispatch from gpu.grid):
//   mask_tokens_forward           one invocation per element of y (rows·D).
//   mask_tokens_backward_partial  one invocation per (chunk of CHUNK rows, column d): writes
//                                 dx for its rows and part[chunk, d], the sum of dy over
//                                 its masked rows. chunks = ceil(rows / CHUNK).
//   mask_tokens_backward          one invocation per column d: dtoken[d] = Σ_chunk part.
// Numerics: the forward and dx copy; dtoken is an f32 sum in a fixed order (chunks of 64
// rows, then chunks in order), so it is deterministic. Two passes instead of one
// invocation per column looping over all rows: that would leave only D invocations for
// B·T (~25,000) sequential loads each.

struct Params {
    rows: u32,
    D: u32,
    chunks: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> token: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<storage, read_write> dtoken: array<f32>;

override WG: u32 = 64u;

const CHUNK: u32 = 64u;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + li;
}

@compute @workgroup_size(WG)
fn mask_tokens_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_id(wid, nwg, li);
    if (i >= p.rows * p.D) { return; }
    let row = i / p.D;
    let d = i % p.D;
    if (mask[row] != 0u) {
        out[i] = token[d];
    } else {
        out[i] = x[i];
    }
}

// Backward of the select: dx = dy where not masked, 0 where masked (the token replaced x
// there); dtoken = Σ over masked (b, t) of dy[b, t, :] (the token is used once per masked
// row). Both overwrite.
@compute @workgroup_size(WG)
fn mask_tokens_backward_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = linear_id(wid, nwg, li);
    if (t >= p.chunks * p.D) { return; }
    let chunk = t / p.D;
    let d = t % p.D;
    let r0 = chunk * CHUNK;
    let r1 = min(r0 + CHUNK, p.rows);
    var s = 0.0;
    for (var row = r0; row < r1; row++) {
        let i = row * p.D + d;
        let g = x[i];
        if (mask[row] != 0u) {
            s += g;
            out[i] = 0.0;
        } else {
            out[i] = g;
        }
    }
    part[t] = s;
}

@compute @workgroup_size(WG)
fn mask_tokens_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let d = linear_id(wid, nwg, li);
    if (d >= p.D) { return; }
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        s += part[c * p.D + d];
    }
    dtoken[d] = s;
}
