// clip.wgsl: the step's gradient-clipping factors and its non-finite flag, on the device, so
// no value comes back to the host before AdamW (docs/METHOD.md "Optimisation").
//   bad      = some checks[c] (c < n_checks, f32 bits: the step's losses and embedding sums)
//              or some sq[t] (t < n_tensors, Σ g² of tensor t) is NaN or ±Inf
//   flag[0]  ← 1 when bad (sticky: never cleared here; AdamW, the EMA and the bank writes
//              skip their work while it is set, so the weights stay the last good ones)
//   mode 0:  scale[t] = 1
//   mode 1:  scale[t] = min(1, clip / (sqrt(sq[t]) + 1e-6))          (per tensor, the authors')
//   mode 2:  scale[t] = min(1, clip / (sqrt(Σ_t sq[t]) + 1e-6))      (one global norm)
// Finiteness is read from the exponent bits (all ones = NaN or Inf), which no fast-math
// assumption can fold away.
//
// Bindings: 0 params (uniform), 1 sq (read, n_tensors f32), 2 checks (read, ≥ n_checks
// words), 3 flag (read_write, 1 u32), 4 scale (read_write, n_tensors f32).
// Dispatch: one workgroup of one invocation (a few dozen values, summed in tensor order, so
// the global norm is deterministic). Numerics: f32; the host's f64 reference differs by
// rounding only (a factor below 1 only when clipping is active).

struct Params {
    n_tensors: u32,
    n_checks: u32,
    mode: u32,
    clip: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> sq: array<f32>;
@group(0) @binding(2) var<storage, read> checks: array<u32>;
@group(0) @binding(3) var<storage, read_write> flag: array<u32>;
@group(0) @binding(4) var<storage, read_write> scale: array<f32>;

fn non_finite(bits: u32) -> bool {
    return (bits & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(1)
fn clip_scales() {
    var bad = false;
    for (var c = 0u; c < p.n_checks; c++) {
        bad = bad || non_finite(checks[c]);
    }
    var total = 0.0;
    for (var t = 0u; t < p.n_tensors; t++) {
        bad = bad || non_finite(bitcast<u32>(sq[t]));
        total += sq[t];
    }
    if (bad) { flag[0] = 1u; }
    let global = min(1.0, p.clip / (sqrt(total) + 1e-6));
    for (var t = 0u; t < p.n_tensors; t++) {
        var s = 1.0;
        if (p.mode == 1u) {
            s = min(1.0, p.clip / (sqrt(sq[t]) + 1e-6));
        } else if (p.mode == 2u) {
            s = global;
        }
        scale[t] = s;
    }
}
