//! Flat tensor sets: many tensors as views into one buffer, each in a slot of whole
//! `VIEW_ALIGN`-element chunks (zero padding between them). A model's parameters, their
//! gradients, AdamW's moments and the EMA teacher share one `FlatLayout`, so the optimiser,
//! the EMA and the gradients' sums of squares each run over all tensors in one or a few
//! dispatches (`ops::adamw::adamw_multi`, `ops::ema`, `ops::reduce::SquaresPlan`).

use crate::error::{Result, SopError};
use crate::gpu::buffers::VIEW_ALIGN;
use crate::gpu::{DType, Gpu, Tensor};

/// Where each tensor of a set lives in its flat buffer, in elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatLayout {
    pub shapes: Vec<Vec<usize>>,
    /// First element of each tensor's slot (a multiple of `VIEW_ALIGN`).
    pub offsets: Vec<usize>,
    /// Slot length of each tensor: its element count rounded up to `VIEW_ALIGN` (at least one chunk).
    pub slots: Vec<usize>,
    /// Elements of the whole flat buffer.
    pub total: usize,
}

impl FlatLayout {
    pub fn new(shapes: &[Vec<usize>]) -> FlatLayout {
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut slots = Vec::with_capacity(shapes.len());
        let mut total = 0;
        for s in shapes {
            let slot = s.iter().product::<usize>().max(1).div_ceil(VIEW_ALIGN) * VIEW_ALIGN;
            offsets.push(total);
            slots.push(slot);
            total += slot;
        }
        FlatLayout { shapes: shapes.to_vec(), offsets, slots, total: total.max(VIEW_ALIGN) }
    }

    pub fn len(&self) -> usize {
        self.shapes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }
    pub fn numel(&self, i: usize) -> usize {
        self.shapes[i].iter().product()
    }
}

/// A flat f32 buffer and its tensors as views.
#[derive(Clone)]
pub struct FlatTensors {
    pub flat: Tensor,
    pub views: Vec<Tensor>,
}

impl Gpu {
    /// The views of `layout` into `flat` (which holds `layout.total` elements).
    fn flat_views(&self, layout: &FlatLayout, flat: Tensor) -> Result<FlatTensors> {
        let views = (0..layout.len())
            .map(|i| flat.view(layout.offsets[i], &layout.shapes[i], layout.slots[i]))
            .collect::<Result<_>>()?;
        Ok(FlatTensors { flat, views })
    }

    /// Zeros in `layout` (padding included).
    pub fn flat_zeros(&self, layout: &FlatLayout) -> Result<FlatTensors> {
        self.flat_views(layout, self.zeros(&[layout.total], DType::F32)?)
    }

    /// The tensors `data` (one per layout entry, each its shape's element count) uploaded
    /// into one flat buffer, padding zero, in one write.
    pub fn flat_upload(&self, layout: &FlatLayout, data: &[&[f32]]) -> Result<FlatTensors> {
        if data.len() != layout.len() {
            return Err(SopError::shape("flat_upload", format!("{} tensors for {} slots", data.len(), layout.len())));
        }
        let mut host = vec![0f32; layout.total];
        for (i, d) in data.iter().enumerate() {
            if d.len() != layout.numel(i) {
                return Err(SopError::shape(
                    "flat_upload",
                    format!("{} values for tensor {i} of shape {:?}", d.len(), layout.shapes[i]),
                ));
            }
            host[layout.offsets[i]..layout.offsets[i] + d.len()].copy_from_slice(d);
        }
        self.flat_views(layout, self.upload_f32(&[layout.total], &host)?)
    }
}
