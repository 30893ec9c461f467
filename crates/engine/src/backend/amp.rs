//! Descriptions of the AMP backend ops: loss-scale state, its update rule and fused Adam.

use crate::StorageRef;

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

/// One parameter's tensors for [`crate::Backend::fused_adam`]; all contiguous, on one device.
#[derive(Debug, Clone)]
pub struct AdamTensors {
    /// The parameter (F32 or F64 master weights).
    pub param: StorageRef,
    /// Its gradient (F16, BF16, F32 or F64), possibly still multiplied by the loss scale.
    pub grad: StorageRef,
    /// First moment, the parameter's dtype.
    pub exp_avg: StorageRef,
    /// Second moment, the parameter's dtype.
    pub exp_avg_sq: StorageRef,
    /// AMSGrad's running maximum of the second moment, when enabled.
    pub max_exp_avg_sq: Option<StorageRef>,
    /// The step count as F32 `[1]` (PyTorch keeps it as a float tensor too).
    pub step: StorageRef,
}

/// Hyper-parameters of a fused Adam/AdamW step.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct FusedAdamSpec {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
}
