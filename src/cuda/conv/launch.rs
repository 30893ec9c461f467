//! Typed launches of `kernels-cu/conv.cu`: fprop, dgrad and wgrad as implicit GEMMs, from
//! checked contiguous operands ([`Span`]) whose lengths, dtypes and devices are checked
//! against the convolution's geometry here.

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{float_suffix, launch};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span};
use crate::kernel_args;
use hemi_engine::backend::Conv2dSpec;
use hemi_engine::{Error, Result};

/// `struct ConvArgs` of conv.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ConvArgs {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
    k: i64,
    r: i64,
    s: i64,
    p: i64,
    q: i64,
    stride_h: i32,
    stride_w: i32,
    pad_h: i32,
    pad_w: i32,
    dil_h: i32,
    dil_w: i32,
    a: u64,
    b: u64,
    out: u64,
    ws: u64,
    splits: i32,
    pad: i32,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ConvArgs>() == 136);
    assert!(offset_of!(ConvArgs, stride_h) == 72 && offset_of!(ConvArgs, a) == 96);
    assert!(offset_of!(ConvArgs, ws) == 120 && offset_of!(ConvArgs, splits) == 128);
};

/// Which of the three convolution GEMMs runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvMode {
    /// `y = conv(x, w)`: a = x, b = w, out = y.
    Fprop,
    /// `dx` from dy and w: a = dy, b = w, out = dx.
    Dgrad,
    /// `dw` from dy and x: a = dy, b = x, out = dw.
    Wgrad,
}

/// Tile of the SIMT kernels (block tile edge).
const TILE: u64 = 64;

/// The implicit GEMM's (M, N, K) of `mode`.
fn gemm_dims(mode: ConvMode, spec: &Conv2dSpec) -> (usize, usize, usize) {
    let (p, q) = (spec.out_h(), spec.out_w());
    match mode {
        ConvMode::Fprop => (spec.n * p * q, spec.c_out, spec.c_in * spec.kh * spec.kw),
        ConvMode::Dgrad => (
            spec.n * spec.h * spec.w,
            spec.c_in,
            spec.c_out * spec.kh * spec.kw,
        ),
        ConvMode::Wgrad => (spec.c_out, spec.c_in * spec.kh * spec.kw, spec.n * p * q),
    }
}

/// Split-K factor of the weight gradient (a validated `spec`): its GEMM is skinny (M = K
/// filters, N = C·R·S, but K = N·P·Q reaches millions), so its K is split until about 256
/// blocks fill the GPU, each split keeping at least 1024 of K; at most 64. 1 = no split.
pub fn wgrad_splits(spec: &Conv2dSpec) -> usize {
    let (gm, gn, gk) = gemm_dims(ConvMode::Wgrad, spec);
    let blocks = (gm.div_ceil(TILE as usize) * gn.div_ceil(TILE as usize)).max(1);
    256usize.div_ceil(blocks).min(gk / 1024).clamp(1, 64)
}

/// Elements of the split-K workspace (f32) for `splits`: `splits · M · N` of wgrad's GEMM.
pub fn wgrad_workspace(spec: &Conv2dSpec, splits: usize) -> usize {
    let (gm, gn, _) = gemm_dims(ConvMode::Wgrad, spec);
    if splits > 1 {
        splits * gm * gn
    } else {
        0
    }
}

fn small(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} {v} is too large")))
}

/// Runs `mode` of the convolution `spec` (groups 1) on checked operands. Wgrad with
/// `splits > 1` writes f32 partials into `ws` (`wgrad_workspace` elements) and sums them in a
/// second launch.
pub fn conv(
    mode: ConvMode,
    spec: &Conv2dSpec,
    a: &Span<'_>,
    b: &Span<'_>,
    out: &Span<'_>,
    (splits, ws): (usize, Option<&Span<'_>>),
) -> Result<()> {
    let op = match mode {
        ConvMode::Fprop => "conv2d",
        ConvMode::Dgrad => "conv2d_backward_input",
        ConvMode::Wgrad => "conv2d_backward_weight",
    };
    spec.validate(op)?;
    if spec.groups != 1 {
        return Err(Error::unsupported(
            op,
            a.device(),
            format!(
                "groups = {} (the CUDA kernels take groups = 1)",
                spec.groups
            ),
        ));
    }
    let (p, q) = (spec.out_h(), spec.out_w());
    let x_len = spec.n * spec.c_in * spec.h * spec.w;
    let w_len = spec.c_out * spec.c_in * spec.kh * spec.kw;
    let y_len = spec.n * spec.c_out * p * q;
    let (a_len, b_len, out_len, a_what, b_what, out_what) = match mode {
        ConvMode::Fprop => (x_len, w_len, y_len, "the input", "the weight", "the output"),
        ConvMode::Dgrad => (
            y_len,
            w_len,
            x_len,
            "the output gradient",
            "the weight",
            "the input gradient",
        ),
        ConvMode::Wgrad => (
            y_len,
            x_len,
            w_len,
            "the output gradient",
            "the input",
            "the weight gradient",
        ),
    };
    expect_len(op, a_what, a.len(), a_len)?;
    expect_len(op, b_what, b.len(), b_len)?;
    expect_len(op, out_what, out.len(), out_len)?;
    expect_dtype(op, b_what, b.dtype(), a.dtype())?;
    expect_dtype(op, out_what, out.dtype(), a.dtype())?;
    same_device(op, a.device(), [b.device(), out.device()])?;
    if out_len == 0 {
        return Ok(());
    }
    let (gm, gn, gk) = gemm_dims(mode, spec);
    // The kernels decompose GEMM indices in 32-bit arithmetic.
    if [gm, gn, gk].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::invalid(
            op,
            format!("an implicit GEMM of {gm}x{gn}x{gk} exceeds the kernels' 2^31 index range"),
        ));
    }
    if !(1..=64).contains(&splits) || (splits > 1 && mode != ConvMode::Wgrad) {
        return Err(Error::invalid(
            op,
            format!("split-K factor {splits} (1..=64, wgrad only)"),
        ));
    }
    let ws_ptr = match ws {
        Some(w) if splits > 1 => {
            expect_len(
                op,
                "the split-K workspace",
                w.len(),
                wgrad_workspace(spec, splits),
            )?;
            expect_dtype(
                op,
                "the split-K workspace",
                w.dtype(),
                hemi_engine::DType::F32,
            )?;
            same_device(op, a.device(), [w.device()])?;
            w.ptr()
        }
        None if splits == 1 => 0,
        _ => {
            return Err(Error::invalid(
                op,
                "a split-K launch needs its workspace (and only it)",
            ))
        }
    };
    let (bx, by) = ((gm as u64).div_ceil(TILE), (gn as u64).div_ceil(TILE));
    if bx > u32::MAX as u64 || by > 65535 {
        return Err(Error::invalid(
            op,
            format!("a {gm}x{gn} implicit GEMM exceeds one launch"),
        ));
    }
    let d = a.driver();
    let suffix = float_suffix(op, d.device(), a.dtype())?;
    let name = match mode {
        ConvMode::Fprop => format!("conv_fprop_{suffix}"),
        ConvMode::Dgrad => format!("conv_dgrad_{suffix}"),
        ConvMode::Wgrad => format!("conv_wgrad_{suffix}"),
    };
    let mut args = ConvArgs {
        n: spec.n as i64,
        c: spec.c_in as i64,
        h: spec.h as i64,
        w: spec.w as i64,
        k: spec.c_out as i64,
        r: spec.kh as i64,
        s: spec.kw as i64,
        p: p as i64,
        q: q as i64,
        stride_h: small(op, "stride", spec.stride.0)?,
        stride_w: small(op, "stride", spec.stride.1)?,
        pad_h: small(op, "padding", spec.padding.0)?,
        pad_w: small(op, "padding", spec.padding.1)?,
        dil_h: small(op, "dilation", spec.dilation.0)?,
        dil_w: small(op, "dilation", spec.dilation.1)?,
        a: a.ptr(),
        b: b.ptr(),
        out: out.ptr(),
        ws: ws_ptr,
        splits: splits as i32,
        pad: 0,
    };
    let cfg = LaunchConfig {
        grid: [bx as u32, by as u32, splits as u32],
        block: [256, 1, 1],
        smem: 0,
    };
    let mut kargs = kernel_args![args];
    // SAFETY: conv_{fprop,dgrad,wgrad}_T(ConvArgs) by value; the three spans were checked to
    // hold exactly the elements of T the mode's indices reach (x, w, y sizes of `spec`), and a
    // split launch's workspace its splits·M·N f32 partials.
    unsafe { launch(d, &name, cfg, &mut kargs) }?;
    if splits > 1 {
        let reduce = format!("conv_wgrad_reduce_{suffix}");
        let cfg = LaunchConfig::linear(
            gm * gn,
            crate::cuda::launch::THREADS,
            crate::cuda::launch::MAX_BLOCKS,
        );
        // SAFETY: conv_wgrad_reduce_T(ConvArgs): reads the splits·M·N partials, writes the
        // M·N outputs (both checked above).
        unsafe { launch(d, &reduce, cfg, &mut kargs) }?;
    }
    Ok(())
}
