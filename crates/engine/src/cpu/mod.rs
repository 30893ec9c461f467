//! The CPU backend: the reference implementation of every op. Simple loops over f32/f64
//! compute vectors, GEMM through the `gemm` crate, parallel with rayon. One file per op
//! family, each holding the family's trait implementation (`impl ConvOps for CpuBackend` in
//! `conv.rs`, ...).

mod amp;
mod amx;
mod amx_pack;
mod bf16_dot;
mod buffer;
pub(crate) mod compute;
mod conv;
mod convert;
mod elementwise;
#[cfg(test)]
mod gemm_check;
mod half_blocks;
mod loss;
mod matmul;
mod memory;
mod norm;
mod optim;
mod pool;
mod reduce;
mod sgemm;
mod sgemm_pack;
mod sum;

use crate::{CpuStorage, Device, StorageRef};

pub use buffer::CpuBuffer;
use std::sync::Arc;

/// The host backend (see the module docs).
#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A new CPU backend (stateless).
    pub fn new() -> Self {
        CpuBackend
    }
}

/// Wraps host data as a counted CPU storage.
pub(crate) fn wrap(s: CpuStorage) -> StorageRef {
    Arc::new(CpuBuffer::new(s))
}

impl crate::backend::BackendDevice for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }
}
