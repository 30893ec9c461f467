//! Typed launches of `kernels-cu/pool.cu`: max (with argmax), average and adaptive average
//! pooling and their gradients, from checked spans.

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{float_suffix, launch, MAX_BLOCKS, THREADS};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span};
use crate::kernel_args;
use hemi_engine::backend::Pool2dSpec;
use hemi_engine::{DType, Error, MemoryFormat, Result};

/// `struct PoolArgs` of pool.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PoolArgs {
    planes: i64,
    h: i64,
    w: i64,
    oh: i64,
    ow: i64,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    dh: i32,
    dw: i32,
    count_include_pad: i32,
    channels_last: i32,
    c: i64,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<PoolArgs>() == 88 && offset_of!(PoolArgs, kh) == 40);
    assert!(offset_of!(PoolArgs, channels_last) == 76 && offset_of!(PoolArgs, c) == 80);
};

/// Which pooling kernel runs, with its geometry.
#[derive(Debug, Clone, Copy)]
pub enum Pool {
    /// Max pooling (indices: I64 argmax per output).
    Max(Pool2dSpec),
    /// Average pooling.
    Avg(Pool2dSpec),
    /// Adaptive average pooling of `[n, c, h, w]` to `(oh, ow)`, dense in the format.
    Adaptive([usize; 4], (usize, usize), MemoryFormat),
}

fn small(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("window parameter {v} is too large")))
}

impl Pool {
    fn op(&self, backward: bool) -> &'static str {
        match (self, backward) {
            (Pool::Max(_), false) => "max_pool2d",
            (Pool::Max(_), true) => "max_pool2d_backward",
            (Pool::Avg(_), false) => "avg_pool2d",
            (Pool::Avg(_), true) => "avg_pool2d_backward",
            (Pool::Adaptive(..), false) => "adaptive_avg_pool2d",
            (Pool::Adaptive(..), true) => "adaptive_avg_pool2d_backward",
        }
    }

    fn kernel(&self, backward: bool) -> &'static str {
        match (self, backward) {
            (Pool::Max(_), false) => "max_pool",
            (Pool::Max(_), true) => "max_pool_backward",
            (Pool::Avg(_), false) => "avg_pool",
            (Pool::Avg(_), true) => "avg_pool_backward",
            (Pool::Adaptive(..), false) => "adaptive_avg_pool",
            (Pool::Adaptive(..), true) => "adaptive_avg_pool_backward",
        }
    }

    /// Validates the geometry; returns the kernel record and the input / output lengths.
    fn args(&self, op: &'static str) -> Result<(PoolArgs, usize, usize)> {
        let (n, c, h, w, oh, ow, spec) = match *self {
            Pool::Max(s) | Pool::Avg(s) => {
                s.validate(op)?;
                if matches!(self, Pool::Avg(_)) && s.dilation != (1, 1) {
                    return Err(Error::invalid(op, "average pooling takes no dilation"));
                }
                (s.n, s.c, s.h, s.w, s.out_h(), s.out_w(), Some(s))
            }
            Pool::Adaptive([n, c, h, w], (oh, ow), _) => {
                if oh == 0 || ow == 0 || h == 0 || w == 0 {
                    return Err(Error::invalid(
                        op,
                        format!("adaptive pooling of {h}x{w} to {oh}x{ow} needs positive sizes"),
                    ));
                }
                (n, c, h, w, oh, ow, None)
            }
        };
        let plane_in = h.checked_mul(w);
        let plane_out = oh.checked_mul(ow);
        let total = |p: Option<usize>| {
            p.and_then(|p| p.checked_mul(n))
                .and_then(|v| v.checked_mul(c))
                .ok_or_else(|| {
                    Error::shape(
                        op,
                        format!("[{n}, {c}, {h}, {w}] pooled to {oh}x{ow} overflows"),
                    )
                })
        };
        let (in_len, out_len) = (total(plane_in)?, total(plane_out)?);
        let format = match *self {
            Pool::Max(s) | Pool::Avg(s) => s.format,
            Pool::Adaptive(.., f) => f,
        };
        let s = spec.unwrap_or(Pool2dSpec {
            format,
            n,
            c,
            h,
            w,
            kernel: (1, 1),
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            count_include_pad: true,
        });
        let args = PoolArgs {
            planes: (n * c) as i64,
            h: h as i64,
            w: w as i64,
            oh: oh as i64,
            ow: ow as i64,
            kh: small(op, s.kernel.0)?,
            kw: small(op, s.kernel.1)?,
            sh: small(op, s.stride.0)?,
            sw: small(op, s.stride.1)?,
            ph: small(op, s.padding.0)?,
            pw: small(op, s.padding.1)?,
            dh: small(op, s.dilation.0)?,
            dw: small(op, s.dilation.1)?,
            count_include_pad: i32::from(s.count_include_pad),
            channels_last: i32::from(format == MemoryFormat::ChannelsLast),
            c: c as i64,
        };
        Ok((args, in_len, out_len))
    }
}

/// Forward: `x` (input plane size) into `y` (output plane size, x's dtype); max pooling also
/// writes the I64 argmax of each output into `indices`.
pub fn forward(pool: Pool, x: &Span<'_>, y: &Span<'_>, indices: Option<&Span<'_>>) -> Result<()> {
    let op = pool.op(false);
    let (mut args, in_len, out_len) = pool.args(op)?;
    expect_len(op, "the input", x.len(), in_len)?;
    expect_len(op, "the output", y.len(), out_len)?;
    expect_dtype(op, "the output", y.dtype(), x.dtype())?;
    same_device(op, x.device(), [y.device()])?;
    let d = x.driver();
    let name = format!(
        "{}_{}",
        pool.kernel(false),
        float_suffix(op, d.device(), x.dtype())?
    );
    if out_len == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::linear(out_len, THREADS, MAX_BLOCKS);
    let (mut xp, mut yp) = (x.ptr(), y.ptr());
    match (pool, indices) {
        (Pool::Max(_), Some(idx)) => {
            expect_len(op, "the indices", idx.len(), out_len)?;
            expect_dtype(op, "the indices", idx.dtype(), DType::I64)?;
            same_device(op, x.device(), [idx.device()])?;
            let mut ip = idx.ptr();
            let mut a = kernel_args![args, xp, yp, ip];
            // SAFETY: max_pool_T(PoolArgs, const T*, T*, long long*); x holds the input planes,
            // y and the indices one element per output.
            unsafe { launch(d, &name, cfg, &mut a) }
        }
        (Pool::Max(_), None) => Err(Error::invalid(op, "max pooling writes indices")),
        (_, _) => {
            let mut a = kernel_args![args, xp, yp];
            // SAFETY: (adaptive_)avg_pool_T(PoolArgs, const T*, T*); lengths checked above.
            unsafe { launch(d, &name, cfg, &mut a) }
        }
    }
}

/// Backward: the input gradient `dx` from `dy` (and, for max pooling, the forward's indices,
/// each checked to lie in its plane by the kernel's gather: an index outside matches nothing).
pub fn backward(
    pool: Pool,
    dy: &Span<'_>,
    indices: Option<&Span<'_>>,
    dx: &Span<'_>,
) -> Result<()> {
    let op = pool.op(true);
    let (mut args, in_len, out_len) = pool.args(op)?;
    expect_len(op, "the output gradient", dy.len(), out_len)?;
    expect_len(op, "the input gradient", dx.len(), in_len)?;
    expect_dtype(op, "the input gradient", dx.dtype(), dy.dtype())?;
    same_device(op, dy.device(), [dx.device()])?;
    let d = dy.driver();
    let name = format!(
        "{}_{}",
        pool.kernel(true),
        float_suffix(op, d.device(), dy.dtype())?
    );
    if in_len == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig::linear(in_len, THREADS, MAX_BLOCKS);
    let (mut gp, mut xp) = (dy.ptr(), dx.ptr());
    match (pool, indices) {
        (Pool::Max(_), Some(idx)) => {
            expect_len(op, "the indices", idx.len(), out_len)?;
            expect_dtype(op, "the indices", idx.dtype(), DType::I64)?;
            same_device(op, dy.device(), [idx.device()])?;
            let mut ip = idx.ptr();
            let mut a = kernel_args![args, gp, ip, xp];
            // SAFETY: max_pool_backward_T(PoolArgs, const T*, const long long*, T*); dy and the
            // indices hold one element per output, dx the input planes.
            unsafe { launch(d, &name, cfg, &mut a) }
        }
        (Pool::Max(_), None) => Err(Error::invalid(
            op,
            "max pooling's gradient needs its indices",
        )),
        (_, _) => {
            let mut a = kernel_args![args, gp, xp];
            // SAFETY: (adaptive_)avg_pool_backward_T(PoolArgs, const T*, T*); lengths checked.
            unsafe { launch(d, &name, cfg, &mut a) }
        }
    }
}
