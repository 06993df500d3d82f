// matmul_subgroup.wgsl: batched C = alpha * op(A) · op(B) [+ bias] [+ C], sharing A
// through subgroup shuffles. Same bindings, Params, strides and flags as matmul.wgsl (see
// its header). A separate file because a module that uses subgroup operations does not
// validate on a device without them, and that must not take the other variants down.
// (Naga in wgpu 30 takes the subgroup built-ins without `enable subgroups;`, which it
// rejects as not yet supported; the device must have Features::SUBGROUP.)
//
// Entry point matmul_subgroup_16x4: workgroup 64 invocations = 8 groups of 8 lanes (needs
// subgroups of at least 8 lanes made of consecutive invocations; lane = subgroup id % 8).
// Group g covers rows i0..i0+15 (i0 = 16·(g % 4)) and columns j0 + l + 8q (j0 = 32·(g / 4),
// lane l, q < 4) of the workgroup's 64 x 64 tile of C; dispatch (ceil(N/64), ceil(M/64),
// batch). Per k, lane l loads two A values (rows i0 + l and i0 + 8 + l) and 4 B values
// (its columns), then takes the group's 16 A values from its neighbours with
// subgroupShuffle: 6 loads feed 64 FMAs (16 in matmul_tiled_8x8). On lavapipe a divergent
// storage load is a gather while a shuffle is a register permute; this is the fastest
// variant there.
// Numerics: f32 accumulation in k order, as in matmul.wgsl.

// Params, bindings and finish() come from matmul_common.wgsl, prepended at compile time.

@compute @workgroup_size(64, 1, 1)
fn matmul_subgroup_16x4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) sid: u32,
) {
    let bi = wid.z;
    let lane = sid % 8u;
    let base = sid - lane;
    let g = li / 8u;                       // group 0..7: rows (g % 4) * 16, columns (g / 4) * 32
    let i0 = wid.y * 64u + (g % 4u) * 16u;
    let jg = wid.x * 64u + (g / 4u) * 32u;
    // A group whose rows or columns all fall outside C has nothing to write: it leaves
    // (the whole group at once, so the shuffles below stay among live lanes). In an edge
    // tile this saves up to half the work, e.g. N = 80: 3 column groups run instead of 4.
    if (i0 >= p.M || jg >= p.N) {
        return;
    }
    let j0 = jg + lane;
    let arow0 = bi * p.a_bs + min(i0 + lane, p.M - 1u) * p.a_rs;
    let arow1 = bi * p.a_bs + min(i0 + 8u + lane, p.M - 1u) * p.a_rs;
    var cols: array<u32, 4>;
    for (var q = 0u; q < 4u; q++) {
        cols[q] = bi * p.b_bs + min(j0 + 8u * q, p.N - 1u) * p.b_cs;
    }
    var acc: array<vec4<f32>, 16>; // acc[r][q]: row i0 + r, column j0 + 8q
    for (var k = 0u; k < p.K; k++) {
        let kb = k * p.b_rs;
        let ka = k * p.a_cs;
        let av0 = a[arow0 + ka];
        let av1 = a[arow1 + ka];
        let bv = vec4<f32>(b[cols[0] + kb], b[cols[1] + kb], b[cols[2] + kb], b[cols[3] + kb]);
        for (var r = 0u; r < 8u; r++) {
            acc[r] += subgroupShuffle(av0, base + r) * bv;
            acc[r + 8u] += subgroupShuffle(av1, base + r) * bv;
        }
    }
    for (var r = 0u; r < 16u; r++) {
        let i = i0 + r;
        if (i >= p.M) { continue; }
        for (var q = 0u; q < 4u; q++) {
            let j = j0 + 8u * q;
            if (j < p.N) { finish(bi, i, j, acc[r][q]); }
        }
    }
}
