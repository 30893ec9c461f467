//! Wrappers of `kernels-cu/amp.cu` and `kernels-cu/optim.cu`. Multi-tensor launches take a
//! device array of per-tensor records (`TensorRef`, `AdamRef`) that the caller uploaded.

use super::{launch, THREADS};
use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
use crate::kernel_args;
use hemi_engine::{Error, Result};

/// `struct TensorRef` of amp.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TensorRef {
    /// Input address.
    pub input: u64,
    /// Output address.
    pub output: u64,
    /// Elements.
    pub len: i64,
    /// [`super::dtype_code`].
    pub dtype: i32,
    /// Padding.
    pub pad: i32,
}

/// Blocks along x for a multi-tensor launch whose largest tensor has `max_len` elements.
fn multi(max_len: usize, tensors: usize) -> LaunchConfig {
    let x = max_len.div_ceil(THREADS as usize).clamp(1, 1024) as u32;
    LaunchConfig {
        grid: [x, tensors as u32, 1],
        block: [THREADS, 1, 1],
        smem: 0,
    }
}

/// One launch over `count` records at `refs` (device memory); see amp.cu.
pub fn non_finite_check_and_unscale(
    d: &dyn Driver,
    refs: DevicePtr,
    count: usize,
    max_len: usize,
    found_inf: DevicePtr,
    inv_scale: DevicePtr,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    if count > 65535 {
        return Err(Error::InvalidArgument {
            op: "non_finite_check_and_unscale",
            msg: format!("{count} tensors exceed one launch's 65535"),
        });
    }
    let (mut r, mut f, mut s) = (refs, found_inf, inv_scale);
    let mut a = kernel_args![r, f, s];
    // SAFETY: non_finite_check_and_unscale(const TensorRef*, float*, const float*); the
    // records hold valid buffers of `len` elements each.
    unsafe {
        launch(
            d,
            "non_finite_check_and_unscale",
            multi(max_len, count),
            &mut a,
        )
    }
}

/// Addresses of the scale state (old and new) for [`update_scale`].
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct ScaleAddrs {
    pub scale: DevicePtr,
    pub growth: DevicePtr,
    pub hyst: DevicePtr,
}

/// The device-side scale update (one thread).
pub fn update_scale(
    d: &dyn Driver,
    old: ScaleAddrs,
    found_inf: DevicePtr,
    new: ScaleAddrs,
    spec: &hemi_engine::backend::ScaleUpdateSpec,
) -> Result<()> {
    let (mut s, mut g, mut h, mut f) = (old.scale, old.growth, old.hyst, found_inf);
    let (mut ns, mut ng, mut nh) = (new.scale, new.growth, new.hyst);
    // Factors and bounds stay f64: the kernel multiplies in double and rounds once (PyTorch).
    let (mut gf, mut bf) = (spec.growth_factor, spec.backoff_factor);
    let (mut gi, mut lo, mut hi, mut hy) = (
        spec.growth_interval,
        spec.min_scale,
        spec.max_scale,
        spec.hysteresis,
    );
    let mut a = kernel_args![s, g, h, f, ns, ng, nh, gf, bf, gi, lo, hi, hy];
    let cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [1, 1, 1],
        smem: 0,
    };
    // SAFETY: update_scale(const float*, const long long*, const long long*, const float*,
    // float*, long long*, long long*, double, double, long long, double, double, long long).
    unsafe { launch(d, "update_scale", cfg, &mut a) }
}

/// `struct AdamRef` of optim.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[allow(missing_docs)]
pub struct AdamRef {
    pub p: u64,
    pub g: u64,
    pub m: u64,
    pub v: u64,
    pub vmax: u64,
    pub p_out: u64,
    pub g_out: u64,
    pub m_out: u64,
    pub v_out: u64,
    pub vmax_out: u64,
    pub step: u64,
    pub step_out: u64,
    pub len: i64,
    pub grad_dtype: i32,
    pub pad: i32,
}

/// `struct AdamHyper` of optim.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub amsgrad: i32,
    pub decoupled: i32,
    pub has_scale: i32,
}

/// One fused Adam launch over `count` records at `refs`; `grad_scale`/`found_inf` may be 0.
pub fn fused_adam(
    d: &dyn Driver,
    refs: DevicePtr,
    count: usize,
    max_len: usize,
    hyper: AdamHyper,
    grad_scale: DevicePtr,
    found_inf: DevicePtr,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    if count > 65535 {
        return Err(Error::InvalidArgument {
            op: "fused_adam",
            msg: format!("{count} parameters exceed one launch's 65535"),
        });
    }
    let (mut r, mut h, mut s, mut f) = (refs, hyper, grad_scale, found_inf);
    let mut a = kernel_args![r, h, s, f];
    // SAFETY: fused_adam(const AdamRef*, AdamHyper, const float*, const float*); records hold
    // valid buffers; null scale/flag pointers are allowed by the kernel (has_scale = 0).
    unsafe { launch(d, "fused_adam", multi(max_len, count), &mut a) }
}
