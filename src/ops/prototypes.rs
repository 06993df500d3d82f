//! SOP's prototype members, their weights and the vote matrix Y, on the device
//! (shaders/prototypes.wgsl; docs/METHOD.md "Building the prototypes", steps 3 and 5): the
//! permutation and the top-k of the anchor similarities stay where the GPU left them, so
//! building a task's prototypes needs no blocking read. No backward: rows are discrete and
//! the objective takes no gradient through Y or the weights.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, u32_of, Grid, Kernel, WG};

pub static PROTOTYPES: Shader = shader!("prototypes.wgsl");

const PROTOTYPE_MEMBERS: Kernel = Kernel { shader: &PROTOTYPES, entry: "prototype_members", wg: WG };
const PROTOTYPE_VOTES: Kernel = Kernel { shader: &PROTOTYPES, entry: "prototype_votes", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    p: u32,
    e: u32,
    kept: u32,
    smoothing: f32,
    kept_minus_one: f32,
    _p0: u32,
    _p1: u32,
}

/// The kept prototypes' members, prototype-major (M = P'·E rows).
pub struct PrototypeMembers {
    /// (M) u32 bank row of each member: the anchor, then its SEs nearest first.
    pub rows: Tensor,
    /// (M) f32 member weights: 1 − s for the anchor, the similarity for an SE.
    pub weights: Tensor,
    /// (M, P') f32 row-stochastic vote matrix Y.
    pub votes: Tensor,
}

/// Members and votes of the prototypes of the kept anchors `keep` (P') u32, each < P, from
/// `perm` (N) u32 (its first P = `anchors` entries are the anchors, the rest the pool) and,
/// when E = `experts` > 1, `topk` = (values, indices), both (P, E − 1), of each anchor's
/// similarities to the pool (indices are pool positions). With E = 1, `topk` is None.
/// Dispatches `prototype_members`, then `prototype_votes`. `keep` lives on the device, so
/// its entries are not checked here (the caller checks the host list it uploads).
pub fn prototype_members_votes(
    gpu: &Gpu,
    perm: &Tensor,
    topk: Option<(&Tensor, &Tensor)>,
    keep: &Tensor,
    anchors: usize,
    experts: usize,
    smoothing: f32,
) -> Result<PrototypeMembers> {
    const OP: &str = "prototypes";
    let err = |d: String| {
        SopError::shape(OP, format!("perm {:?}, keep {:?}, P {anchors}, E {experts}: {d}", perm.shape, keep.shape))
    };
    let u32_vector = |t: &Tensor| t.shape.len() == 1 && t.dtype == DType::U32;
    if !u32_vector(perm) || !u32_vector(keep) {
        return Err(err("perm and keep must be u32 vectors".into()));
    }
    let (n, kept) = (perm.shape[0], keep.shape[0]);
    if experts == 0 || anchors < 2 || anchors + experts - 1 > n {
        return Err(err("need E >= 1, P >= 2 and N >= P + E − 1".into()));
    }
    if kept < 2 || kept > anchors {
        return Err(err("need 2 <= P' <= P kept prototypes".into()));
    }
    match (experts, topk) {
        (1, None) => {}
        (1, Some(_)) => return Err(err("E = 1 takes no top-k".into())),
        (_, None) => return Err(err("E > 1 needs the top-k values and indices".into())),
        (_, Some((vals, idx))) => {
            let want = [anchors, experts - 1];
            if vals.shape != want || idx.shape != want || vals.dtype != DType::F32 || idx.dtype != DType::U32 {
                let (vs, is) = (&vals.shape, &idx.shape);
                let got = format!("top-k values {vs:?} {:?}, indices {is:?} {:?}", vals.dtype, idx.dtype);
                return Err(err(format!("{got}; expected {want:?} f32 and u32")));
            }
        }
    }
    let m = kept * experts;
    let prm = Params {
        n: u32_of(OP, "N", n)?,
        p: u32_of(OP, "P", anchors)?,
        e: u32_of(OP, "E", experts)?,
        kept: u32_of(OP, "P'", kept)?,
        smoothing,
        kept_minus_one: (kept - 1) as f32,
        _p0: 0,
        _p1: 0,
    };
    u32_of(OP, "M·P'", m * kept)?;
    let rows = gpu.empty(&[m], DType::U32)?;
    let weights = gpu.empty(&[m], DType::F32)?;
    let votes = gpu.empty(&[m, kept], DType::F32)?;
    // With E = 1 the shader never reads idx or vals; perm stands in for them.
    let (vals, idx) = topk.unwrap_or((perm, perm));
    let binds = [
        Bind::Read(perm),
        Bind::Read(idx),
        Bind::Read(vals),
        Bind::Read(keep),
        Bind::Write(&rows),
        Bind::Write(&weights),
        Bind::Write(&votes),
    ];
    launch(gpu, &PROTOTYPE_MEMBERS, &prm, &binds, Grid::Items(m))?;
    launch(gpu, &PROTOTYPE_VOTES, &prm, &binds, Grid::Items(m * kept))?;
    Ok(PrototypeMembers { rows, weights, votes })
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(PROTOTYPES, Params, [n, p, e, kept, smoothing, kept_minus_one])]
}
