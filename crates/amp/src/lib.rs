//! # hemi-amp
//!
//! Automatic mixed precision for hemi: autocast rules and the overflow-checking GradScaler.
//! This crate is filled in by the AMP issue; for now it re-exports the engine types it will
//! build on so the workspace layout of DESIGN.md is in place.

pub use hemi_engine::{DType, Tensor};
