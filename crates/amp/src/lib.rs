//! # hemi-amp
//!
//! Automatic mixed precision for hemi, with PyTorch's semantics: [`autocast`] regions that
//! run each op in the dtype its rule says (see the [`autocast`](mod@autocast) module for the
//! table), and the overflow-checking dynamic loss scaler [`GradScaler`].
//!
//! ```
//! use hemi_amp::{autocast, GradScaler, GradScalerConfig};
//! use hemi_engine::nn::{Linear, Module};
//! use hemi_engine::optim::{Adam, AdamConfig, Optimizer};
//! use hemi_engine::{CrossEntropySpec, DType, Device, Tensor};
//!
//! let model = Linear::new(8, 3, true, Device::Cpu)?;
//! let mut opt = Adam::new(model.parameters(), AdamConfig::adam())?;
//! let mut scaler = GradScaler::new(GradScalerConfig::default())?;
//! let x = Tensor::randn([16, 8], DType::F32, Device::Cpu)?;
//! let y = Tensor::randint(0, 3, [16], Device::Cpu)?;
//! for _ in 0..3 {
//!     opt.zero_grad();
//!     let loss = {
//!         let _ac = autocast(DType::F16)?;
//!         model.forward(&x)?.cross_entropy(&y, CrossEntropySpec::default())?
//!     };
//!     scaler.scale(&loss)?.backward()?;
//!     scaler.step(&mut opt)?;
//!     scaler.update(None)?;
//! }
//! assert_eq!(scaler.get_scale()?, 65536.0);
//! # Ok::<(), hemi_engine::Error>(())
//! ```

pub mod autocast;
mod report;
mod scaler;

pub use autocast::{
    autocast, autocast_dtype, autocast_enabled, rule_for, AutocastGuard, AutocastOp, CastRule,
};
pub use report::{GradReport, ParamReport};
pub use scaler::{FoundInfSync, GradScaler, GradScalerConfig, OverflowEvent, ScalerStateDict};
