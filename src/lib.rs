//! # hemi
//!
//! A mixed-precision (fp16/bf16) deep-learning training engine. This facade re-exports the
//! engine ([`hemi_engine`]), AMP ([`hemi_amp`]) and data ([`hemi_data`], as `hemi::data`)
//! crates; with feature `cuda` it will add the
//! CUDA backend.
//!
//! ```
//! use hemi::{Tensor, DType, Device};
//! let x = Tensor::randn([2, 3], DType::F16, Device::Cpu)?;
//! assert_eq!(x.to_dtype(DType::F32)?.dims(), &[2, 3]);
//! # Ok::<(), hemi::Error>(())
//! ```

pub use hemi_amp as amp;
pub use hemi_data as data;

pub mod metrics;
pub mod train_state;
pub use hemi_engine::*;

#[cfg(feature = "cuda")]
pub mod cuda;

pub mod distributed;
