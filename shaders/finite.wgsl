// finite.wgsl: whether four tensors hold only finite values, as one word a later check can
// read as an f32: flag[0] |= 0x7fc00000 (a NaN's bits) if any element of x0..x3 is NaN or
// ±Inf; untouched (0, i.e. +0.0, when cleared beforehand) otherwise. The training step's
// finiteness check of its embeddings (they are unit rows: a NaN can hide inside the
// objective's clamped logs, not here).
//
// Bindings: 0 params (uniform), 1..4 x0..x3 (read, raw 32-bit words, n0..n3 of them),
// 5 flag (read_write, one atomic u32).
// Dispatch: one invocation per element of the four, i over n0 + n1 + n2 + n3 in that order,
// i = (wid.x + wid.y·nwg.x)·WG + lid, from gpu.grid(ceil(total / WG)).
// Determinism: the only write is an integer atomicOr of one constant, whose result does not
// depend on the order (no float atomics).

struct Params {
    n0: u32,
    n1: u32,
    n2: u32,
    n3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x0: array<u32>;
@group(0) @binding(2) var<storage, read> x1: array<u32>;
@group(0) @binding(3) var<storage, read> x2: array<u32>;
@group(0) @binding(4) var<storage, read> x3: array<u32>;
@group(0) @binding(5) var<storage, read_write> flag: array<atomic<u32>>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn flag_non_finite(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    var i = (wid.x + wid.y * nwg.x) * WG + li;
    var bits = 0u;
    if (i < p.n0) {
        bits = x0[i];
    } else {
        i -= p.n0;
        if (i < p.n1) {
            bits = x1[i];
        } else {
            i -= p.n1;
            if (i < p.n2) {
                bits = x2[i];
            } else {
                i -= p.n2;
                if (i >= p.n3) { return; }
                bits = x3[i];
            }
        }
    }
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        atomicOr(&flag[0], 0x7fc00000u);
    }
}
