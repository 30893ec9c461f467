//! # hemi-engine
//!
//! The core of hemi: [`Tensor`] (shape, strides, dtype, device), the object-safe [`Backend`]
//! trait with its CPU reference implementation, and define-by-run autograd.
//!
//! ```
//! use hemi_engine::{Tensor, DType, Device};
//! let w = Tensor::randn([3, 2], DType::F32, Device::Cpu)?.requires_grad_(true)?;
//! let x = Tensor::ones([4, 3], DType::F32, Device::Cpu)?;
//! let loss = x.matmul(&w)?.relu()?.sum_all()?;
//! loss.backward()?;
//! assert_eq!(w.grad().expect("w has a gradient").dims(), &[3, 2]);
//! # Ok::<(), hemi_engine::Error>(())
//! ```

mod alloc;
pub mod autograd;
pub mod backend;
pub mod cast_policy;
pub mod checkpoint;
pub mod cpu;
mod device;
mod dtype;
mod error;
mod host_cache;
pub mod memory;
pub mod nn;
mod ops;
pub mod optim;
mod registry;
mod shape;
mod storage;
mod tensor;

pub use autograd::{is_grad_enabled, no_grad, set_grad_enabled, GradModeGuard};
pub use backend::{Backend, CrossEntropySpec, GemmAlgo, Reduction};
pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use memory::{
    empty_host_cache, host_cache_bytes, memory_stats, reset_peak_memory, MemoryStats,
};
pub use ops::{
    AdamParam, AvgPool2dParams, BatchNormParams, Conv2dParams, GemmOptions, MaxPool2dParams,
    SgdParam,
};
pub use optim::{Adam, AdamConfig, AdamW, Optimizer, OptimizerState, ParamState, Sgd, SgdConfig};
pub use registry::{backend_for, register_backend};
pub use shape::{Layout, MemoryFormat, Shape, StridedOffsets};
pub use storage::{BackendStorage, CpuStorage, StorageElement, StorageRef, VersionCounter};
pub use tensor::{manual_seed, rng_state, set_rng_state, Generator, RngState, Tensor, TensorId};

pub use half::{bf16, f16};
