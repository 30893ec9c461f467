//! The loss family: softmax / log-softmax and fused cross-entropy, forward and backward.

use super::BackendDevice;
use crate::{Result, StorageRef};

/// How a loss over a batch is reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// One loss per sample.
    None,
    /// Mean over the (non-ignored) samples; PyTorch's default.
    #[default]
    Mean,
    /// Sum over the samples.
    Sum,
}

/// Options of cross-entropy with integer class targets, as in `torch.nn.functional.cross_entropy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropySpec {
    /// Samples whose target equals this contribute neither loss nor gradient (default -100).
    pub ignore_index: i64,
    /// Mixes the one-hot target with the uniform distribution: `(1-ε)·onehot + ε/C`.
    pub label_smoothing: f64,
    /// Reduction over the batch.
    pub reduction: Reduction,
}

impl Default for CrossEntropySpec {
    fn default() -> Self {
        CrossEntropySpec {
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

/// Softmax and cross-entropy. Cancellation-free (see README's numerics section).
pub trait LossOps: BackendDevice {
    /// Softmax (or log-softmax) of contiguous `x` viewed as `[outer, size, inner]` along the
    /// middle dim.
    fn softmax(&self, x: &StorageRef, dims: (usize, usize, usize), log: bool)
        -> Result<StorageRef>;
    /// Gradient of softmax/log-softmax from its output `y` and the output gradient `dy`.
    fn softmax_backward(
        &self,
        y: &StorageRef,
        dy: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef>;
    /// Cross-entropy of contiguous logits `[n, c]` against I64 targets `[n]`. Returns `[n]`
    /// for [`Reduction::None`], else one element. Out-of-range targets are an error.
    fn cross_entropy(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef>;
    /// Gradient of [`LossOps::cross_entropy`] w.r.t. the logits; `dloss` has the loss's shape.
    fn cross_entropy_backward(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        dloss: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef>;
}
