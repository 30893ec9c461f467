//! The optimizer family: fused multi-tensor Adam/AdamW and SGD steps that write parameters,
//! gradients (when unscaled) and optimizer state in place.

use super::BackendDevice;
use crate::{Error, Result, StorageRef};
use std::sync::Arc;

/// Errors unless the storages of one parameter's update are pairwise distinct buffers (each
/// is written in place, so an alias would be read after it was written).
pub fn check_distinct(op: &'static str, storages: &[&StorageRef]) -> Result<()> {
    for (i, a) in storages.iter().enumerate() {
        if storages[i + 1..].iter().any(|b| Arc::ptr_eq(a, b)) {
            return Err(Error::invalid(
                op,
                "parameter, gradient and optimizer state must be distinct buffers",
            ));
        }
    }
    Ok(())
}

/// One parameter's tensors for [`OptimOps::adam_step`]; all contiguous, on one device.
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

/// One parameter's tensors for [`OptimOps::sgd_step`]; all contiguous, on one device.
#[derive(Debug, Clone)]
pub struct SgdTensors {
    /// The parameter (F32 or F64).
    pub param: StorageRef,
    /// Its gradient (F16, BF16, F32 or F64).
    pub grad: StorageRef,
    /// The momentum buffer (the parameter's dtype), when momentum is on.
    pub momentum_buffer: Option<StorageRef>,
}

/// Hyper-parameters of a fused SGD step (PyTorch's `torch.optim.SGD`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct SgdSpec {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// The momentum buffers hold no history yet: set them to the (decayed) gradient, as
    /// PyTorch does on a buffer's first step.
    pub first_step: bool,
}

/// Fused optimizer steps, in place.
pub trait OptimOps: BackendDevice {
    /// Fused Adam/AdamW over many parameters, in place. Increments each step count, divides
    /// each gradient by `grad_scale` when given (writing the unscaled gradient back), and
    /// updates parameter and moments; when `found_inf` is nonzero nothing changes — all
    /// decided on the device.
    fn adam_step(
        &self,
        tensors: &[AdamTensors],
        spec: &FusedAdamSpec,
        grad_scale: Option<&StorageRef>,
        found_inf: Option<&StorageRef>,
    ) -> Result<()>;
    /// Fused SGD over many parameters, in place: `g += wd·p`; with momentum
    /// `buf = first ? g : momentum·buf + (1 − dampening)·g` and `g = nesterov ? g + momentum·buf
    /// : buf`; then `p −= lr·g`. Skipped entirely when `found_inf` is nonzero.
    fn sgd_step(
        &self,
        tensors: &[SgdTensors],
        spec: &SgdSpec,
        found_inf: Option<&StorageRef>,
    ) -> Result<()>;
}
