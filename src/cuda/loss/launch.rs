//! Typed launches of `kernels-cu/loss.cu`: softmax / log-softmax and cross-entropy.

use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
use crate::cuda::launch::{float_suffix, launch, MAX_BLOCKS, THREADS};
use crate::kernel_args;
use hemi_engine::{DType, Result};

fn per_warp(lines: usize) -> LaunchConfig {
    LaunchConfig::linear(lines.max(1) * 32, THREADS, MAX_BLOCKS)
}

/// Softmax along the middle of contiguous `[outer, size, inner]`.
pub fn softmax(
    d: &dyn Driver,
    dt: DType,
    x: DevicePtr,
    y: DevicePtr,
    dims: (usize, usize, usize),
    log: bool,
) -> Result<()> {
    let name = format!("softmax_{}", float_suffix("softmax", d.device(), dt)?);
    let (mut x, mut y, mut o, mut s, mut i, mut l) = (
        x,
        y,
        dims.0 as i64,
        dims.1 as i64,
        dims.2 as i64,
        log as i32,
    );
    let mut a = kernel_args![x, y, o, s, i, l];
    // SAFETY: softmax_T(const T*, T*, long long, long long, long long, int); contiguous
    // buffers of outer*size*inner elements.
    unsafe { launch(d, &name, per_warp(dims.0 * dims.2), &mut a) }
}

/// Gradient of softmax from its output `y` and `dy`.
#[allow(clippy::too_many_arguments)]
pub fn softmax_backward(
    d: &dyn Driver,
    dt: DType,
    y: DevicePtr,
    dy: DevicePtr,
    dx: DevicePtr,
    dims: (usize, usize, usize),
    log: bool,
) -> Result<()> {
    let name = format!(
        "softmax_backward_{}",
        float_suffix("softmax_backward", d.device(), dt)?
    );
    let (mut y, mut dy, mut dx) = (y, dy, dx);
    let (mut o, mut s, mut i, mut l) = (dims.0 as i64, dims.1 as i64, dims.2 as i64, log as i32);
    let mut a = kernel_args![y, dy, dx, o, s, i, l];
    // SAFETY: softmax_backward_T(const T*, const T*, T*, long long x3, int).
    unsafe { launch(d, &name, per_warp(dims.0 * dims.2), &mut a) }
}

/// Writes into `bad` the first row whose target is outside `[0, c)` and not `ignore`
/// (`bad` must hold `n` beforehand).
pub fn validate_targets(
    d: &dyn Driver,
    t: DevicePtr,
    n: usize,
    c: usize,
    ignore: i64,
    bad: DevicePtr,
) -> Result<()> {
    let (mut t, mut n64, mut c64, mut ig, mut bad) = (t, n as i64, c as i64, ignore, bad);
    let mut a = kernel_args![t, n64, c64, ig, bad];
    // SAFETY: validate_targets(const long long*, long long, long long, long long, long long*).
    unsafe {
        launch(
            d,
            "validate_targets",
            LaunchConfig::linear(n, THREADS, MAX_BLOCKS),
            &mut a,
        )
    }
}

/// Per-sample losses (f32) of logits `[n, c]`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    d: &dyn Driver,
    dt: DType,
    x: DevicePtr,
    t: DevicePtr,
    loss: DevicePtr,
    n: usize,
    c: usize,
    ignore: i64,
    eps: f32,
) -> Result<()> {
    let name = format!(
        "cross_entropy_{}",
        float_suffix("cross_entropy", d.device(), dt)?
    );
    let (mut x, mut t, mut loss, mut n64, mut c64, mut ig, mut e) =
        (x, t, loss, n as i64, c as i64, ignore, eps);
    let mut a = kernel_args![x, t, loss, n64, c64, ig, e];
    // SAFETY: cross_entropy_T(const T*, const long long*, float*, long long x3, float).
    unsafe { launch(d, &name, per_warp(n), &mut a) }
}

/// Reduces per-sample losses: `reduction` 1 = mean over non-ignored, 2 = sum; one f32 out.
pub fn ce_reduce(
    d: &dyn Driver,
    loss: DevicePtr,
    t: DevicePtr,
    n: usize,
    ignore: i64,
    reduction: i32,
    out: DevicePtr,
) -> Result<()> {
    let (mut loss, mut t, mut n64, mut ig, mut r, mut out) =
        (loss, t, n as i64, ignore, reduction, out);
    let mut a = kernel_args![loss, t, n64, ig, r, out];
    let cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [THREADS, 1, 1],
        smem: 0,
    };
    // SAFETY: ce_reduce(const float*, const long long*, long long, long long, int, float*).
    unsafe { launch(d, "ce_reduce", cfg, &mut a) }
}

/// Per-sample backward weights (f32) from the loss gradient `g` (f32).
pub fn ce_weights(
    d: &dyn Driver,
    g: DevicePtr,
    t: DevicePtr,
    n: usize,
    ignore: i64,
    reduction: i32,
    w: DevicePtr,
) -> Result<()> {
    let (mut g, mut t, mut n64, mut ig, mut r, mut w) = (g, t, n as i64, ignore, reduction, w);
    let mut a = kernel_args![g, t, n64, ig, r, w];
    let cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [THREADS, 1, 1],
        smem: 0,
    };
    // SAFETY: ce_weights(const float*, const long long*, long long, long long, int, float*).
    unsafe { launch(d, "ce_weights", cfg, &mut a) }
}

/// Gradient of the logits.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    d: &dyn Driver,
    dt: DType,
    x: DevicePtr,
    t: DevicePtr,
    w: DevicePtr,
    dx: DevicePtr,
    n: usize,
    c: usize,
    ignore: i64,
    eps: f32,
) -> Result<()> {
    let name = format!(
        "cross_entropy_backward_{}",
        float_suffix("cross_entropy_backward", d.device(), dt)?
    );
    let (mut x, mut t, mut w, mut dx) = (x, t, w, dx);
    let (mut n64, mut c64, mut ig, mut e) = (n as i64, c as i64, ignore, eps);
    let mut a = kernel_args![x, t, w, dx, n64, c64, ig, e];
    // SAFETY: cross_entropy_backward_T(const T*, const long long*, const float*, T*, long long x3, float).
    unsafe { launch(d, &name, per_warp(n), &mut a) }
}
