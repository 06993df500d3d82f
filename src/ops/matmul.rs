//! Batched matmul `C = alpha · op(A) · op(B) [+ bias] [+ C]` (shaders/matmul.wgsl): every
//! Linear layer and its gradients.
//!
//! Shapes: A (…, M, K) or, transposed, (…, K, M); B (K, N) or (N, K), optionally with the
//! same leading batch dims as A (a B without them is shared by every batch); C (…, M, N).
//! Backward of C = A·B: dA = dC·Bᵀ, dB = Aᵀ·dC, dbias = Σ_rows dC (see `sum_rows`).
//! Epilogues: `run_into(.., accumulate)` adds to C (a residual held there beforehand:
//! `Tape::linear_residual`); `run_gelu` writes v and GELU(v) (`Tape::linear_gelu`);
//! `run_gelu_backward` multiplies by GELU's derivative (the backward of `linear_gelu`'s GELU
//! fused into the next layer's dx product).
//!
//! Why one file of about 530 lines: one op family, its six variants behind one `Params`,
//! one launch path and one variant choice (rule, pin, override, autotune with its cache).

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, launch_with, Grid, Kernel};
use crate::ops::variant::{self, Variant};

pub static MATMUL: Shader = shader!("gelu_math.wgsl" + "matmul_common.wgsl" + "matmul.wgsl");
pub static MATMUL_SUBGROUP: Shader = shader!("gelu_math.wgsl" + "matmul_common.wgsl" + "matmul_subgroup.wgsl");
pub static MATMUL_BLOCKED: Shader = shader!(trusted "gelu_math.wgsl" + "matmul_common.wgsl" + "matmul_blocked.wgsl");

// The entry points; `wg` matters only for `Grid::Items` launches (the split-K reduction).
const MATMUL_NAIVE: Kernel = Kernel { shader: &MATMUL, entry: "matmul_naive", wg: 256 };
const MATMUL_TILED_SHARED: Kernel = Kernel { shader: &MATMUL, entry: "matmul_tiled_shared", wg: 256 };
const MATMUL_TILED_8X8: Kernel = Kernel { shader: &MATMUL, entry: "matmul_tiled_8x8", wg: 64 };
const MATMUL_SUBGROUP_16X4: Kernel = Kernel { shader: &MATMUL_SUBGROUP, entry: "matmul_subgroup_16x4", wg: 64 };
const MATMUL_BLOCKED_TILES: Kernel = Kernel { shader: &MATMUL_BLOCKED, entry: "matmul_blocked", wg: 256 };
const MATMUL_SPLIT_REDUCE: Kernel = Kernel { shader: &MATMUL_BLOCKED, entry: "matmul_split_reduce", wg: 64 };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_rs: u32,
    a_cs: u32,
    a_bs: u32,
    b_rs: u32,
    b_cs: u32,
    b_bs: u32,
    c_bs: u32,
    flags: u32,
    alpha: f32,
    /// Split-K slice length (blocked variants only), 0 = no split.
    k_chunk: u32,
    _pad: [u32; 2],
}

/// The op family name under which the device keeps its matmul choice.
pub(crate) const FAMILY: &str = "matmul";

/// How the kernel tiles the work (see the header of shaders/matmul.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulVariant {
    Naive,
    TiledShared,
    Tiled8x8,
    Subgroup16x4,
    /// matmul_blocked.wgsl with 128 x 128 block tiles, BK 8 (256 invocations, 8 x 8 each).
    Blocked128,
    /// matmul_blocked.wgsl with 64 x 64 block tiles, BK 16 (64 invocations, 8 x 8 each).
    Blocked64,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 6] = [
        MatmulVariant::Naive,
        MatmulVariant::TiledShared,
        MatmulVariant::Tiled8x8,
        MatmulVariant::Subgroup16x4,
        MatmulVariant::Blocked128,
        MatmulVariant::Blocked64,
    ];

    /// Whether `gpu` can run this variant (`subgroup_16x4` needs subgroups of 8 or more lanes).
    pub fn available(self, gpu: &Gpu) -> bool {
        self.runs_with(gpu.subgroups)
    }

    /// Whether this variant runs on a device with (`true`) or without subgroup operations.
    pub fn runs_with(self, subgroups: bool) -> bool {
        self != MatmulVariant::Subgroup16x4 || subgroups
    }

    /// The variants `gpu` can run, in `ALL` order.
    pub fn available_on(gpu: &Gpu) -> Vec<MatmulVariant> {
        MatmulVariant::ALL.into_iter().filter(|v| v.available(gpu)).collect()
    }

    /// The variant `Matmul` uses when none is set: the one fixed for this device (by
    /// `SOP_MATMUL=<name>`, or by `pin`: a resumed run keeps its own), else on CPU adapters
    /// `subgroup_16x4` where subgroups are available and `tiled_8x8` elsewhere (lavapipe's
    /// cost is per storage load, and timing there would cost seconds), else the fastest
    /// available variant, timed once on first use (`autotune`). A `SOP_MATMUL` that is not a
    /// variant, or names one the adapter cannot run, is an error.
    pub fn for_adapter(gpu: &Gpu) -> Result<MatmulVariant> {
        variant::fixed(gpu, || {
            if let Some(v) = MatmulVariant::from_env()? {
                if !v.available(gpu) {
                    return Err(SopError::Invalid(format!(
                        "SOP_MATMUL={} needs subgroup operations, which {} lacks",
                        v.name(),
                        gpu.adapter_name()
                    )));
                }
                return Ok(v);
            }
            Ok(if gpu.is_cpu() { MatmulVariant::cpu_rule(gpu) } else { variant::tuned(gpu) })
        })
    }

    /// The variant CPU adapters use without timing: `subgroup_16x4` where subgroups of 8 or
    /// more lanes exist, `tiled_8x8` elsewhere.
    pub fn cpu_rule(gpu: &Gpu) -> MatmulVariant {
        if gpu.subgroups {
            MatmulVariant::Subgroup16x4
        } else {
            MatmulVariant::Tiled8x8
        }
    }

    /// Use `v` on this device from now on (before any matmul ran): variants sum in different
    /// orders, so a resumed run must keep the variant it started with to repeat the
    /// uninterrupted run bit for bit. False when another variant is already fixed.
    pub fn pin(gpu: &Gpu, v: MatmulVariant) -> bool {
        variant::pin(gpu, v)
    }

    /// `SOP_MATMUL`, if set: a variant name, or an error that lists the valid ones.
    pub fn from_env() -> Result<Option<MatmulVariant>> {
        variant::from_env()
    }
    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Naive => "naive",
            MatmulVariant::TiledShared => "tiled_shared",
            MatmulVariant::Tiled8x8 => "tiled_8x8",
            MatmulVariant::Subgroup16x4 => "subgroup_16x4",
            MatmulVariant::Blocked128 => "blocked_128",
            MatmulVariant::Blocked64 => "blocked_64",
        }
    }
    pub fn parse(s: &str) -> Option<MatmulVariant> {
        variant::parse(s)
    }

    /// The split-K slice length this variant uses for a (batch, M, N, K) product, if any.
    pub fn split_k(self, batch: usize, m: usize, n: usize, k: usize) -> Option<usize> {
        let (bm, bn, bk) = self.block()?;
        split_k_chunk(batch, k, m.div_ceil(bm as usize) * n.div_ceil(bn as usize), bk as usize)
    }

    /// (BM, BN, BK) of the blocked variants (matmul_blocked.wgsl's overrides).
    fn block(self) -> Option<(u32, u32, u32)> {
        match self {
            MatmulVariant::Blocked128 => Some((128, 128, 8)),
            MatmulVariant::Blocked64 => Some((64, 64, 16)),
            _ => None,
        }
    }
}

impl Variant for MatmulVariant {
    const FAMILY: &'static str = FAMILY;
    const ENV: &'static str = "SOP_MATMUL";
    const KIND: &'static str = "matmul";
    const OP: &'static str = "matmul";
    const FALLBACK: Self = MatmulVariant::TiledShared;
    const TUNE_SHAPE: (usize, usize, usize) = AUTOTUNE_SHAPE;
    fn all() -> &'static [Self] {
        &MatmulVariant::ALL
    }
    fn name(self) -> &'static str {
        MatmulVariant::name(self)
    }
    fn runs_on(self, gpu: &Gpu) -> bool {
        self.available(gpu)
    }
    fn autotune(gpu: &Gpu) -> Result<Vec<(Self, f64)>> {
        autotune(gpu, AUTOTUNE_SHAPE)
    }
}

/// Workgroups a split-K product aims for: enough to fill a large GPU (an H100 has 132
/// multiprocessors) without making the reduction pass dominate.
const SPLIT_K_TARGET_GROUPS: usize = 256;
/// Each split-K slice keeps at least this much of K, so the partial sums stay long.
const SPLIT_K_MIN_CHUNK: usize = 256;

/// The split-K slice length for a blocked variant's (batch, M, N, K) product with `tiles`
/// output tiles, or None when one workgroup per tile already fills the device (or the
/// product is batched: slices then go through the batch index instead).
fn split_k_chunk(batch: usize, k: usize, tiles: usize, bk: usize) -> Option<usize> {
    if batch != 1 || tiles >= SPLIT_K_TARGET_GROUPS / 2 || k < 2 * SPLIT_K_MIN_CHUNK {
        return None;
    }
    let splits = SPLIT_K_TARGET_GROUPS.div_ceil(tiles).min(k / SPLIT_K_MIN_CHUNK);
    if splits < 2 {
        return None;
    }
    // A whole number of BK-steps per slice, and every slice non-empty.
    let chunk = k.div_ceil(splits).div_ceil(bk) * bk;
    (k.div_ceil(chunk) >= 2).then_some(chunk)
}

/// What the matmul's epilogue does with a product besides bias and accumulation (see
/// shaders/matmul_common.wgsl): GELU with the pre-activation written to the tensor, or
/// GELU's backward at the pre-activation the tensor holds.
#[derive(Clone, Copy)]
enum Epilogue<'t> {
    Gelu(&'t Tensor),
    GeluBackward(&'t Tensor),
}

/// One matmul call; build with `Matmul::new(a, b)` and the modifiers, then `run` or `run_into`.
#[derive(Clone, Copy)]
pub struct Matmul<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub trans_a: bool,
    pub trans_b: bool,
    pub bias: Option<&'a Tensor>,
    pub alpha: f32,
    pub variant: Option<MatmulVariant>,
}

struct Dims {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    out_shape: Vec<usize>,
    b_batched: bool,
}

impl<'a> Matmul<'a> {
    pub fn new(a: &'a Tensor, b: &'a Tensor) -> Self {
        Matmul { a, b, trans_a: false, trans_b: false, bias: None, alpha: 1.0, variant: None }
    }
    pub fn trans_a(mut self) -> Self {
        self.trans_a = true;
        self
    }
    pub fn trans_b(mut self) -> Self {
        self.trans_b = true;
        self
    }
    pub fn bias(mut self, bias: &'a Tensor) -> Self {
        self.bias = Some(bias);
        self
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    pub fn variant(mut self, v: MatmulVariant) -> Self {
        self.variant = Some(v);
        self
    }

    fn dims(&self) -> Result<Dims> {
        let (a, b) = (&self.a.shape, &self.b.shape);
        let err = |d: &str| {
            SopError::shape("matmul", format!("A {a:?}{} · B {b:?}{}: {d}", t(self.trans_a), t(self.trans_b)))
        };
        if a.len() < 2 || b.len() < 2 {
            return Err(err("both operands need at least 2 dims"));
        }
        let (ar, ac) = (a[a.len() - 2], a[a.len() - 1]);
        let (br, bc) = (b[b.len() - 2], b[b.len() - 1]);
        let (m, k) = if self.trans_a { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if self.trans_b { (bc, br) } else { (br, bc) };
        if k != kb {
            return Err(err("inner dimensions differ"));
        }
        let batch_dims = &a[..a.len() - 2];
        let b_batched = b.len() > 2;
        if b_batched && &b[..b.len() - 2] != batch_dims {
            return Err(err("batch dimensions differ"));
        }
        if let Some(bias) = self.bias {
            if bias.numel() != n {
                return Err(err(&format!("bias has {} elements, N = {n}", bias.numel())));
            }
        }
        for x in [self.a, self.b].into_iter().chain(self.bias) {
            if x.dtype != DType::F32 {
                return Err(err("operands must be f32"));
            }
        }
        let mut out_shape = batch_dims.to_vec();
        out_shape.extend([m, n]);
        Ok(Dims { batch: batch_dims.iter().product(), m, n, k, out_shape, b_batched })
    }

    /// A new output tensor.
    pub fn run(&self, gpu: &Gpu) -> Result<Tensor> {
        let d = self.dims()?;
        let out = gpu.empty(&d.out_shape, DType::F32)?;
        self.encode(gpu, &d, &out, false, None)?;
        Ok(out)
    }

    /// Into `out` (shape (…, M, N)); `accumulate` adds to what `out` holds.
    pub fn run_into(&self, gpu: &Gpu, out: &Tensor, accumulate: bool) -> Result<()> {
        let d = self.dims()?;
        if out.numel() != d.out_shape.iter().product::<usize>() {
            return Err(SopError::shape("matmul", format!("output {:?}, expected {:?}", out.shape, d.out_shape)));
        }
        self.encode(gpu, &d, out, accumulate, None)
    }

    /// The product (with its bias) and its GELU, in one dispatch (the epilogue): (v, GELU(v)),
    /// the bits of `run` followed by `gelu_forward`.
    pub fn run_gelu(&self, gpu: &Gpu) -> Result<(Tensor, Tensor)> {
        let d = self.dims()?;
        let pre = gpu.empty(&d.out_shape, DType::F32)?;
        let out = gpu.empty(&d.out_shape, DType::F32)?;
        self.encode(gpu, &d, &out, false, Some(Epilogue::Gelu(&pre)))?;
        Ok((pre, out))
    }

    /// The product v (with its bias) times GELU's derivative at `x`, in one dispatch (the
    /// backward epilogue): dx = v · (Φ(x) + x·φ(x)), the bits of `run` followed by
    /// `gelu_backward(x, v)`. `x` (the GELU's input) has the product's shape.
    pub fn run_gelu_backward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let d = self.dims()?;
        if x.numel() != d.out_shape.iter().product::<usize>() || x.dtype != DType::F32 {
            return Err(SopError::shape("matmul", format!("GELU input {:?}, expected {:?}", x.shape, d.out_shape)));
        }
        let out = gpu.empty(&d.out_shape, DType::F32)?;
        self.encode(gpu, &d, &out, false, Some(Epilogue::GeluBackward(x)))?;
        Ok(out)
    }

    fn encode(&self, gpu: &Gpu, d: &Dims, out: &Tensor, accumulate: bool, epi: Option<Epilogue>) -> Result<()> {
        let (m, n, k) = (d.m as u32, d.n as u32, d.k as u32);
        let (a_rs, a_cs) = if self.trans_a { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if self.trans_b { (1, k) } else { (n, 1) };
        let params = Params {
            m,
            n,
            k,
            batch: d.batch as u32,
            a_rs,
            a_cs,
            a_bs: m * k,
            b_rs,
            b_cs,
            b_bs: if d.b_batched { k * n } else { 0 },
            c_bs: m * n,
            flags: self.bias.is_some() as u32
                | (accumulate as u32) << 1
                | (matches!(epi, Some(Epilogue::Gelu(_))) as u32) << 2
                | (matches!(epi, Some(Epilogue::GeluBackward(_))) as u32) << 3,
            alpha: self.alpha,
            k_chunk: 0,
            _pad: [0; 2],
        };
        if d.m == 0 || d.n == 0 || d.batch == 0 {
            return Ok(());
        }
        let variant = match self.variant {
            Some(v) => v,
            None => MatmulVariant::for_adapter(gpu)?,
        };
        if !variant.available(gpu) {
            return Err(SopError::Invalid(format!(
                "matmul variant {} needs subgroup operations, which {} lacks",
                variant.name(),
                gpu.adapter_name()
            )));
        }
        // Slot 5 holds the pre-activation the GELU epilogue writes or its backward reads;
        // otherwise C is bound there too.
        let pre = match epi {
            Some(Epilogue::Gelu(t) | Epilogue::GeluBackward(t)) => t,
            None => out,
        };
        let binds = [
            Bind::Read(self.a),
            Bind::Read(self.b),
            Bind::Read(self.bias.unwrap_or(self.a)),
            Bind::Write(out),
            Bind::Write(pre),
        ];
        // Every variant but `naive` covers a 64×64 tile of C per workgroup.
        let tiles64 = [n.div_ceil(64), m.div_ceil(64), d.batch as u32];
        let (kernel, groups) = match variant {
            MatmulVariant::Naive => (&MATMUL_NAIVE, [n.div_ceil(16), m.div_ceil(16), d.batch as u32]),
            MatmulVariant::TiledShared => (&MATMUL_TILED_SHARED, tiles64),
            MatmulVariant::Tiled8x8 => (&MATMUL_TILED_8X8, tiles64),
            MatmulVariant::Subgroup16x4 => (&MATMUL_SUBGROUP_16X4, tiles64),
            MatmulVariant::Blocked128 | MatmulVariant::Blocked64 => {
                return self.encode_blocked(gpu, d, (out, pre), variant, params)
            }
        };
        launch(gpu, kernel, &params, &binds, Grid::Groups(groups))
    }

    /// The blocked variants: one pass, or split-K (partials into a scratch tensor, then
    /// `matmul_split_reduce`) when the output has too few tiles to fill the device.
    fn encode_blocked(
        &self,
        gpu: &Gpu,
        d: &Dims,
        (out, pre): (&Tensor, &Tensor),
        variant: MatmulVariant,
        params: Params,
    ) -> Result<()> {
        let (bm, bn, bk) = variant.block().expect("a blocked variant");
        debug_assert!(bk > 0);
        let constants = [("BM", bm as f64), ("BN", bn as f64), ("BK", bk as f64)];
        let (tx, ty) = ((d.n as u32).div_ceil(bn), (d.m as u32).div_ceil(bm));
        let bias = self.bias.unwrap_or(self.a);
        let Some(chunk) = variant.split_k(d.batch, d.m, d.n, d.k) else {
            let binds = [Bind::Read(self.a), Bind::Read(self.b), Bind::Read(bias), Bind::Write(out), Bind::Write(pre)];
            return launch_with(
                gpu,
                &MATMUL_BLOCKED_TILES,
                &constants,
                &params,
                &binds,
                Grid::Groups([tx, ty, d.batch as u32]),
            );
        };
        let splits = d.k.div_ceil(chunk);
        let partial = gpu.empty(&[splits, d.m, d.n], DType::F32)?;
        let first = Params { k_chunk: chunk as u32, flags: 0, alpha: 1.0, c_bs: (d.m * d.n) as u32, ..params };
        let binds =
            [Bind::Read(self.a), Bind::Read(self.b), Bind::Read(bias), Bind::Write(&partial), Bind::Write(&partial)];
        launch_with(gpu, &MATMUL_BLOCKED_TILES, &constants, &first, &binds, Grid::Groups([tx, ty, splits as u32]))?;
        let second = Params { batch: splits as u32, k_chunk: 0, ..params };
        let binds = [Bind::Read(&partial), Bind::Read(self.b), Bind::Read(bias), Bind::Write(out), Bind::Write(pre)];
        launch_with(gpu, &MATMUL_SPLIT_REDUCE, &constants, &second, &binds, Grid::Items(d.m * d.n))
    }
}

/// (M, K, N) of the product `for_adapter` times: an MLP product of ViT-S at a batch of
/// 4096 tokens, large enough that the kernel, not the launch, decides.
pub const AUTOTUNE_SHAPE: (usize, usize, usize) = (4096, 384, 1536);

/// Products per timed sample: one product followed by a wait measures the wait (about
/// 0.4 ms on an H200, longer than the product itself), so a sample records this many
/// back to back and divides.
const AUTOTUNE_ITERS: usize = 20;

/// Median milliseconds per product of each variant on an (M, K)·(K, N) product, after one
/// warm-up run that also builds the pipeline; 3 samples of `AUTOTUNE_ITERS` products each.
pub fn autotune(gpu: &Gpu, (m, k, n): (usize, usize, usize)) -> Result<Vec<(MatmulVariant, f64)>> {
    let a = gpu.upload_f32(&[m, k], &(0..m * k).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>())?;
    let b = gpu.upload_f32(&[k, n], &(0..k * n).map(|i| (i % 5) as f32 * 0.1).collect::<Vec<_>>())?;
    let out = gpu.empty(&[m, n], DType::F32)?;
    MatmulVariant::available_on(gpu)
        .into_iter()
        .map(|v| {
            let ms =
                variant::median_ms(gpu, AUTOTUNE_ITERS, || Matmul::new(&a, &b).variant(v).run_into(gpu, &out, false));
            Ok((v, ms?))
        })
        .collect()
}

/// The variant with the smallest time (the first one on ties).
pub fn fastest(timings: &[(MatmulVariant, f64)]) -> (MatmulVariant, f64) {
    variant::fastest(timings)
}

fn t(trans: bool) -> &'static str {
    if trans {
        "ᵀ"
    } else {
        ""
    }
}

/// `C = op(A)·op(B)` with the adapter's variant.
pub fn matmul(gpu: &Gpu, a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Result<Tensor> {
    let mut mm = Matmul::new(a, b);
    mm.trans_a = trans_a;
    mm.trans_b = trans_b;
    mm.run(gpu)
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![
        params_layout!(
            MATMUL,
            Params,
            [m, n, k, batch, a_rs, a_cs, a_bs, b_rs, b_cs, b_bs, c_bs, flags, alpha, k_chunk]
        ),
        params_layout!(
            MATMUL_SUBGROUP,
            Params,
            [m, n, k, batch, a_rs, a_cs, a_bs, b_rs, b_cs, b_bs, c_bs, flags, alpha, k_chunk]
        ),
        params_layout!(
            MATMUL_BLOCKED,
            Params,
            [m, n, k, batch, a_rs, a_cs, a_bs, b_rs, b_cs, b_bs, c_bs, flags, alpha, k_chunk]
        ),
    ]
}
