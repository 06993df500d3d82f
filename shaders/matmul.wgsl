// matmul.wgsl: batched C = alpha * op(A) · op(B) [+ bias] [+ C]
//
// Bindings: 0 params (uniform), 1 A (read), 2 B (read), 3 bias (read, length N; bound to
// any buffer when unused), 4 C (read_write, (batch, M, N) row-major), 5 pre (read_write,
// like C: the pre-activation the GELU epilogue writes or its backward reads; bound to C
// itself when unused).
// Transposes are strides: A[b, i, k] = a[b*a_bs + i*a_rs + k*a_cs], likewise B[b, k, j],
// so A·B, Aᵀ·B and A·Bᵀ are one kernel. C[b, i, j] = c[b*c_bs + i*N + j].
// flags: bit 0 adds bias[j], bit 1 accumulates into C (C += ..., used for gradients),
// bit 2 the GELU epilogue (pre ← v, C ← GELU(v); Linear → GELU in one dispatch), bit 3
// the GELU-backward epilogue (x = pre read, C ← v · (Φ(x) + x·φ(x)): the gradient reaching
// a GELU's input, v the gradient of its output; gelu.wgsl's gelu_backward in the dispatch
// that computes v).
// Numerics: f32 accumulation in k order; no atomics, so results are deterministic.
//
// Entry points (variants share the math, differ in how work is tiled):
//   matmul_naive        one output per invocation; workgroup WG_X x WG_Y; dispatch
//                       (ceil(N/WG_X), ceil(M/WG_Y), batch).
//   matmul_tiled_8x8    8x8 register tiling, no barriers: each invocation computes an 8x8
//                       block (rows i0 + 8*r, columns j0 + 8*q), a workgroup 8x8 covers
//                       64x64 of C; dispatch (ceil(N/64), ceil(M/64), batch). Per k, 16
//                       loads feed 64 FMAs (8 fed 16 in the 4x4 variant this file had): on lavapipe every
//                       storage load costs about the same whatever its pattern, so loads
//                       per FMA decide the speed. The default on CPU adapters.
//   matmul_tiled_shared 64x64 tile staged through workgroup memory in K-steps of 16, each
//                       invocation a 4x4 block; dispatch (ceil(N/64), ceil(M/64), batch).
//                       The fastest at 4096³ on an H200 (12.0 TFLOP/s); matmul_blocked.wgsl
//                       wins the ViT shapes there (benches/RESULTS.md).
// Which variant wins where (benches/RESULTS.md): naive is the readable baseline every other
// variant's speed-up is quoted against; tiled_8x8 is the CPU-adapter choice without
// subgroups; a 4x4 register-tiled variant without workgroup memory (`tiled`) lost on every
// adapter measured (lavapipe, H100, H200) and was removed, its numbers kept there.
// Backward of C = A·B (derivation): dA = dC · Bᵀ, dB = Aᵀ · dC, dbias[j] = Σ_i dC[i, j];
// the Rust op issues those as further matmul dispatches with swapped strides.

// Params, bindings and finish() come from matmul_common.wgsl, prepended at compile time.

override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;

@compute @workgroup_size(WG_X, WG_Y, 1)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    let bi = gid.z;
    if (i >= p.M || j >= p.N) { return; }
    var acc = 0.0;
    let a0 = bi * p.a_bs + i * p.a_rs;
    let b0 = bi * p.b_bs + j * p.b_cs;
    for (var k = 0u; k < p.K; k++) {
        acc += a[a0 + k * p.a_cs] * b[b0 + k * p.b_rs];
    }
    finish(bi, i, j, acc);
}

@compute @workgroup_size(8, 8, 1)
fn matmul_tiled_8x8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bi = wid.z;
    let i0 = wid.y * 64u + lid.y;
    let j0 = wid.x * 64u + lid.x;
    var rows: array<u32, 8>;
    var cols: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        rows[r] = bi * p.a_bs + min(i0 + 8u * r, p.M - 1u) * p.a_rs;
        cols[r] = bi * p.b_bs + min(j0 + 8u * r, p.N - 1u) * p.b_cs;
    }
    var lo: array<vec4<f32>, 8>;
    var hi: array<vec4<f32>, 8>;
    for (var k = 0u; k < p.K; k++) {
        let ka = k * p.a_cs;
        let kb = k * p.b_rs;
        let bl = vec4<f32>(b[cols[0] + kb], b[cols[1] + kb], b[cols[2] + kb], b[cols[3] + kb]);
        let bh = vec4<f32>(b[cols[4] + kb], b[cols[5] + kb], b[cols[6] + kb], b[cols[7] + kb]);
        for (var r = 0u; r < 8u; r++) {
            let av = a[rows[r] + ka];
            lo[r] += av * bl;
            hi[r] += av * bh;
        }
    }
    for (var r = 0u; r < 8u; r++) {
        let i = i0 + 8u * r;
        if (i >= p.M) { continue; }
        for (var q = 0u; q < 4u; q++) {
            let j = j0 + 8u * q;
            if (j < p.N) { finish(bi, i, j, lo[r][q]); }
            if (j + 32u < p.N) { finish(bi, i, j + 32u, hi[r][q]); }
        }
    }
}

const TK: u32 = 16u;
var<workgroup> tile_a: array<array<f32, 64>, TK>; // [k][i]
var<workgroup> tile_b: array<array<f32, 64>, TK>; // [k][j]

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled_shared(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bi = wid.z;
    let t = lid.y * 16u + lid.x; // 0..255
    let ib = wid.y * 64u;
    let jb = wid.x * 64u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.K; k0 += TK) {
        // 256 invocations load 64x16 elements of A and 16x64 of B: 4 each.
        for (var e = 0u; e < 4u; e++) {
            let idx = t + 256u * e;     // 0..1023
            let kk = idx / 64u;
            let mn = idx % 64u;
            let k = k0 + kk;
            let i = ib + mn;
            let j = jb + mn;
            var va = 0.0;
            var vb = 0.0;
            if (k < p.K && i < p.M) { va = a[bi * p.a_bs + i * p.a_rs + k * p.a_cs]; }
            if (k < p.K && j < p.N) { vb = b[bi * p.b_bs + k * p.b_rs + j * p.b_cs]; }
            tile_a[kk][mn] = va;
            tile_b[kk][mn] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let bv = vec4<f32>(tile_b[kk][lid.x], tile_b[kk][lid.x + 16u], tile_b[kk][lid.x + 32u], tile_b[kk][lid.x + 48u]);
            acc[0] += tile_a[kk][lid.y] * bv;
            acc[1] += tile_a[kk][lid.y + 16u] * bv;
            acc[2] += tile_a[kk][lid.y + 32u] * bv;
            acc[3] += tile_a[kk][lid.y + 48u] * bv;
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let i = ib + lid.y + 16u * r;
        if (i >= p.M) { continue; }
        for (var q = 0u; q < 4u; q++) {
            let j = jb + lid.x + 16u * q;
            if (j < p.N) { finish(bi, i, j, acc[r][q]); }
        }
    }
}
