//! The teacher's exponential moving average of the student (shaders/ema.wgsl), in place:
//! teacher ← m·teacher + (1 − m)·student; training runs it once over all parameters (their
//! flat buffers), skipped on the device after a non-finite step (`ema_update_unless`).

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, SopError};
use crate::gpu::params_layout::{params_layout, ParamsLayout};
use crate::gpu::pipelines::shader;
use crate::gpu::{Bind, DType, Gpu, Shader, Tensor};
use crate::ops::launch::{launch, Grid, Kernel, WG};

pub static EMA: Shader = shader!("ema.wgsl");

const EMA_UPDATE: Kernel = Kernel { shader: &EMA, entry: "ema_update", wg: WG };
const EMA_UPDATE_UNLESS: Kernel = Kernel { shader: &EMA, entry: "ema_update_unless", wg: WG };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    momentum: f32,
    one_minus_momentum: f32,
    _p0: u32,
}

/// teacher ← momentum·teacher + (1 − momentum)·student, momentum in [0, 1].
pub fn ema_update(gpu: &Gpu, teacher: &Tensor, student: &Tensor, momentum: f32) -> Result<()> {
    ema(gpu, teacher, student, momentum, None)
}

/// `ema_update`, unless `skip[0]` ≠ 0 (one u32: the step's non-finite flag) when the
/// teacher is left as it was. Training runs it once on the flat buffers of all parameters.
pub fn ema_update_unless(gpu: &Gpu, teacher: &Tensor, student: &Tensor, momentum: f32, skip: &Tensor) -> Result<()> {
    ema(gpu, teacher, student, momentum, Some(skip))
}

fn ema(gpu: &Gpu, teacher: &Tensor, student: &Tensor, momentum: f32, skip: Option<&Tensor>) -> Result<()> {
    let err = |d: &str| {
        SopError::shape(
            "ema",
            format!("teacher {:?}, student {:?}, momentum {momentum}: {d}", teacher.shape, student.shape),
        )
    };
    if teacher.shape != student.shape || teacher.dtype != DType::F32 || student.dtype != DType::F32 {
        return Err(err("teacher and student must be f32 of one shape"));
    }
    if teacher.same_buffer(student) {
        return Err(err("teacher and student share a buffer"));
    }
    if !(0.0..=1.0).contains(&momentum) {
        return Err(err("momentum must be in [0, 1]"));
    }
    let n = teacher.numel();
    if n > u32::MAX as usize {
        return Err(err("more than 2³² elements"));
    }
    let prm = Params { n: n as u32, momentum, one_minus_momentum: (1.0 - momentum as f64) as f32, _p0: 0 };
    match skip {
        None => launch(gpu, &EMA_UPDATE, &prm, &[Bind::Read(student), Bind::Write(teacher)], Grid::Items(n)),
        Some(s) => {
            if s.numel() != 1 || s.dtype != DType::U32 {
                return Err(err("skip must be one u32"));
            }
            let binds = [Bind::Read(student), Bind::Write(teacher), Bind::Read(s)];
            launch(gpu, &EMA_UPDATE_UNLESS, &prm, &binds, Grid::Items(n))
        }
    }
}

/// The layout of `Params` for each shader that reads it (checked in `ops::tests`).
pub fn params_layouts() -> Vec<ParamsLayout> {
    vec![params_layout!(EMA, Params, [n, momentum, one_minus_momentum])]
}
