// gelu_math.wgsl: the standard normal CDF Φ that GELU needs, shared by gelu.wgsl and the
// matmul epilogue (matmul_common.wgsl), prepended to each when it is compiled. The
// approximation and its error bounds are described in gelu.wgsl's header. Scalar, so the
// epilogue computes one Φ per output element; gelu.wgsl applies it lane by lane
// (`normal_cdf4`): the same operations per element either way, so the same bits.

const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;
const SPLIT: f32 = 0.921875;

// erf(z) = z + z·P(z²), accurate for |z| < SPLIT.
fn erf_small(z: f32) -> f32 {
    let s = z * z;
    var r = -5.835008923895657e-4;
    r = r * s + 4.956409800797701e-3;
    r = r * s - 2.6734990999102592e-2;
    r = r * s + 1.1280621588230133e-1;
    r = r * s - 3.761231005191803e-1;
    r = r * s + 1.2837906181812286e-1;
    return z + z * r;
}

// erfc(t) = exp(Q(t)), accurate for SPLIT ≤ t ≤ 4.
fn erfc_tail(t: f32) -> f32 {
    var q = 1.6025095419536228e-6;
    q = q * t - 4.535498010227457e-5;
    q = q * t + 5.907187005504966e-4;
    q = q * t - 4.730299115180969e-3;
    q = q * t + 2.6335589587688446e-2;
    q = q * t - 1.09925277531147e-1;
    q = q * t - 6.319952011108398e-1;
    q = q * t - 1.1301316022872925;
    q = q * t + 2.9429164715111256e-4;
    return exp(q);
}

// Φ(x) = 0.5 · (1 + erf(x/√2)).
fn normal_cdf(x: f32) -> f32 {
    let z = x * FRAC_1_SQRT_2;
    let t = abs(z);
    let near = 0.5 + 0.5 * erf_small(z);
    // erfc(t) for t ≥ SPLIT, 0 beyond 4 (t clamped so the polynomial stays in its range)
    let c = select(0.0, erfc_tail(min(t, 4.0)), t < 4.0);
    let far = select(1.0 - 0.5 * c, 0.5 * c, z < 0.0);
    return select(far, near, t < SPLIT);
}

// Φ of each lane.
fn normal_cdf4(x: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(normal_cdf(x.x), normal_cdf(x.y), normal_cdf(x.z), normal_cdf(x.w));
}

