//! The normalization family (a device may lack it: the default bodies say `Unsupported`).

use super::{unsupported, BackendDevice};
use crate::{Result, StorageRef};

/// Result storages of a training-mode batch norm: output plus per-channel batch statistics.
#[derive(Debug)]
pub struct BatchNormForward {
    /// Normalized, scaled and shifted output, dtype of the input.
    pub y: StorageRef,
    /// Per-channel batch mean `[C]`, in the statistics dtype.
    pub mean: StorageRef,
    /// Per-channel biased batch variance `[C]`, in the statistics dtype.
    pub var: StorageRef,
    /// Per-channel `1/sqrt(var + eps)` `[C]`, in the statistics dtype.
    pub invstd: StorageRef,
}

/// Gradients of a batch norm.
#[derive(Debug)]
pub struct BatchNormBackward {
    /// Gradient of the input, dtype of the input.
    pub dx: StorageRef,
    /// Gradient of the scale `[C]`, dtype of the weight.
    pub dweight: StorageRef,
    /// Gradient of the shift `[C]`, dtype of the weight.
    pub dbias: StorageRef,
}

/// Batch normalization.
pub trait NormOps: BackendDevice {
    /// Training-mode batch norm over contiguous `x` of shape `[N, C, S]` (S = spatial size):
    /// normalizes with the batch statistics. `weight`/`bias` `[C]` may have a wider dtype than
    /// `x`; statistics come back in the weight's dtype. With `relu`, the output is
    /// `max(y, 0)` (NaN kept): the fused BN + ReLU.
    fn batch_norm_train(
        &self,
        x: &StorageRef,
        weight: &StorageRef,
        bias: &StorageRef,
        dims: (usize, usize, usize),
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormForward> {
        let _ = (x, weight, bias, dims, eps, relu);
        Err(unsupported(self.device(), "batch_norm"))
    }
    /// Gradients of [`NormOps::batch_norm_train`] given the saved mean and invstd. For the
    /// fused BN + ReLU, `relu_out` is its output: dy counts as 0 where it is ≤ 0 (PyTorch's
    /// `threshold_backward`).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        dy: &StorageRef,
        x: &StorageRef,
        weight: &StorageRef,
        mean: &StorageRef,
        invstd: &StorageRef,
        dims: (usize, usize, usize),
        relu_out: Option<&StorageRef>,
    ) -> Result<BatchNormBackward> {
        let _ = (dy, x, weight, mean, invstd, dims, relu_out);
        Err(unsupported(self.device(), "batch_norm_backward"))
    }
}
