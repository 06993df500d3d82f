// gather.wgsl: row gather and the FIFO ring write of the memory banks.
//   gather_rows:       dst[i, c] = src[idx[i], c]          src (N, C), idx (R), dst (R, C)
//   scatter_rows_ring: dst[(start + i) mod N, c] = src[i, c]  src (R, C), dst (N, C), R <= N
//   scatter_rows_ring_unless: the same, but nothing is written while idx[0] ≠ 0 (idx binds
//                      the step's non-finite flag: a bank keeps its rows after a bad step)
// Elements are moved as raw 32-bit words, so f32, u32 and i32 tensors all work.
//
// Bindings: 0 params (uniform), 1 src (read), 2 idx (read, (R) u32; scatter binds any
// buffer), 3 dst (read_write).
// Dispatch: one invocation per moved element, t = (wid.x + wid.y·nwg.x)·WG + lid < R·C,
// from gpu.grid(ceil(R·C / WG)); neighbouring invocations move neighbouring columns.
// Bounds: the shader never reads or writes out of bounds: gather clamps idx[i] to N - 1
// (the host rejects out-of-range indices it can see); scatter's rows are reduced mod N with
// start < N from the host.

struct Params {
    N: u32,
    C: u32,
    R: u32,
    start: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn gather_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.R * p.C) { return; }
    let i = t / p.C;
    let c = t % p.C;
    let row = min(idx[i], p.N - 1u);
    dst[t] = src[row * p.C + c];
}

@compute @workgroup_size(WG)
fn scatter_rows_ring(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.R * p.C) { return; }
    let i = t / p.C;
    let c = t % p.C;
    var row = p.start + i; // < 2N: start < N and i < R <= N
    if (row >= p.N) { row -= p.N; }
    dst[row * p.C + c] = src[t];
}

@compute @workgroup_size(WG)
fn scatter_rows_ring_unless(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (wid.x + wid.y * nwg.x) * WG + li;
    if (t >= p.R * p.C || idx[0] != 0u) { return; }
    let i = t / p.C;
    let c = t % p.C;
    var row = p.start + i; // < 2N: start < N and i < R <= N
    if (row >= p.N) { row -= p.N; }
    dst[row * p.C + c] = src[t];
}
