//! The matmul family.

use super::BackendDevice;
use crate::{Layout, Result, StorageRef};

/// A batched matrix product `out[b] = lhs[b] · rhs[b]`, `lhs` viewed as `[batch, m, k]` and
/// `rhs` as `[batch, k, n]` with arbitrary element strides (a batch stride of 0 broadcasts).
/// The output is contiguous `[batch, m, n]` of the inputs' dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulSpec {
    /// Number of independent products.
    pub batch: usize,
    /// Rows of lhs and out.
    pub m: usize,
    /// Columns of rhs and out.
    pub n: usize,
    /// The contracted dim.
    pub k: usize,
}

/// Matrix products.
pub trait MatmulOps: BackendDevice {
    /// Batched matrix product, see [`MatmulSpec`] (layouts are rank 3).
    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef>;
}
