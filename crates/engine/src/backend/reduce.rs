//! The reduction family.

use super::{check_bounds, BackendDevice};
use crate::{Error, Layout, Result, StorageRef};

/// Checks the arguments of [`ReduceOps::reduce`]: `dims` sorted, unique and inside the
/// layout's rank; the layout inside its buffer.
pub fn check_reduce(s: &StorageRef, layout: &Layout, dims: &[usize]) -> Result<()> {
    check_bounds("reduce", s, layout)?;
    let rank = layout.dims().len();
    if dims.windows(2).any(|w| w[0] >= w[1]) || dims.last().is_some_and(|&d| d >= rank) {
        return Err(Error::invalid(
            "reduce",
            format!("dims {dims:?} must be sorted, unique and below rank {rank}"),
        ));
    }
    Ok(())
}

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
