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

/// Parses the names [`Device`]'s `Display` writes, and `cuda` for `cuda:0`: `cpu`, `cuda`,
/// `cuda:N`, `cuda-sim` (command-line flags).
///
/// ```
/// use hemi_engine::Device;
/// assert_eq!("cuda:1".parse::<Device>()?, Device::Cuda(1));
/// assert_eq!("cuda-sim".parse::<Device>()?, Device::CudaSim);
/// assert!("tpu".parse::<Device>().is_err());
/// # Ok::<(), hemi_engine::Error>(())
/// ```
impl std::str::FromStr for Device {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "cuda-sim" => Ok(Device::CudaSim),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    crate::Error::invalid(
                        "device",
                        format!("unknown device `{other}` (cpu, cuda, cuda:N, cuda-sim)"),
                    )
                }),
        }
    }
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
