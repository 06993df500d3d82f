// adamw.wgsl: one AdamW step on one parameter tensor, in place, PyTorch semantics
// (torch.optim.AdamW, amsgrad off):
//   g = grad · grad_scale                        (grad_scale implements gradient clipping)
//   param ← param · (1 − lr · weight_decay)      (decoupled weight decay)
//   m ← β1 · m + (1 − β1) · g
//   v ← β2 · v + (1 − β2) · g²
//   param ← param − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
// The bias corrections are computed on the host in f64 and arrive as step_size =
// lr / (1 − β1^t) and inv_sqrt_bc2 = 1 / sqrt(1 − β2^t); decay = 1 − lr · weight_decay and
// 1 − β1, 1 − β2 likewise, so the shader rounds each constant once.
//
// Bindings: 0 params (uniform), 1 grad (read), 2 param (read_write), 3 m (read_write),
// 4 v (read_write); all of n elements. adamw_multi also: 5 table (read, 3 u32 per tensor:
// [offset, numel, flags]), 6 scale (read, f32 per tensor), 7 skip (read, 1 u32).
//
// adamw_multi: the same step on every tensor of a flat set at once (gpu::flat: grad, param,
// m and v are flat buffers of one layout, n elements in all). Invocation i finds its tensor
// t by binary search over the offsets (ascending from 0); elements past the tensor's numel
// (slot padding) and tensors without flags bit 1 (no gradient this step) are left alone;
// flags bit 0 = weight decay (else decay 1, as lr·0 gives); grad_scale is scale[t] (the
// clipping factor from clip.wgsl). Nothing is written while skip[0] ≠ 0 (the step's
// non-finite flag). Per element it computes exactly what adamw_step computes.
// Dispatch: one invocation per element, i = (wid.x + wid.y·nwg.x)·WG + lid < n, from
// gpu.grid(ceil(n / WG)). Numerics: f32 throughout, as PyTorch's fp32 path.

struct Params {
    n: u32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    grad_scale: f32,
    n_tensors: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> table: array<u32>;
@group(0) @binding(6) var<storage, read> scale: array<f32>;
@group(0) @binding(7) var<storage, read> skip: array<u32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn adamw_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.n) { return; }
    let g = grad[i] * p.grad_scale;
    let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
    let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) * p.inv_sqrt_bc2 + p.eps;
    param[i] = param[i] * p.decay - p.step_size * mi / denom;
}

@compute @workgroup_size(WG)
fn adamw_multi(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.n || skip[0] != 0u) { return; }
    var lo = 0u;
    var hi = p.n_tensors;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (table[3u * mid] <= i) { lo = mid; } else { hi = mid; }
    }
    let flags = table[3u * lo + 2u];
    if (i - table[3u * lo] >= table[3u * lo + 1u] || (flags & 2u) == 0u) { return; }
    let decay = select(1.0, p.decay, (flags & 1u) != 0u);
    let g = grad[i] * scale[lo];
    let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
    let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) * p.inv_sqrt_bc2 + p.eps;
    param[i] = param[i] * decay - p.step_size * mi / denom;
}
