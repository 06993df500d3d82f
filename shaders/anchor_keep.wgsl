// anchor_keep.wgsl: the 1/CV anchor keep of SOP (docs/METHOD.md "Building the prototypes",
// step 4, `AnchorSampling::InverseCv`) on the device, so the host never reads the
// similarities back. One workgroup does the whole task:
//   1. weight of anchor a (P anchors, each with k = E − 1 SE similarities s, nearest first):
//        mean = Σ s / k,  var = Σ (s − mean)² / max(k − 1, 1),
//        cv = √var / mean · f,  f = 1 + 1/(4n) (n the pool size, given by the host),
//        w_a = 1/cv when cv is finite and > 0, else 0;  every w_a = 1 when none is > 0.
//   2. P′ = P/2 successive draws without replacement (torch.multinomial's way): draw d takes
//      the host's uniform u_d in [0, 1), r = u_d · Σ w, and picks the first anchor i with
//      w_i > 0 and r < w_i after r −= w_j over the anchors j < i before it (the last anchor
//      with w > 0 when rounding leaves r ≥ Σ w); then w_i = 0.
// The sequential walk is split over the WG invocations: invocation t owns the anchors
// [t·c, (t+1)·c), c = ceil(P / WG); an inclusive scan of the per-invocation sums gives each
// one [before, before + own) of [0, Σ w), and only the one whose interval holds r walks its
// anchors from r − before (ranges tile [0, Σ w) exactly: one invocation's end is the next
// one's start, the same stored value).
//
// Bindings: 0 params (uniform), 1 sims (read, (P, k) f32, the topk values), 2 draws (read,
// (P′) f32 uniforms), 3 weights (read_write, (P) f32: the weights of step 1, after the
// all-zero rule), 4 work (read_write, (P) f32 scratch: the weights as the draws zero them),
// 5 keep (read_write, (P′) u32 the kept anchors in draw order).
// Dispatch: exactly one workgroup of WG = 256 invocations.
//
// Numerics: f32 throughout (the host reference is f64): the weights agree to a few ULP, the
// sums to the rounding of P terms; a draw can differ from the f64 one only when r falls
// within that rounding of an anchor's boundary. Deterministic: the scan and the sums have a
// fixed order, and the only atomics are integer ones on workgroup values (a flag, a min and
// a max of anchor indices).

struct Params {
    P: u32,
    k: u32,
    kept: u32,
    _p0: u32,
    pool_factor: f32,
    _p1: u32,
    _p2: u32,
    _p3: u32,
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> sims: array<f32>;
@group(0) @binding(2) var<storage, read> draws: array<f32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> work: array<f32>;
@group(0) @binding(5) var<storage, read_write> keep: array<u32>;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
const F32_MAX: f32 = 3.40282347e38;

var<workgroup> scan: array<f32, 256>;
var<workgroup> any_positive: atomic<u32>;
var<workgroup> picked: atomic<u32>;
// 1 + the last anchor with w > 0 (0: none).
var<workgroup> last_positive: atomic<u32>;

// 1/CV of anchor a's SE similarities, 0 where CV is not finite and positive.
fn inverse_cv(a: u32) -> f32 {
    let o = a * prm.k;
    var sum = 0.0;
    for (var j = 0u; j < prm.k; j++) {
        sum += sims[o + j];
    }
    let mean = sum / f32(prm.k);
    var ss = 0.0;
    for (var j = 0u; j < prm.k; j++) {
        let d = sims[o + j] - mean;
        ss += d * d;
    }
    let v = ss / max(f32(prm.k) - 1.0, 1.0);
    let cv = sqrt(v) / mean * prm.pool_factor;
    // NaN fails both comparisons.
    if (cv > 0.0 && cv <= F32_MAX) {
        return 1.0 / cv;
    }
    return 0.0;
}

@compute @workgroup_size(256)
fn anchor_keep_inverse_cv(@builtin(local_invocation_index) t: u32) {
    if (t == 0u) {
        atomicStore(&any_positive, 0u);
    }
    workgroupBarrier();
    for (var a = t; a < prm.P; a += WG) {
        let w = inverse_cv(a);
        weights[a] = w;
        if (w > 0.0) {
            atomicMax(&any_positive, 1u);
        }
    }
    workgroupBarrier();
    let none_positive = atomicLoad(&any_positive) == 0u;
    for (var a = t; a < prm.P; a += WG) {
        // Each invocation rewrites only the anchors it wrote above.
        let w = select(weights[a], 1.0, none_positive);
        weights[a] = w;
        work[a] = w;
    }
    storageBarrier();
    workgroupBarrier();
    let c = (prm.P + WG - 1u) / WG;
    let lo = min(t * c, prm.P);
    let hi = min(lo + c, prm.P);
    for (var d = 0u; d < prm.kept; d++) {
        var own = 0.0;
        var last = 0u;
        for (var i = lo; i < hi; i++) {
            let x = work[i];
            own += x;
            if (x > 0.0) {
                last = i + 1u;
            }
        }
        scan[t] = own;
        if (t == 0u) {
            atomicStore(&picked, NONE);
            atomicStore(&last_positive, 0u);
        }
        workgroupBarrier();
        atomicMax(&last_positive, last);
        // Inclusive scan (Hillis–Steele): scan[t] = Σ_{u ≤ t} own_u.
        for (var off = 1u; off < WG; off = off << 1u) {
            var add = 0.0;
            if (t >= off) {
                add = scan[t - off];
            }
            workgroupBarrier();
            scan[t] += add;
            workgroupBarrier();
        }
        let r = draws[d] * scan[WG - 1u];
        var before = 0.0;
        if (t > 0u) {
            before = scan[t - 1u];
        }
        if (before <= r && r < scan[t]) {
            var rr = r - before;
            var found = NONE;
            for (var i = lo; i < hi; i++) {
                let x = work[i];
                if (x > 0.0 && rr < x) {
                    found = i;
                    break;
                }
                rr -= x;
            }
            if (found != NONE) {
                atomicMin(&picked, found);
            }
        }
        workgroupBarrier();
        if (t == 0u) {
            var pick = atomicLoad(&picked);
            if (pick == NONE) {
                // r ≥ Σ w after rounding (or a walk that ran off its interval): the last
                // anchor with w > 0, as the host's walk does.
                pick = max(atomicLoad(&last_positive), 1u) - 1u;
            }
            keep[d] = pick;
            work[pick] = 0.0;
        }
        storageBarrier();
        workgroupBarrier();
    }
}
