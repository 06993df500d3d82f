// elementwise.wgsl: the pointwise arithmetic of the model (residual adds, biases, position
// embedding, drop path, gradient accumulation).
//
// Bindings (every entry point uses all three; the Rust op passes them in this order):
//   0 p    uniform Params { n: elements of the output, m: see below, alpha }
//   1 a    read        (n)
//   2 b    read        (n), or (m) for add_broadcast*, or (n / m) for scale_samples*;
//                      bound to `a` when unused
//   3 out  read_write  (n)
// The arrays are declared as vec4<f32>: element e is a[e / 4][e % 4].
//
// Entry points, out[e] for e < n:
//   add                        a[e] + b[e]
//   sub                        a[e] - b[e]
//   mul                        a[e] * b[e]
//   scale                      alpha * a[e]
//   add_scaled_into            out[e] + alpha * a[e]   (in place: out is read, then written)
//   add_broadcast              a[e] + b[e % m]         (b repeats along the leading dims of a;
//                                                       m a multiple of 4)
//   add_broadcast_unaligned    the same for any m
//   scale_samples              b[e / m] * a[e]         (m = elements per sample, a multiple of 4)
//   scale_samples_unaligned    the same for any m
// Backward of each is in src/ops/elementwise.rs beside its Rust function.
//
// Dispatch: one invocation per PER consecutive-in-stride vec4 units: a workgroup covers
// WG·PER units (4·WG·PER elements); invocation lid of workgroup w handles units
// w·WG·PER + lid + k·WG, k < PER, so neighbouring invocations touch neighbouring addresses.
// w = wid.x + wid.y * nwg.x (workgroups laid out by `gpu.grid`); units ≥ ceil(n/4) skipped.
// vec4 access with several units per invocation is 3-5x faster than one f32 per invocation on
// lavapipe (fewer loads and bounds checks, fewer workgroups) and suits GPUs as well.
// The last unit may run past n into the buffer's padding (tensors are allocated in multiples
// of 256 bytes): those lanes compute on padding and write padding, never a payload element.
// Numerics: one f32 operation per element (two for add_scaled_into, which a driver may fuse
// into an fma).

struct Params {
    n: u32, m: u32, alpha: f32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

override WG: u32 = 64u;
const PER: u32 = 16u;

// The first unit of this invocation; its units are first + k·WG.
fn first_unit(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG * PER + lid.x;
}

fn units() -> u32 {
    return (p.n + 3u) / 4u;
}

// Element e of b, for the unaligned entry points.
fn b_at(e: u32) -> f32 {
    return b[e / 4u][e % 4u];
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) { out[u] = a[u] + b[u]; }
    }
}

@compute @workgroup_size(WG)
fn sub(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) { out[u] = a[u] - b[u]; }
    }
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) { out[u] = a[u] * b[u]; }
    }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) { out[u] = p.alpha * a[u]; }
    }
}

@compute @workgroup_size(WG)
fn add_scaled_into(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) { out[u] = out[u] + p.alpha * a[u]; }
    }
}

// m % 4 == 0: the unit's 4 elements map to the 4 consecutive elements of one unit of b.
@compute @workgroup_size(WG)
fn add_broadcast(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    let mu = p.m / 4u;
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) { out[u] = a[u] + b[u % mu]; }
    }
}

@compute @workgroup_size(WG)
fn add_broadcast_unaligned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) {
            let e = 4u * u;
            let bv = vec4<f32>(b_at(e % p.m), b_at((e + 1u) % p.m), b_at((e + 2u) % p.m), b_at((e + 3u) % p.m));
            out[u] = a[u] + bv;
        }
    }
}

// m % 4 == 0: the unit's 4 elements belong to one sample.
@compute @workgroup_size(WG)
fn scale_samples(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) { out[u] = b_at(4u * u / p.m) * a[u]; }
    }
}

@compute @workgroup_size(WG)
fn scale_samples_unaligned(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u0 = first_unit(wid, nwg, lid);
    let nu = units();
    let last = p.n / p.m - 1u; // padding lanes reuse the last sample's scale
    for (var k = 0u; k < PER; k++) {
        let u = u0 + k * WG;
        if (u < nu) {
            let e = 4u * u;
            let s = vec4<f32>(b_at(min(e / p.m, last)), b_at(min((e + 1u) / p.m, last)),
                              b_at(min((e + 2u) / p.m, last)), b_at(min((e + 3u) / p.m, last)));
            out[u] = s * a[u];
        }
    }
}
