// matmul_common.wgsl: what matmul.wgsl and matmul_subgroup.wgsl share, prepended to each
// when it is compiled (src/ops/matmul.rs), so naga's line numbers for those files count
// from the first line of this one.
// Params and bindings: see matmul.wgsl's header. finish(bi, i, j, acc) writes
// C[bi, i, j] = alpha * acc [+ bias[j]] [+ C[bi, i, j]] as the flags say; with flag bit 2
// (GELU epilogue) that value v goes to pre[idx] and C gets v · Φ(v), computed exactly as
// gelu.wgsl's gelu_forward computes it (Φ from gelu_math.wgsl, prepended before this file);
// with flag bit 3 (GELU-backward epilogue) C gets v · (Φ(x) + x·φ(x)), x = pre[idx], exactly
// as gelu_backward computes dx from dy = v.

struct Params {
    M: u32, N: u32, K: u32, batch: u32,
    a_rs: u32, a_cs: u32, a_bs: u32, b_rs: u32,
    b_cs: u32, b_bs: u32, c_bs: u32, flags: u32,
    alpha: f32, k_chunk: u32, _p1: u32, _p2: u32, // k_chunk: split-K slice (matmul_blocked.wgsl), else 0
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read_write> pre: array<f32>;

fn finish(bi: u32, i: u32, j: u32, acc: f32) {
    var v = p.alpha * acc;
    if ((p.flags & 1u) != 0u) { v += bias[j]; }
    let idx = bi * p.c_bs + i * p.N + j;
    if ((p.flags & 2u) != 0u) { v += c[idx]; }
    if ((p.flags & 4u) != 0u) {
        pre[idx] = v;
        v = v * normal_cdf(v);
    }
    if ((p.flags & 8u) != 0u) {
        let x = pre[idx];
        let density = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
        v = v * (normal_cdf(x) + x * density);
    }
    c[idx] = v;
}
