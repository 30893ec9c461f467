//! The one error type of hemi. Every fallible operation returns [`Result`].

use crate::{DType, Device};

/// Everything that can go wrong in hemi. Messages name the op and the shapes involved.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Shapes that do not fit together, e.g. `matmul: lhs [2, 3] and rhs [4, 5]`.
    #[error("{op}: shape mismatch: {msg}")]
    ShapeMismatch {
        /// The op that was called.
        op: &'static str,
        /// What does not fit, naming the shapes.
        msg: String,
    },
    /// An op received a dtype it cannot take, or two inputs whose dtypes disagree.
    #[error("{op}: dtype mismatch: {msg}")]
    DTypeMismatch {
        /// The op that was called.
        op: &'static str,
        /// The dtypes involved.
        msg: String,
    },
    /// Inputs live on different devices.
    #[error("{op}: device mismatch: {lhs} vs {rhs}")]
    DeviceMismatch {
        /// The op that was called.
        op: &'static str,
        /// Device of the first input.
        lhs: Device,
        /// Device of the offending input.
        rhs: Device,
    },
    /// A parameter is out of its valid range (zero kernel size, negative stride, bad dim ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The op that was called.
        op: &'static str,
        /// What is wrong and with which shapes.
        msg: String,
    },
    /// A class index in a loss target is out of range.
    #[error("{op}: target {target} at position {index} is out of range for {classes} classes")]
    TargetOutOfRange {
        /// The op that was called.
        op: &'static str,
        /// The offending target value.
        target: i64,
        /// Its position in the target tensor.
        index: usize,
        /// The number of classes (size of the class dim).
        classes: usize,
    },
    /// The op or dtype is not implemented on this backend.
    #[error("{op}: not supported on {device}: {msg}")]
    Unsupported {
        /// The op that was called.
        op: &'static str,
        /// The backend's device.
        device: Device,
        /// Why.
        msg: String,
    },
    /// An autograd misuse: backward on a non-scalar without a gradient, through a freed graph, ...
    #[error("autograd: {0}")]
    Autograd(String),
    /// An allocation failed on the given device.
    #[error("out of memory on {device}: requested {requested} bytes")]
    OutOfMemory {
        /// Where the allocation was attempted.
        device: Device,
        /// How many bytes were requested.
        requested: usize,
    },
    /// A dtype was expected but another was found when reading a tensor back.
    #[error("read back as {requested:?} but the tensor is {actual:?}")]
    ReadBack {
        /// The element type the caller asked for.
        requested: DType,
        /// The tensor's dtype.
        actual: DType,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// What the OS or the parser said.
        msg: String,
    },
    /// A data file is malformed or truncated: the file, the byte offset where reading
    /// failed (in the decompressed data for a gzipped file) and what was wrong.
    #[error("{path}: at byte {offset}: {msg}")]
    Data {
        /// The file.
        path: String,
        /// Byte offset of the problem.
        offset: u64,
        /// What was wrong.
        msg: String,
    },
    /// A checkpoint does not fit the model: every mismatch found, one per line.
    #[error("checkpoint {path} does not match the model:\n  {}", problems.join("\n  "))]
    Checkpoint {
        /// The file.
        path: String,
        /// Missing, unexpected, mis-shaped and mis-typed entries.
        problems: Vec<String>,
    },
    /// A collective operation across processes (all-reduce, broadcast, barrier) failed or
    /// timed out, e.g. because another rank died: the rank, the world size and what happened.
    #[error("distributed {op}: {msg}")]
    Distributed {
        /// The collective or distributed component.
        op: &'static str,
        /// What went wrong, naming the rank.
        msg: String,
    },
    /// Errors from a device driver or other backend-specific failures.
    #[error("{device}: {msg}")]
    Backend {
        /// The device whose backend failed.
        device: Device,
        /// The driver's message.
        msg: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Constructors for downstream crates (backends, layers, optimizers built on hemi): each names
/// the op and says what was wrong, like hemi's own errors.
///
/// ```
/// use hemi_engine::{Device, Error};
/// let e = Error::shape("my_op", "weight [3, 4] against input [2, 5]");
/// assert_eq!(e.to_string(), "my_op: shape mismatch: weight [3, 4] against input [2, 5]");
/// let u = Error::unsupported("my_op", Device::Cpu, "no kernel for complex numbers");
/// assert!(matches!(u, Error::Unsupported { op: "my_op", .. }));
/// ```
impl Error {
    /// [`Error::ShapeMismatch`]: the shapes (or layouts) of `op`'s operands do not fit.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::ShapeMismatch {
            op,
            msg: msg.into(),
        }
    }
    /// [`Error::DTypeMismatch`]: `op` cannot take these dtypes.
    pub fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Error::DTypeMismatch {
            op,
            msg: msg.into(),
        }
    }
    /// [`Error::InvalidArgument`]: a non-shape argument of `op` is out of range.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
    /// [`Error::Unsupported`]: `device` has no implementation of `op` (a backend test skips
    /// the device on this error instead of failing).
    pub fn unsupported(op: &'static str, device: Device, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            op,
            device,
            msg: msg.into(),
        }
    }
    /// [`Error::Backend`]: the device's driver or runtime failed.
    pub fn backend(device: Device, msg: impl Into<String>) -> Self {
        Error::Backend {
            device,
            msg: msg.into(),
        }
    }
}
