//! The backend contract: one trait per op family (`memory`, `elementwise`, `reduce`, `matmul`,
//! `conv`, `norm`, `pool`, `loss`, `amp`, `optim`), and [`Backend`], their union, which every
//! device implements. The same family names are used by `ops/`, `cpu/`, the CUDA backend,
//! `kernels-cu/` and the tests.
//!
//! Conventions for every method:
//! - inputs come as a storage plus, where strides matter, a [`Layout`]; methods documented as
//!   "contiguous" expect row-major inputs starting at offset 0 (the tensor layer guarantees it);
//! - outputs are new, contiguous storages — except the training updates (`copy_into`,
//!   `accumulate`, the AMP and optimizer families), which write in place into the buffers
//!   they are given, as PyTorch's do; the tensor layer bumps the written storages' versions;
//! - F16/BF16 compute in f32 and round once at the output; F64 computes in f64;
//! - every error names the op and the shapes.
//!
//! Families a device may legitimately lack (`conv`, `norm`, `pool`) have default bodies that
//! return [`Error::Unsupported`]; the others must be implemented.

mod amp;
mod conv;
mod elementwise;
mod loss;
mod matmul;
mod memory;
mod norm;
mod optim;
mod pool;
mod reduce;

pub use amp::*;
pub use conv::*;
pub use elementwise::*;
pub use loss::*;
pub use matmul::*;
pub use memory::*;
pub use norm::*;
pub use optim::*;
pub use pool::*;
pub use reduce::*;

use crate::{Device, Error, Layout, Result, StorageRef};
use std::fmt::Debug;

/// The device a backend runs on (the supertrait of every family).
pub trait BackendDevice: Send + Sync + Debug {
    /// The device this backend runs on.
    fn device(&self) -> Device;
}

/// A compute device's implementation of every op family. Object safe; implemented
/// automatically for any type implementing all the family traits.
pub trait Backend:
    MemoryOps
    + ElementwiseOps
    + ReduceOps
    + MatmulOps
    + ConvOps
    + NormOps
    + PoolOps
    + LossOps
    + AmpOps
    + OptimOps
{
}

impl<T> Backend for T where
    T: MemoryOps
        + ElementwiseOps
        + ReduceOps
        + MatmulOps
        + ConvOps
        + NormOps
        + PoolOps
        + LossOps
        + AmpOps
        + OptimOps
{
}

/// The error of a family a device does not implement.
pub(crate) fn unsupported(device: Device, op: &'static str) -> Error {
    Error::Unsupported {
        op,
        device,
        msg: "this device has no kernel for it yet".into(),
    }
}

/// Checks that `layout` is well formed (one stride per dim, no arithmetic overflow) and that
/// `s` holds every element it addresses. Every backend method that takes a layout calls it
/// first, so no layout a caller builds can make a kernel read or write outside its buffer.
pub fn check_bounds(op: &'static str, s: &StorageRef, layout: &Layout) -> Result<()> {
    check_layout(op, layout, s.len())
}

/// Errors (naming `op`) unless every element of `layout` lies among `len` elements: as many
/// strides as dims, no overflow, the last reachable element below `len`. What
/// [`check_bounds`] checks against a storage; device backends check their typed launch
/// operands with it.
pub fn check_layout(op: &'static str, layout: &Layout, len: usize) -> Result<()> {
    let (dims, strides) = (layout.dims(), layout.strides());
    if strides.len() != dims.len() {
        return Err(Error::shape(
            op,
            format!(
                "layout has {} strides for {} dims",
                strides.len(),
                dims.len()
            ),
        ));
    }
    let overflow = || Error::shape(op, format!("layout {dims:?} overflows the address space"));
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    if n == 0 {
        return Ok(());
    }
    let last = dims
        .iter()
        .zip(strides)
        .try_fold(layout.offset(), |a, (&d, &st)| {
            (d - 1).checked_mul(st).and_then(|x| a.checked_add(x))
        })
        .ok_or_else(overflow)?;
    if last >= len {
        return Err(Error::shape(
            op,
            format!(
                "layout {:?} (offset {}) addresses element {last} of a {len}-element buffer",
                layout.shape(),
                layout.offset(),
            ),
        ));
    }
    Ok(())
}
