//! Typed launches of `kernels-cu/norm.cu`: batch-norm statistics + affine apply, and the
//! backward's per-channel sums + input gradient, from checked spans.

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{dtype_code, float_suffix, launch, MAX_BLOCKS, THREADS};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span};
use crate::kernel_args;
use hemi_engine::{DType, Error, Result};

/// One block per channel for the statistics kernels.
fn per_channel(op: &'static str, c: usize) -> Result<LaunchConfig> {
    if c > u32::MAX as usize {
        return Err(Error::invalid(
            op,
            format!("{c} channels exceed one launch"),
        ));
    }
    Ok(LaunchConfig {
        grid: [c as u32, 1, 1],
        block: [256, 1, 1],
        smem: 0,
    })
}

/// Row splits of the channels-last statistics kernels over `[m, c]` (S = 1): enough blocks
/// of 32 channels × a row range to fill a large GPU (about 528), each range at least 64 rows.
pub fn nhwc_splits(m: usize, c: usize) -> usize {
    let channel_blocks = c.div_ceil(32).max(1);
    528usize
        .div_ceil(channel_blocks)
        .min(m / 64)
        .clamp(1, 65535)
}

/// f32 scratch of the channels-last statistics: two partial sums per (split, channel) and
/// the mean.
pub fn nhwc_scratch_len(m: usize, c: usize) -> usize {
    (2 * nhwc_splits(m, c) + 1) * c
}

/// The channels-last grid: (channel blocks of 32, row splits), 8 warps.
fn nhwc_grid(op: &'static str, m: usize, c: usize) -> Result<LaunchConfig> {
    let bx = c.div_ceil(32);
    if bx > u32::MAX as usize {
        return Err(Error::invalid(
            op,
            format!("{c} channels exceed one launch"),
        ));
    }
    Ok(LaunchConfig {
        grid: [bx as u32, nhwc_splits(m, c) as u32, 1],
        block: [256, 1, 1],
        smem: 0,
    })
}

/// Checks the channels-last scratch span.
fn check_scratch(
    op: &'static str,
    scratch: &Span<'_>,
    m: usize,
    c: usize,
    on: &Span<'_>,
) -> Result<()> {
    expect_len(
        op,
        "the statistics scratch",
        scratch.len(),
        nhwc_scratch_len(m, c),
    )?;
    expect_dtype(op, "the statistics scratch", scratch.dtype(), DType::F32)?;
    same_device(op, on.device(), [scratch.device()])
}

/// Checks `[N, C, S]` activations `acts` (one dtype, n·c·s each) and per-channel `stats`
/// (one dtype, c each); returns (n·c·s, the stats' dtype code).
fn check_operands(
    op: &'static str,
    (n, c, s): (usize, usize, usize),
    acts: &[(&str, &Span<'_>)],
    stats: &[(&str, &Span<'_>)],
) -> Result<(usize, i32)> {
    let total = n
        .checked_mul(c)
        .and_then(|v| v.checked_mul(s))
        .ok_or_else(|| Error::shape(op, format!("[{n}, {c}, {s}] overflows")))?;
    let (first, sdt) = (acts[0].1, stats[0].1.dtype());
    for (what, a) in acts {
        expect_len(op, what, a.len(), total)?;
        expect_dtype(op, what, a.dtype(), first.dtype())?;
    }
    for (what, st) in stats {
        expect_len(op, what, st.len(), c)?;
        expect_dtype(op, what, st.dtype(), sdt)?;
    }
    let devices = acts.iter().chain(stats).map(|(_, a)| a.device());
    same_device(op, first.device(), devices)?;
    Ok((total, dtype_code(op, first.device(), sdt)?))
}

/// Training-mode forward: batch statistics of `x` `[n, c, s]` into `mean`, `var`, `invstd`
/// (the dtype of `w` and `b`), the per-channel affine map into `affine` (F32, 2c), and
/// `y = (x − mean)·invstd·w + b` — clamped at 0 with `relu` (the fused BN + ReLU). With S = 1
/// (channels-last storage) and a `scratch` of `nhwc_scratch_len(n, c)` f32, the statistics
/// come from the coalesced channels-last kernels.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &Span<'_>,
    w: &Span<'_>,
    b: &Span<'_>,
    (dims, eps, relu): ((usize, usize, usize), f64, bool),
    [mean, var, invstd]: [&Span<'_>; 3],
    (affine, scratch): (&Span<'_>, Option<&Span<'_>>),
    y: &Span<'_>,
) -> Result<()> {
    const OP: &str = "batch_norm";
    let (n, c, s) = dims;
    let stats = [
        ("the weight", w),
        ("the bias", b),
        ("the mean", mean),
        ("the variance", var),
        ("invstd", invstd),
    ];
    let (total, sdt) = check_operands(OP, dims, &[("the input", x), ("the output", y)], &stats)?;
    expect_len(OP, "the affine scratch", affine.len(), 2 * c)?;
    expect_dtype(OP, "the affine scratch", affine.dtype(), DType::F32)?;
    same_device(OP, x.device(), [affine.device()])?;
    if n * s == 0 {
        return Err(Error::invalid(
            OP,
            format!("no values per channel in input [{n}, {c}, {s}]"),
        ));
    }
    let d = x.driver();
    let suffix = float_suffix(OP, d.device(), x.dtype())?;
    let (mut xp, mut wp, mut bp, mut sd) = (x.ptr(), w.ptr(), b.ptr(), sdt);
    let (mut n64, mut c64, mut s64, mut e) = (n as i64, c as i64, s as i64, eps as f32);
    let (mut mp, mut vp, mut ip, mut ap) = (mean.ptr(), var.ptr(), invstd.ptr(), affine.ptr());
    match scratch {
        Some(sc) if s == 1 => {
            check_scratch(OP, sc, n, c, x)?;
            let (grid, mut sp) = (nhwc_grid(OP, n, c)?, sc.ptr());
            let mut splits = grid.grid[1] as i32;
            let mut a = kernel_args![xp, n64, c64, sp];
            // SAFETY: bn_nhwc_sum_T(const T*, long long m, long long c, float*): x holds m·c
            // elements of T; the scratch (2·splits + 1)·c f32, checked.
            unsafe { launch(d, &format!("bn_nhwc_sum_{suffix}"), grid, &mut a) }?;
            let mut a = kernel_args![n64, c64, splits, sp];
            let cfg = LaunchConfig::linear(c, THREADS, MAX_BLOCKS);
            // SAFETY: bn_nhwc_mean_kernel(long long m, long long c, int splits, float*): the
            // scratch as above.
            unsafe { launch(d, "bn_nhwc_mean_kernel", cfg, &mut a) }?;
            let mut a = kernel_args![xp, n64, c64, sp];
            // SAFETY: bn_nhwc_sqdev_T: as bn_nhwc_sum_T.
            unsafe { launch(d, &format!("bn_nhwc_sqdev_{suffix}"), grid, &mut a) }?;
            let mut a = kernel_args![wp, bp, sd, n64, c64, splits, e, mp, vp, ip, ap, sp];
            // SAFETY: bn_nhwc_finish_kernel(u64 x2, int, long long x2, int, float, u64 x3,
            // float*, const float*): the stats spans c elements of code `sdt`, affine 2c f32,
            // the scratch as above.
            unsafe { launch(d, "bn_nhwc_finish_kernel", cfg, &mut a) }?;
        }
        _ => {
            let mut a = kernel_args![xp, wp, bp, sd, n64, c64, s64, e, mp, vp, ip, ap];
            // SAFETY: bn_stats_T(const T*, u64, u64, int, long long x3, float, u64 x3, float*);
            // x holds n·c·s elements of T, the five stats spans c elements of code `sdt`,
            // affine 2c f32.
            unsafe {
                launch(
                    d,
                    &format!("bn_stats_{suffix}"),
                    per_channel(OP, c)?,
                    &mut a,
                )
            }?;
        }
    }
    let (mut xp, mut ap, mut yp, mut t) = (x.ptr(), affine.ptr(), y.ptr(), total as i64);
    let mut r = i32::from(relu);
    let mut a = kernel_args![xp, ap, yp, c64, s64, t, r];
    let cfg = LaunchConfig::linear(total, THREADS, MAX_BLOCKS);
    // SAFETY: bn_apply_T(const T*, const float*, T*, long long x3, int); x and y hold `total`
    // elements of T, affine 2c f32.
    unsafe { launch(d, &format!("bn_apply_{suffix}"), cfg, &mut a) }
}

/// Backward: `dweight = Σdy·x̂`, `dbias = Σdy` (the stats' dtype; their f32 values also in
/// `sums`, 2c) and `dx = w·invstd/M·(M·dy − Σdy − x̂·Σdy·x̂)`. With `relu_out` (the fused
/// BN + ReLU's output) dy reads as 0 where it is ≤ 0. A `scratch` with S = 1 selects the
/// channels-last sums, as in [`batch_norm_train`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    dy: &Span<'_>,
    relu_out: Option<&Span<'_>>,
    x: &Span<'_>,
    [w, mean, invstd]: [&Span<'_>; 3],
    dims: (usize, usize, usize),
    [dweight, dbias]: [&Span<'_>; 2],
    (sums, scratch): (&Span<'_>, Option<&Span<'_>>),
    dx: &Span<'_>,
) -> Result<()> {
    const OP: &str = "batch_norm_backward";
    let (n, c, s) = dims;
    let acts = [
        ("the output gradient", dy),
        ("the input", x),
        ("the input gradient", dx),
    ];
    let stats = [
        ("the weight", w),
        ("the mean", mean),
        ("invstd", invstd),
        ("the weight gradient", dweight),
        ("the bias gradient", dbias),
    ];
    let (total, sdt) = check_operands(OP, dims, &acts, &stats)?;
    if let Some(z) = relu_out {
        check_operands(
            OP,
            dims,
            &[("the input", x), ("the ReLU output", z)],
            &stats,
        )?;
    }
    expect_len(OP, "the sums scratch", sums.len(), 2 * c)?;
    expect_dtype(OP, "the sums scratch", sums.dtype(), DType::F32)?;
    same_device(OP, dy.device(), [sums.device()])?;
    if n * s == 0 {
        return Err(Error::invalid(
            OP,
            format!("no values per channel in input [{n}, {c}, {s}]"),
        ));
    }
    let d = dy.driver();
    let suffix = float_suffix(OP, d.device(), dy.dtype())?;
    let (mut gp, mut xp, mut mp, mut ip, mut sd) =
        (dy.ptr(), x.ptr(), mean.ptr(), invstd.ptr(), sdt);
    let (mut n64, mut c64, mut s64) = (n as i64, c as i64, s as i64);
    let (mut dwp, mut dbp, mut sp) = (dweight.ptr(), dbias.ptr(), sums.ptr());
    let mut zp = relu_out.map_or(0, Span::ptr);
    match scratch {
        Some(sc) if s == 1 => {
            check_scratch(OP, sc, n, c, dy)?;
            let (grid, mut scp) = (nhwc_grid(OP, n, c)?, sc.ptr());
            let mut splits = grid.grid[1] as i32;
            let mut a = kernel_args![gp, zp, xp, mp, ip, sd, n64, c64, scp];
            // SAFETY: bn_nhwc_backward_partial_T(const T*, u64, const T*, u64, u64, int, long
            // long x2, float*): dy, x and a ReLU output (or 0) hold m·c elements of T, the
            // stats c of code `sdt`, the scratch (2·splits + 1)·c f32, checked.
            unsafe {
                launch(
                    d,
                    &format!("bn_nhwc_backward_partial_{suffix}"),
                    grid,
                    &mut a,
                )
            }?;
            let mut a = kernel_args![c64, splits, sd, dwp, dbp, sp, scp];
            let cfg = LaunchConfig::linear(c, THREADS, MAX_BLOCKS);
            // SAFETY: bn_nhwc_backward_sums_kernel(long long, int, int, u64 x2, float*, const
            // float*): dweight/dbias c of code `sdt`, sums 2c f32, the scratch as above.
            unsafe { launch(d, "bn_nhwc_backward_sums_kernel", cfg, &mut a) }?;
        }
        _ => {
            let mut a = kernel_args![gp, zp, xp, mp, ip, sd, n64, c64, s64, dwp, dbp, sp];
            // SAFETY: bn_backward_sums_T(const T*, u64, const T*, u64, u64, int, long long x3,
            // u64, u64, float*); dy, x and a ReLU output (or 0) hold n·c·s elements of T, the
            // stats spans c of code `sdt`, sums 2c f32.
            unsafe {
                launch(
                    d,
                    &format!("bn_backward_sums_{suffix}"),
                    per_channel(OP, c)?,
                    &mut a,
                )
            }?;
        }
    }
    let (mut wp, mut dxp) = (w.ptr(), dx.ptr());
    let mut a = kernel_args![gp, zp, xp, wp, mp, ip, sd, sp, dxp, n64, c64, s64];
    let cfg = LaunchConfig::linear(total, THREADS, MAX_BLOCKS);
    // SAFETY: bn_backward_dx_T(const T*, u64, const T*, u64 x3, int, const float*, T*, long
    // long x3); as above, dx holds n·c·s elements of T.
    unsafe { launch(d, &format!("bn_backward_dx_{suffix}"), cfg, &mut a) }
}
