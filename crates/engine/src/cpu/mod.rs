//! The CPU backend: the reference implementation of every op. Loops over f32/f64 compute
//! vectors (AVX-512 where the CPU has it), GEMMs on our AVX-512 / AMX / AVX512-BF16 kernels
//! (the `gemm` crate elsewhere, except half-precision convolution operands, which our AVX2
//! kernels read where there is AVX2 but no AVX-512), parallel on rayon's global pool ([`init_threads`] makes the
//! calling thread one of its workers). One file per op family, each holding the family's
//! trait implementation (`impl ConvOps for CpuBackend` in `conv.rs`, ...).

mod amp;
mod amx;
mod amx_pack;
mod bf16_dot;
#[cfg(target_arch = "x86_64")]
mod bf16_skinny;
mod buffer;
pub(crate) mod compute;
mod conv;
mod convert;
mod elementwise;
#[cfg(target_arch = "x86_64")]
mod f16_skinny;
#[cfg(test)]
mod gemm_check;
mod half_blocks;
#[cfg(target_arch = "x86_64")]
mod half_skinny_avx2;
mod loss;
mod matmul;
mod memory;
mod norm;
mod optim;
mod pool;
mod reduce;
mod sgemm;
mod sgemm_avx2;
mod sgemm_pack;
#[cfg(target_arch = "x86_64")]
mod skinny;
mod strided;
mod sum;
mod threads;

pub use threads::init_threads;

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

/// Runs `f` on a worker of rayon's pool: in place when the caller is one, else handed over
/// once (`rayon::scope`) so that the parallel loops inside `f` split among the workers without
/// each crossing from the caller's thread into the pool and back (a wake-up and a sleep per
/// loop: a convolution runs up to a dozen). For operations with several parallel phases.
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
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
