//! CPU AMP ops: the multi-tensor non-finite check + unscale, and the loss-scale update.

use super::compute::{all_to_compute, host, map_compute, scalar, to_f64_vec};
use super::wrap;
use crate::backend::{ScaleState, ScaleUpdateSpec};
use crate::{CpuStorage, Error, Layout, Result, StorageRef};

/// The single value of a one-element storage, as f64.
pub(crate) fn read_scalar(op: &'static str, s: &StorageRef) -> Result<f64> {
    let h = host(op, s)?;
    if h.len() != 1 {
        return Err(Error::shape(
            op,
            format!("expected one element, got {}", h.len()),
        ));
    }
    Ok(to_f64_vec(h, &Layout::contiguous([1]))[0])
}

fn unscale_one(op: &'static str, g: &StorageRef, inv: f64) -> Result<(StorageRef, bool)> {
    let h = host(op, g)?;
    let non_finite: bool;
    let out = map_compute!(all_to_compute(op, h)?, |v: T| {
        let inv = scalar::<T>(inv);
        non_finite = v.iter().any(|x| !x.is_finite());
        v.into_iter().map(|x| x * inv).collect()
    });
    Ok((wrap(out.into_storage(h.dtype())), non_finite))
}

/// See [`crate::Backend::non_finite_check_and_unscale`]. The scale is read in f32, as the
/// CUDA kernel reads it.
pub(crate) fn non_finite_check_and_unscale(
    grads: &[StorageRef],
    found_inf: &StorageRef,
    inv_scale: &StorageRef,
) -> Result<(Vec<StorageRef>, StorageRef)> {
    const OP: &str = "non_finite_check_and_unscale";
    let inv = read_scalar(OP, inv_scale)? as f32 as f64;
    let mut found = read_scalar(OP, found_inf)? != 0.0;
    let mut out = Vec::with_capacity(grads.len());
    for g in grads {
        let (u, bad) = unscale_one(OP, g, inv)?;
        found |= bad;
        out.push(u);
    }
    Ok((
        out,
        wrap(CpuStorage::F32(vec![if found { 1.0 } else { 0.0 }])),
    ))
}

/// See [`crate::Backend::update_scale`] and [`ScaleUpdateSpec`]; the scale is kept in f32.
/// As PyTorch's `_amp_update_scale_`, the f32 scale is multiplied by the (f64) factor in
/// double precision and rounded to f32 once; the min/max clamp happens in f64 before that
/// rounding.
pub(crate) fn update_scale(
    state: &ScaleState,
    found_inf: &StorageRef,
    spec: &ScaleUpdateSpec,
) -> Result<ScaleState> {
    const OP: &str = "update_scale";
    let mut scale = read_scalar(OP, &state.scale)? as f32;
    let mut growth = read_scalar(OP, &state.growth_tracker)? as i64;
    let mut hyst = read_scalar(OP, &state.hysteresis_tracker)? as i64;
    if read_scalar(OP, found_inf)? != 0.0 {
        growth = 0;
        hyst -= 1;
        if hyst <= 0 {
            scale = (f64::from(scale) * spec.backoff_factor).max(spec.min_scale) as f32;
        }
    } else {
        growth += 1;
        if growth == spec.growth_interval {
            growth = 0;
            hyst = spec.hysteresis;
            let grown = f64::from(scale) * spec.growth_factor;
            if (grown as f32).is_finite() {
                scale = grown.min(spec.max_scale) as f32;
            }
        }
    }
    Ok(ScaleState {
        scale: wrap(CpuStorage::F32(vec![scale])),
        growth_tracker: wrap(CpuStorage::I64(vec![growth])),
        hysteresis_tracker: wrap(CpuStorage::I64(vec![hyst])),
    })
}
