//! Typed launches of `kernels-cu/loss.cu`: softmax / log-softmax and cross-entropy. Each takes
//! checked contiguous operands ([`Span`]) and checks them against its launch geometry.

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{float_suffix, launch, MAX_BLOCKS, THREADS};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span};
use crate::kernel_args;
use hemi_engine::{DType, Result};

fn per_warp(lines: usize) -> LaunchConfig {
    LaunchConfig::linear(lines.max(1) * 32, THREADS, MAX_BLOCKS)
}

/// One block of `THREADS` (the block-reduction kernels).
fn one_block() -> LaunchConfig {
    LaunchConfig {
        grid: [1, 1, 1],
        block: [THREADS, 1, 1],
        smem: 0,
    }
}

/// `[outer, size, inner]` element count, checked for overflow.
fn volume(op: &'static str, (o, s, i): (usize, usize, usize)) -> Result<usize> {
    o.checked_mul(s)
        .and_then(|v| v.checked_mul(i))
        .ok_or_else(|| hemi_engine::Error::shape(op, format!("[{o}, {s}, {i}] overflows")))
}

/// Softmax (or log-softmax) of `x` along the middle of contiguous `[outer, size, inner]`
/// into `y` (same dtype and length).
pub fn softmax(x: &Span<'_>, y: &Span<'_>, dims: (usize, usize, usize), log: bool) -> Result<()> {
    const OP: &str = "softmax";
    let n = volume(OP, dims)?;
    expect_len(OP, "the input", x.len(), n)?;
    expect_len(OP, "the output", y.len(), n)?;
    expect_dtype(OP, "the output", y.dtype(), x.dtype())?;
    same_device(OP, x.device(), [y.device()])?;
    if n == 0 {
        return Ok(());
    }
    let d = x.driver();
    let name = format!("softmax_{}", float_suffix(OP, d.device(), x.dtype())?);
    let (mut xp, mut yp) = (x.ptr(), y.ptr());
    let (mut o, mut s, mut i, mut l) = (dims.0 as i64, dims.1 as i64, dims.2 as i64, log as i32);
    let mut a = kernel_args![xp, yp, o, s, i, l];
    // SAFETY: softmax_T(const T*, T*, long long, long long, long long, int); both spans hold
    // outer*size*inner elements of T.
    unsafe { launch(d, &name, per_warp(dims.0 * dims.2), &mut a) }
}

/// Gradient `dx` of softmax (or log-softmax) from its output `y` and `dy`, all of one dtype and
/// `[outer, size, inner]` elements.
pub fn softmax_backward(
    y: &Span<'_>,
    dy: &Span<'_>,
    dx: &Span<'_>,
    dims: (usize, usize, usize),
    log: bool,
) -> Result<()> {
    const OP: &str = "softmax_backward";
    let n = volume(OP, dims)?;
    for (what, s) in [
        ("the output", y),
        ("its gradient", dy),
        ("the input gradient", dx),
    ] {
        expect_len(OP, what, s.len(), n)?;
        expect_dtype(OP, what, s.dtype(), dy.dtype())?;
    }
    same_device(OP, y.device(), [dy.device(), dx.device()])?;
    if n == 0 {
        return Ok(());
    }
    let d = y.driver();
    let name = format!(
        "softmax_backward_{}",
        float_suffix(OP, d.device(), dy.dtype())?
    );
    let (mut yp, mut gp, mut xp) = (y.ptr(), dy.ptr(), dx.ptr());
    let (mut o, mut s, mut i, mut l) = (dims.0 as i64, dims.1 as i64, dims.2 as i64, log as i32);
    let mut a = kernel_args![yp, gp, xp, o, s, i, l];
    // SAFETY: softmax_backward_T(const T*, const T*, T*, long long x3, int); three spans of n.
    unsafe { launch(d, &name, per_warp(dims.0 * dims.2), &mut a) }
}

/// Writes into `bad` (one I64, holding `t.len()` beforehand) the first row whose target in `t`
/// (I64) is outside `[0, c)` and not `ignore`.
pub fn validate_targets(t: &Span<'_>, c: usize, ignore: i64, bad: &Span<'_>) -> Result<()> {
    const OP: &str = "cross_entropy";
    expect_dtype(OP, "the targets", t.dtype(), DType::I64)?;
    expect_dtype(OP, "the result", bad.dtype(), DType::I64)?;
    expect_len(OP, "the result", bad.len(), 1)?;
    same_device(OP, t.device(), [bad.device()])?;
    let n = t.len();
    if n == 0 {
        return Ok(());
    }
    let (mut tp, mut n64, mut c64, mut ig, mut bp) =
        (t.ptr(), n as i64, c as i64, ignore, bad.ptr());
    let mut a = kernel_args![tp, n64, c64, ig, bp];
    let cfg = LaunchConfig::linear(n, THREADS, MAX_BLOCKS);
    // SAFETY: validate_targets(const long long*, long long, long long, long long, long long*);
    // `t` holds n I64, `bad` one.
    unsafe { launch(t.driver(), "validate_targets", cfg, &mut a) }
}

/// Checks shared by the cross-entropy launches: logits `x` `[n, c]`, targets `t` (I64, n).
fn ce_operands(op: &'static str, x: &Span<'_>, t: &Span<'_>, n: usize, c: usize) -> Result<()> {
    let nc = n
        .checked_mul(c)
        .ok_or_else(|| hemi_engine::Error::shape(op, format!("[{n}, {c}] overflows")))?;
    expect_len(op, "the logits", x.len(), nc)?;
    expect_len(op, "the targets", t.len(), n)?;
    expect_dtype(op, "the targets", t.dtype(), DType::I64)?;
    same_device(op, x.device(), [t.device()])
}

/// Per-sample losses (`loss`: F32, n) of logits `x` `[n, c]` with targets `t`.
pub fn cross_entropy(
    x: &Span<'_>,
    t: &Span<'_>,
    loss: &Span<'_>,
    (n, c): (usize, usize),
    ignore: i64,
    eps: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy";
    ce_operands(OP, x, t, n, c)?;
    expect_len(OP, "the losses", loss.len(), n)?;
    expect_dtype(OP, "the losses", loss.dtype(), DType::F32)?;
    same_device(OP, x.device(), [loss.device()])?;
    if n == 0 {
        return Ok(());
    }
    let d = x.driver();
    let name = format!("cross_entropy_{}", float_suffix(OP, d.device(), x.dtype())?);
    let (mut xp, mut tp, mut lp) = (x.ptr(), t.ptr(), loss.ptr());
    let (mut n64, mut c64, mut ig, mut e) = (n as i64, c as i64, ignore, eps);
    let mut a = kernel_args![xp, tp, lp, n64, c64, ig, e];
    // SAFETY: cross_entropy_T(const T*, const long long*, float*, long long x3, float); the
    // spans hold n·c logits, n targets and n losses.
    unsafe { launch(d, &name, per_warp(n), &mut a) }
}

/// Reduces the per-sample losses `loss` (F32, n; targets `t`) into `out` (F32, 1):
/// `reduction` 1 = mean over non-ignored, 2 = sum.
pub fn ce_reduce(
    loss: &Span<'_>,
    t: &Span<'_>,
    ignore: i64,
    reduction: i32,
    out: &Span<'_>,
) -> Result<()> {
    const OP: &str = "cross_entropy";
    ce_weight_operands(OP, loss, t, out, 1)?;
    expect_len(OP, "the losses", loss.len(), t.len())?;
    let (mut lp, mut tp, mut n64, mut ig, mut r, mut op) = (
        loss.ptr(),
        t.ptr(),
        t.len() as i64,
        ignore,
        reduction,
        out.ptr(),
    );
    let mut a = kernel_args![lp, tp, n64, ig, r, op];
    // SAFETY: ce_reduce(const float*, const long long*, long long, long long, int, float*);
    // n losses and targets, one output.
    unsafe { launch(loss.driver(), "ce_reduce", one_block(), &mut a) }
}

/// Checks of the F32 per-sample input `g` (`g_len` elements), targets `t` (I64) and F32
/// output `w` of the reduction kernels.
fn ce_weight_operands(
    op: &'static str,
    g: &Span<'_>,
    t: &Span<'_>,
    w: &Span<'_>,
    w_len: usize,
) -> Result<()> {
    expect_dtype(op, "the targets", t.dtype(), DType::I64)?;
    expect_dtype(op, "the per-sample values", g.dtype(), DType::F32)?;
    expect_dtype(op, "the output", w.dtype(), DType::F32)?;
    expect_len(op, "the output", w.len(), w_len)?;
    same_device(op, t.device(), [g.device(), w.device()])
}

/// Per-sample backward weights `w` (F32, n) from the loss gradient `g` (F32: n for
/// `reduction` 0, else 1) and targets `t` (I64, n); `reduction` 0 none, 1 mean, 2 sum.
pub fn ce_weights(
    g: &Span<'_>,
    t: &Span<'_>,
    ignore: i64,
    reduction: i32,
    w: &Span<'_>,
) -> Result<()> {
    const OP: &str = "cross_entropy_backward";
    let n = t.len();
    ce_weight_operands(OP, g, t, w, n)?;
    expect_len(
        OP,
        "the loss gradient",
        g.len(),
        if reduction == 0 { n } else { 1 },
    )?;
    if n == 0 {
        return Ok(());
    }
    let (mut gp, mut tp, mut n64, mut ig, mut r, mut wp) =
        (g.ptr(), t.ptr(), n as i64, ignore, reduction, w.ptr());
    let mut a = kernel_args![gp, tp, n64, ig, r, wp];
    // SAFETY: ce_weights(const float*, const long long*, long long, long long, int, float*);
    // `g` holds what `reduction` reads, `t` and `w` n elements.
    unsafe { launch(g.driver(), "ce_weights", one_block(), &mut a) }
}

/// Gradient `dx` (the logits' dtype, `[n, c]`) of the logits `x` from per-sample weights `w`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    x: &Span<'_>,
    t: &Span<'_>,
    w: &Span<'_>,
    dx: &Span<'_>,
    (n, c): (usize, usize),
    ignore: i64,
    eps: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy_backward";
    ce_operands(OP, x, t, n, c)?;
    expect_len(OP, "the weights", w.len(), n)?;
    expect_dtype(OP, "the weights", w.dtype(), DType::F32)?;
    expect_len(OP, "the logits' gradient", dx.len(), x.len())?;
    expect_dtype(OP, "the logits' gradient", dx.dtype(), x.dtype())?;
    same_device(OP, x.device(), [w.device(), dx.device()])?;
    if n == 0 {
        return Ok(());
    }
    let d = x.driver();
    let name = format!(
        "cross_entropy_backward_{}",
        float_suffix(OP, d.device(), x.dtype())?
    );
    let (mut xp, mut tp, mut wp, mut dp) = (x.ptr(), t.ptr(), w.ptr(), dx.ptr());
    let (mut n64, mut c64, mut ig, mut e) = (n as i64, c as i64, ignore, eps);
    let mut a = kernel_args![xp, tp, wp, dp, n64, c64, ig, e];
    // SAFETY: cross_entropy_backward_T(const T*, const long long*, const float*, T*, long long
    // x3, float); n·c logits and gradients, n targets and weights.
    unsafe { launch(d, &name, per_warp(n), &mut a) }
}
