// elementwise.wgsl: the pointwise arithmetic of the model (residual adds, biases, position
// embedding, drop path, gradient accumulation).
//
// Bindings (every entry point uses all three; the Rust op passes them in this order):
//   0 p    uniform Params { n: elements of the output, m: see below, alpha }
//   1 a    read        (n)
//   2 b    read        (n), or (m) for add_broadcast, or (n / m) for scale_samples;
//                      bound to `a` when unused
//   3 out  read_write  (n)
//
// Entry points, out[i] for i < n:
//   add              a[i] + b[i]
//   sub              a[i] - b[i]
//   mul              a[i] * b[i]
//   scale            alpha * a[i]
//   add_scaled_into  out[i] + alpha * a[i]            (in place: out is read then written)
//   add_broadcast    a[i] + b[i % m]                  (b repeats along the leading dims of a)
//   scale_samples    b[i / m] * a[i]                  (m = elements per sample)
// Backward of each is in src/ops/elementwise.rs beside its Rust function.
//
// Dispatch: one invocation per element, i = (wid.x + wid.y * nwg.x) * WG + lid.x, workgroups
// laid out by `gpu.grid`; bound-checked against n.
// Numerics: one f32 operation per element (two for add_scaled_into, not fused: f32 rounding
// of alpha·a then of the sum).

struct Params {
    n: u32, m: u32, alpha: f32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i];
}

@compute @workgroup_size(WG)
fn sub(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] - b[i];
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] * b[i];
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = p.alpha * a[i];
}

@compute @workgroup_size(WG)
fn add_scaled_into(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = out[i] + p.alpha * a[i];
}

@compute @workgroup_size(WG)
fn add_broadcast(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i % p.m];
}

@compute @workgroup_size(WG)
fn scale_samples(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = b[i / p.m] * a[i];
}
