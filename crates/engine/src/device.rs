//! Where a tensor lives.

use std::fmt;

/// A compute device. The engine itself implements [`Device::Cpu`]; the root crate `hemi`
/// registers backends for the CUDA devices (see [`crate::register_backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    /// The host, through the CPU backend.
    Cpu,
    /// CUDA device with the given ordinal, through the CUDA driver.
    Cuda(usize),
    /// The CUDA backend running its kernels on the host emulator.
    CudaSim,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::CudaSim => write!(f, "cuda-sim"),
        }
    }
}
