//! The reduction family.

use super::BackendDevice;
use crate::{Layout, Result, StorageRef};

/// Reductions over a set of dims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// sum (accumulated in f32, or f64 for F64)
    Sum,
    /// arithmetic mean
    Mean,
    /// maximum (NaN propagates)
    Max,
    /// minimum (NaN propagates)
    Min,
}

/// Reductions. Sums and means obey README's bound `|s − s64| ≤ 2·⌈log2 n⌉·2^-24·Σ|x|`.
pub trait ReduceOps: BackendDevice {
    /// Reduces the listed dims (sorted, unique), keeping them as size 1.
    fn reduce(
        &self,
        op: ReduceOp,
        s: &StorageRef,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<StorageRef>;
}
