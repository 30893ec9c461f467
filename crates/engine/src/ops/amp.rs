//! Tensor-level AMP ops (the amp family): PyTorch's `_amp_foreach_non_finite_check_and_unscale_`
//! and `_amp_update_scale_`, in place, with the checks and version bumps of any in-place write.

use super::same_device;
use crate::backend::{ScaleState, ScaleUpdateSpec};
use crate::{DType, Error, Result, Tensor};

/// Errors unless `t` is one value of `dtype` (a flag, a scale or a tracker).
pub(crate) fn expect_scalar(op: &'static str, what: &str, t: &Tensor, dtype: DType) -> Result<()> {
    if t.elem_count() != 1 || t.dtype() != dtype || !t.owns_whole_buffer() {
        return Err(Error::dtype(
            op,
            format!(
                "{what} must be one {dtype} value in its own buffer, got {:?} {}",
                t.dims(),
                t.dtype()
            ),
        ));
    }
    Ok(())
}

/// Errors unless every tensor is a contiguous view of its whole buffer (what the fused
/// in-place kernels write), naming the first that is not.
pub(crate) fn expect_whole(op: &'static str, what: &str, ts: &[&Tensor]) -> Result<()> {
    if let Some((i, t)) = ts.iter().enumerate().find(|(_, t)| !t.owns_whole_buffer()) {
        return Err(Error::invalid(
            op,
            format!(
                "{what} {i} ({:?}) must be a contiguous tensor that owns its whole buffer",
                t.dims()
            ),
        ));
    }
    Ok(())
}

impl Tensor {
    /// In place: multiplies every gradient (F16/BF16/F32) by `inv_scale` (F32 `[]`/`[1]`) and
    /// sets `found_inf` (F32, one value) to 1 when any gradient value is inf or NaN, else
    /// leaves it — one backend call for the whole list, no host sync (PyTorch's
    /// `torch._amp_foreach_non_finite_check_and_unscale_`). Every tensor must be on one
    /// device, and each gradient a contiguous tensor owning its buffer.
    pub fn non_finite_check_and_unscale_(
        grads: &[Tensor],
        found_inf: &Tensor,
        inv_scale: &Tensor,
    ) -> Result<()> {
        const OP: &str = "non_finite_check_and_unscale_";
        let refs: Vec<&Tensor> = grads.iter().collect();
        expect_whole(OP, "gradient", &refs)?;
        expect_scalar(OP, "found_inf", found_inf, DType::F32)?;
        expect_scalar(OP, "inv_scale", inv_scale, DType::F32)?;
        let mut all = vec![found_inf, inv_scale];
        all.extend(&refs);
        same_device(OP, &all)?;
        let storages: Vec<_> = grads.iter().map(Tensor::storage).collect();
        found_inf.backend()?.non_finite_check_and_unscale(
            &storages,
            &found_inf.storage(),
            &inv_scale.storage(),
        )?;
        grads.iter().for_each(Tensor::mark_modified);
        found_inf.mark_modified();
        Ok(())
    }

    /// In place: the dynamic loss-scale update of [`ScaleUpdateSpec`] (PyTorch's
    /// `torch._amp_update_scale_`, plus min/max scale and hysteresis) on device-resident
    /// state: `scale` F32, `growth_tracker` and `hysteresis_tracker` I64, `found_inf` F32, one
    /// value each, on one device. No host sync.
    pub fn update_scale_(
        scale: &Tensor,
        growth_tracker: &Tensor,
        hysteresis_tracker: &Tensor,
        found_inf: &Tensor,
        spec: &ScaleUpdateSpec,
    ) -> Result<()> {
        const OP: &str = "update_scale_";
        expect_scalar(OP, "scale", scale, DType::F32)?;
        expect_scalar(OP, "growth_tracker", growth_tracker, DType::I64)?;
        expect_scalar(OP, "hysteresis_tracker", hysteresis_tracker, DType::I64)?;
        expect_scalar(OP, "found_inf", found_inf, DType::F32)?;
        same_device(OP, &[scale, growth_tracker, hysteresis_tracker, found_inf])?;
        let state = ScaleState {
            scale: scale.storage(),
            growth_tracker: growth_tracker.storage(),
            hysteresis_tracker: hysteresis_tracker.storage(),
        };
        scale
            .backend()?
            .update_scale(&state, &found_inf.storage(), spec)?;
        for t in [scale, growth_tracker, hysteresis_tracker] {
            t.mark_modified();
        }
        Ok(())
    }
}
