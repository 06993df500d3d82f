// tokens.wgsl: moving pixels and tokens around (no arithmetic beyond copies).
//
// patchify_forward   images (B, C, S, S) -> patches (B*N, C*P*P), N = G*G, G = S / P (floor).
//                    patches[b*N + n, c*P*P + py*P + px] = img[b, c, (n/G)*P + py, (n%G)*P + px]
//                    Column order (c, py, px) matches a conv weight (D, C, P, P) flattened to
//                    (D, C*P*P), so the patch embedding is a Linear layer on `patches`.
// patchify_backward  dimg (B, C, S, S) from dpatches: each pixel lies in at most one patch
//                    (stride = kernel = P), so the backward is the inverse copy; pixels beyond
//                    G*P (S not a multiple of P) get 0.
// tokens_join        out (B, 1+N, D): out[b, 0] = cls (shared (D) when flags & 1, else (B, D)),
//                    out[b, 1+n] = x[b, n]. Backward: see tokens_split.
// tokens_split       x (B, 1+N, D) -> cls (B, D) = x[:, 0], rest (B, N, D) = x[:, 1:].
//                    split is join's backward (a shared cls then sums over b: sum_rows).
// Dispatch: one invocation per output element, 1-D over (x, y) workgroups of WG.

struct Params {
    B: u32, C: u32, S: u32, P: u32,
    G: u32, N: u32, D: u32, flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> src2: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst2: array<f32>;

override WG: u32 = 256u;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn patchify_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let cols = p.C * p.P * p.P;
    if (i >= p.B * p.N * cols) { return; }
    let row = i / cols;
    let col = i % cols;
    let b = row / p.N;
    let n = row % p.N;
    let c = col / (p.P * p.P);
    let py = (col / p.P) % p.P;
    let px = col % p.P;
    let y = (n / p.G) * p.P + py;
    let x = (n % p.G) * p.P + px;
    dst[i] = src[((b * p.C + c) * p.S + y) * p.S + x];
}

@compute @workgroup_size(WG)
fn patchify_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.B * p.C * p.S * p.S) { return; }
    let x = i % p.S;
    let y = (i / p.S) % p.S;
    let c = (i / (p.S * p.S)) % p.C;
    let b = i / (p.C * p.S * p.S);
    let edge = p.G * p.P;
    if (x >= edge || y >= edge) {
        dst[i] = 0.0;
        return;
    }
    let n = (y / p.P) * p.G + x / p.P;
    let col = (c * p.P + y % p.P) * p.P + x % p.P;
    dst[i] = src[(b * p.N + n) * (p.C * p.P * p.P) + col];
}

@compute @workgroup_size(WG)
fn tokens_join(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let T = p.N + 1u;
    if (i >= p.B * T * p.D) { return; }
    let d = i % p.D;
    let t = (i / p.D) % T;
    let b = i / (T * p.D);
    if (t == 0u) {
        if ((p.flags & 1u) != 0u) { dst[i] = src2[d]; } else { dst[i] = src2[b * p.D + d]; }
    } else {
        dst[i] = src[(b * p.N + t - 1u) * p.D + d];
    }
}

@compute @workgroup_size(WG)
fn tokens_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let T = p.N + 1u;
    if (i >= p.B * T * p.D) { return; }
    let d = i % p.D;
    let t = (i / p.D) % T;
    let b = i / (T * p.D);
    if (t == 0u) {
        dst2[b * p.D + d] = src[i];
    } else {
        dst[(b * p.N + t - 1u) * p.D + d] = src[i];
    }
}
