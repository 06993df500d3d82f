// ema.wgsl: the teacher's exponential moving average of the student, in place:
//   teacher ← momentum · teacher + (1 − momentum) · student
// (momentum rises to 1 over training on a cosine, from 0.95 in `sop train`'s default and
// 0.996 in the authors' recipe; 1 − momentum comes from the host in f64).
//
// Bindings: 0 params (uniform), 1 student (read), 2 teacher (read_write); n elements each;
// ema_update_unless also 3 skip (read, 1 u32): it writes nothing while skip[0] ≠ 0 (the
// step's non-finite flag), else exactly what ema_update writes. Training runs it once on
// the flat buffers of all parameters (gpu::flat; padding stays 0).
// Dispatch: one invocation per element, i = (wid.x + wid.y·nwg.x)·WG + lid < n, from
// gpu.grid(ceil(n / WG)). Numerics: f32.

struct Params {
    n: u32,
    momentum: f32,
    one_minus_momentum: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> student: array<f32>;
@group(0) @binding(2) var<storage, read_write> teacher: array<f32>;
@group(0) @binding(3) var<storage, read> skip: array<u32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn ema_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.n) { return; }
    teacher[i] = p.momentum * teacher[i] + p.one_minus_momentum * student[i];
}

@compute @workgroup_size(WG)
fn ema_update_unless(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.n || skip[0] != 0u) { return; }
    teacher[i] = p.momentum * teacher[i] + p.one_minus_momentum * student[i];
}
