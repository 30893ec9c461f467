//! The matmul family.

use super::{check_bounds, BackendDevice};
use crate::{Error, Layout, Result, StorageRef};

/// Checks the arguments of [`MatmulOps::matmul`]: both layouts inside their buffers, `lhs`
/// of dims `[batch, m, k]` and `rhs` of dims `[batch, k, n]`, an output size that fits.
pub fn check_matmul(
    lhs: &StorageRef,
    ll: &Layout,
    rhs: &StorageRef,
    rl: &Layout,
    spec: &MatmulSpec,
) -> Result<()> {
    check_bounds("matmul", lhs, ll)?;
    check_bounds("matmul", rhs, rl)?;
    let MatmulSpec { batch, m, n, k } = *spec;
    if ll.dims() != [batch, m, k] || rl.dims() != [batch, k, n] {
        return Err(Error::shape(
            "matmul",
            format!(
                "lhs {:?} and rhs {:?} do not match batch {batch}, m {m}, k {k}, n {n}",
                ll.dims(),
                rl.dims()
            ),
        ));
    }
    batch
        .checked_mul(m)
        .and_then(|x| x.checked_mul(n))
        .ok_or_else(|| Error::shape("matmul", "output size overflows"))?;
    Ok(())
}

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
