// matmul_blocked.wgsl: batched C = alpha * op(A) · op(B) [+ bias] [+ C] for GPUs: block
// tiles staged through workgroup memory, an 8x8 register tile per invocation. Same
// bindings, Params, strides and flags as matmul.wgsl (see its header); Params, bindings and
// finish() come from matmul_common.wgsl, prepended at compile time.
//
// Tile shape (pipeline-overridable constants, set by src/ops/matmul.rs per variant):
//   BM x BN   the block of C one workgroup computes (multiples of 8, BM/8 · BN/8 ≤ 256),
//   BK        the K-step staged per barrier pair (BM·BK and BN·BK multiples of the
//             invocation count).
// Workgroup (BN/8, BM/8): invocation (tx, ty) owns the 8 x 8 block of rows ib + 8·ty ..
// and columns jb + 8·tx ..; dispatch (ceil(N/BN), ceil(M/BM), batch).
// Per K-step, the workgroup copies A[ib.., k0..] (BM x BK) and B[k0.., jb..] (BK x BN) into
// `tile_a` ([k][i]) and `tile_b` ([k][j]) as vec4s; out-of-range elements are zeros, so the
// inner loop needs no guards. The copy walks whichever index is contiguous in memory (k for
// A, j for B, untransposed), so neighbouring invocations read neighbouring addresses of a
// transposed operand too. Per k each invocation then reads two vec4s of A and two of B
// from workgroup memory and does 64 FMAs into sixteen vec4 registers.
// On an H200 the first version (8 x 8 accumulators as an indexed array, strided rows) ran
// at 2.2 TFLOP/s at 4096³ against 12.3 for matmul_tiled_shared (benches/RESULTS.md):
// indexed register arrays were not kept in registers.
// Split-K (p.k_chunk > 0, batch 1 only): workgroup z is a slice of K, [z·k_chunk,
// min(K, (z+1)·k_chunk)), and writes its partial product to C[z] of a (splits, M, N)
// scratch tensor with flags 0 and alpha 1; `matmul_split_reduce` then sums the slices in
// order into the real C with the caller's alpha, bias and accumulate. Used for weight
// gradients (dW = dYᵀ·X: K = tokens x batch, few output tiles), where one workgroup per
// tile leaves most of a GPU idle.
// Numerics: f32 accumulation in k order (as every other variant), no atomics; with
// split-K, each slice in k order, then the slices in order.

override BM: u32 = 128u;
override BN: u32 = 128u;
override BK: u32 = 8u;

// Workgroup tiles of vec4s, sized by overrides (naga resolves them when the pipeline is
// built): tile_a[kk * BM/4 + i/4][i % 4] = A[ib + i, k0 + kk], tile_b likewise for B[k, j].
override A_TILE4: u32 = BK * BM / 4u;
override B_TILE4: u32 = BK * BN / 4u;
var<workgroup> tile_a: array<vec4<f32>, A_TILE4>;
var<workgroup> tile_b: array<vec4<f32>, B_TILE4>;

// C[bi, i, j0 .. j0+8] = lo, hi (each column guarded).
fn store_row(bi: u32, i: u32, j0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (i >= p.M) { return; }
    for (var q = 0u; q < 4u; q++) {
        if (j0 + q < p.N) { finish(bi, i, j0 + q, lo[q]); }
        if (j0 + 4u + q < p.N) { finish(bi, i, j0 + 4u + q, hi[q]); }
    }
}

@compute @workgroup_size(BN / 8u, BM / 8u, 1)
fn matmul_blocked(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    var bi = wid.z;
    var k_lo = 0u;
    var k_hi = p.K;
    if (p.k_chunk != 0u) {
        bi = 0u;
        k_lo = wid.z * p.k_chunk;
        k_hi = min(p.K, k_lo + p.k_chunk);
    }
    let ib = wid.y * BM;
    let jb = wid.x * BN;
    let threads = (BM / 8u) * (BN / 8u);
    let bm4 = BM / 4u;
    let bn4 = BN / 4u;
    let a_base = bi * p.a_bs;
    let b_base = bi * p.b_bs;
    let a_k_fast = p.a_cs == 1u; // untransposed A: k is contiguous
    let b_j_fast = p.b_cs == 1u; // untransposed B: j is contiguous
    // This invocation's 8 x 8 block of C: rows ib + 8·ty .., columns jb + 8·tx ...
    // Sixteen named vec4 accumulators (c<row><half>) rather than an indexed array, so that
    // they live in registers whatever the driver's loop unrolling does.
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0); var c41 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0); var c51 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0); var c61 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0); var c71 = vec4<f32>(0.0);
    for (var k0 = k_lo; k0 < k_hi; k0 += BK) {
        for (var e = t; e < BM * BK; e += threads) {
            var kk: u32;
            var ii: u32;
            if (a_k_fast) { kk = e % BK; ii = e / BK; } else { ii = e % BM; kk = e / BM; }
            let i = ib + ii;
            let k = k0 + kk;
            var v = 0.0;
            if (i < p.M && k < k_hi) { v = a[a_base + i * p.a_rs + k * p.a_cs]; }
            tile_a[kk * bm4 + ii / 4u][ii % 4u] = v;
        }
        for (var e = t; e < BN * BK; e += threads) {
            var kk: u32;
            var jj: u32;
            if (b_j_fast) { jj = e % BN; kk = e / BN; } else { kk = e % BK; jj = e / BK; }
            let j = jb + jj;
            let k = k0 + kk;
            var v = 0.0;
            if (j < p.N && k < k_hi) { v = b[b_base + k * p.b_rs + j * p.b_cs]; }
            tile_b[kk * bn4 + jj / 4u][jj % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = tile_a[kk * bm4 + 2u * lid.y];      // rows 0..3 of the block
            let a1 = tile_a[kk * bm4 + 2u * lid.y + 1u]; // rows 4..7
            let b0 = tile_b[kk * bn4 + 2u * lid.x];      // columns 0..3
            let b1 = tile_b[kk * bn4 + 2u * lid.x + 1u]; // columns 4..7
            c00 = fma(vec4(a0.x), b0, c00); c01 = fma(vec4(a0.x), b1, c01);
            c10 = fma(vec4(a0.y), b0, c10); c11 = fma(vec4(a0.y), b1, c11);
            c20 = fma(vec4(a0.z), b0, c20); c21 = fma(vec4(a0.z), b1, c21);
            c30 = fma(vec4(a0.w), b0, c30); c31 = fma(vec4(a0.w), b1, c31);
            c40 = fma(vec4(a1.x), b0, c40); c41 = fma(vec4(a1.x), b1, c41);
            c50 = fma(vec4(a1.y), b0, c50); c51 = fma(vec4(a1.y), b1, c51);
            c60 = fma(vec4(a1.z), b0, c60); c61 = fma(vec4(a1.z), b1, c61);
            c70 = fma(vec4(a1.w), b0, c70); c71 = fma(vec4(a1.w), b1, c71);
        }
        workgroupBarrier();
    }
    let i0 = ib + 8u * lid.y;
    let j0 = jb + 8u * lid.x;
    // Split-K slices write slice wid.z of the scratch tensor (c_bs = M·N, see the header).
    store_row(wid.z, i0, j0, c00, c01);
    store_row(wid.z, i0 + 1u, j0, c10, c11);
    store_row(wid.z, i0 + 2u, j0, c20, c21);
    store_row(wid.z, i0 + 3u, j0, c30, c31);
    store_row(wid.z, i0 + 4u, j0, c40, c41);
    store_row(wid.z, i0 + 5u, j0, c50, c51);
    store_row(wid.z, i0 + 6u, j0, c60, c61);
    store_row(wid.z, i0 + 7u, j0, c70, c71);
}

// The second pass of split-K: C[i, j] = alpha · Σ_s partial[s, i, j] [+ bias] [+ C], the
// slices summed in order. Binding 1 (`a`) holds the partials (p.batch slices of M x N);
// one invocation per element of C; dispatch (ceil(M·N / 64), 1, 1) as a (x, y) grid.
@compute @workgroup_size(64, 1, 1)
fn matmul_split_reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = (wid.x + wid.y * nwg.x) * 64u + li;
    let mn = p.M * p.N;
    if (idx >= mn) { return; }
    var s = 0.0;
    for (var z = 0u; z < p.batch; z++) {
        s += a[z * mn + idx];
    }
    finish(0u, idx / p.N, idx % p.N, s);
}
