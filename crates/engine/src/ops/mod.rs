//! Tensor-level ops: argument checks, dtype promotion, backend dispatch and the autograd
//! record of each op family. One file per family, mirroring `cpu/`.

mod amp;
mod cast;
mod conv;
mod elementwise;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod reduce;

pub use conv::Conv2dParams;
pub use matmul::GemmOptions;
pub use norm::BatchNormParams;
pub use optim::{AdamParam, SgdParam};
pub use pool::{AvgPool2dParams, MaxPool2dParams};

use crate::{DType, Error, Layout, MemoryFormat, Result, Shape, StorageRef, Tensor};

/// The memory format an output of `shape` computed from `inputs` keeps (PyTorch's rule for
/// elementwise ops, simplified): that of the first input of the full shape that is dense
/// (broadcast and strided views do not count), channels-last when that input is, else
/// row-major.
pub(crate) fn output_format(shape: &Shape, inputs: &[&Tensor]) -> MemoryFormat {
    inputs
        .iter()
        .find(|t| t.shape() == shape && t.layout().memory_format().is_some())
        .map_or(MemoryFormat::Contiguous, |t| t.suggest_memory_format())
}

/// `layout` viewed with its dims in `format`'s memory order (outermost first), so that a
/// backend writing a row-major output of that view writes `format`'s storage order.
pub(crate) fn in_memory_order(layout: &Layout, format: MemoryFormat) -> Layout {
    match format.dim_order(layout.shape().rank()) {
        Some(order) if format != MemoryFormat::Contiguous => layout.permute(&order),
        _ => layout.clone(),
    }
}

/// A tensor of `shape` over a storage written in `format`'s memory order.
pub(crate) fn from_storage_in(s: StorageRef, shape: Shape, format: MemoryFormat) -> Tensor {
    let layout = Layout::dense(shape.clone(), format).unwrap_or_else(|| Layout::contiguous(shape));
    Tensor::from_storage(s, layout)
}

/// Checks that all tensors live on the first one's device.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if t.device() != d {
            return Err(Error::DeviceMismatch {
                op,
                lhs: d,
                rhs: t.device(),
            });
        }
    }
    Ok(())
}

/// Checks that a tensor has a float dtype.
pub(crate) fn float_only(op: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::dtype(
            op,
            format!(
                "expected a float tensor, got {} of shape {:?}",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// Casts both operands to their promoted dtype (PyTorch's type promotion for floats).
pub(crate) fn promote_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    same_device(op, &[a, b])?;
    let dt = DType::promote(a.dtype(), b.dtype());
    Ok((a.to_dtype(dt)?, b.to_dtype(dt)?))
}

/// Checks a tensor's rank.
pub(crate) fn expect_rank(op: &'static str, what: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::shape(
            op,
            format!("{what} must have {rank} dims, got {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Pairs an integer with itself, for `kernel: 3` style arguments.
pub(crate) fn pair(v: usize) -> (usize, usize) {
    (v, v)
}
