//! The AMP family: the multi-tensor non-finite check + unscale and the loss-scale update,
//! both in place on device-resident state (no host sync).

use super::BackendDevice;
use crate::{DType, Error, Result, StorageRef};

/// Errors unless `s` is one F32 value (a flag or a scale).
pub fn check_one_f32(op: &'static str, what: &str, s: &StorageRef) -> Result<()> {
    if s.dtype() != DType::F32 || s.len() != 1 {
        let msg = format!("{what} must be one float32, got {} x{}", s.dtype(), s.len());
        return Err(Error::DTypeMismatch { op, msg });
    }
    Ok(())
}

/// The device-resident state of a dynamic loss scaler.
#[derive(Debug, Clone)]
pub struct ScaleState {
    /// Current scale, F32 `[1]`.
    pub scale: StorageRef,
    /// Consecutive overflow-free steps since the last growth or backoff, I64 `[1]`.
    pub growth_tracker: StorageRef,
    /// Overflows still tolerated before the next backoff (hysteresis), I64 `[1]`.
    pub hysteresis_tracker: StorageRef,
}

/// Parameters of the scale update. With `hysteresis = 1`, `min_scale = 0` and
/// `max_scale = ∞` this is exactly PyTorch's `_amp_update_scale_`. Arithmetic: the F32 scale
/// times a factor is computed in f64 and rounded to f32 once (after the clamp), as PyTorch
/// multiplies its float scale by a double factor; the finiteness test is on that f32 value.
///
/// ```text
/// if found_inf:
///     growth_tracker = 0
///     hysteresis_tracker -= 1
///     if hysteresis_tracker <= 0: scale = max(scale · backoff_factor, min_scale)
/// else:
///     growth_tracker += 1
///     if growth_tracker == growth_interval:
///         growth_tracker = 0
///         hysteresis_tracker = hysteresis
///         if isfinite(f32(scale · growth_factor)): scale = min(scale · growth_factor, max_scale)
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleUpdateSpec {
    /// Multiplier after `growth_interval` clean steps (> 1).
    pub growth_factor: f64,
    /// Multiplier on overflow (in (0, 1)).
    pub backoff_factor: f64,
    /// Clean steps between growths.
    pub growth_interval: i64,
    /// Lower bound applied after a backoff (0 for none).
    pub min_scale: f64,
    /// Upper bound applied after a growth (∞ for none).
    pub max_scale: f64,
    /// Overflows tolerated before a backoff (1 = back off on every overflow).
    pub hysteresis: i64,
}

/// Loss-scaling kernels.
pub trait AmpOps: BackendDevice {
    /// In place: multiplies every gradient (F16/BF16/F32, whole buffers) by `inv_scale` (F32
    /// `[1]`) and sets `found_inf` (F32 `[1]`) to 1 when any gradient value is inf or NaN
    /// (else leaves it) — one call for the whole list, reading the scale on the device.
    fn non_finite_check_and_unscale(
        &self,
        grads: &[StorageRef],
        found_inf: &StorageRef,
        inv_scale: &StorageRef,
    ) -> Result<()>;
    /// In place: the dynamic loss-scale update of [`ScaleUpdateSpec`], on the device.
    fn update_scale(
        &self,
        state: &ScaleState,
        found_inf: &StorageRef,
        spec: &ScaleUpdateSpec,
    ) -> Result<()>;
}
