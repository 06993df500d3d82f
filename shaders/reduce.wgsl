// reduce.wgsl: deterministic sums without atomics: column sums over chunks of rows, the one
// building block of `sum_rows` (bias gradients), `sum` and `sum_squares` (gradient norms).
//
// Bindings (the Rust op passes them in this order):
//   0 p    uniform Params
//   1 x    read        n elements, seen as a (rows, cols) row-major matrix; the last row may
//                      be short (elements with index ≥ n are skipped)
//   2 out  read_write  (nchunks, cols): out[c, j] = Σ_{r in chunk c} f(x[r·cols + j])
// where chunk c holds rows c·chunk .. min((c+1)·chunk, rows) and f(v) = v, or v² when
// `square` is 1.
//
// How the Rust op uses it (every stage is a fixed function of the shape: deterministic):
//   sum_rows (R, C):   cols = C, chunk = 64 rows; the (ceil(R/64), C) partial sums are
//                      summed again the same way until one row is left.
//   sum, sum_squares:  x viewed as rows of cols = ceil(n/256) (one chunk of ≤ 256 rows):
//                      invocation j sums x[j], x[j + cols], x[j + 2·cols], … (neighbouring
//                      invocations read neighbouring addresses), then the cols partials are
//                      summed the same way until one value is left. square only on the first
//                      stage.
//
// Dispatch: one invocation per output element g = c·cols + j (nchunks·cols of them),
// g = (wid.x + wid.y * nwg.x) * WG + lid.x, workgroups laid out by `gpu.grid`.
// Numerics: f32 accumulation in row order within a chunk, chunks summed in order by the next
// stage, so a sum of n terms is a tree of depth ~log_256(n) of sequential sums: relative error
// of order (stages · 256) · 2⁻²⁴ in the worst case for terms of one sign, far less on average.

struct Params {
    n: u32, cols: u32, rows: u32, chunk: u32,
    nchunks: u32, square: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (g >= p.nchunks * p.cols) { return; }
    let c = g / p.cols;
    let j = g % p.cols;
    let r0 = c * p.chunk;
    let r1 = min(r0 + p.chunk, p.rows);
    var acc = 0.0;
    if (p.square != 0u) {
        for (var r = r0; r < r1; r++) {
            let i = r * p.cols + j;
            if (i < p.n) { let v = x[i]; acc += v * v; }
        }
    } else {
        for (var r = r0; r < r1; r++) {
            let i = r * p.cols + j;
            if (i < p.n) { acc += x[i]; }
        }
    }
    out[g] = acc;
}
