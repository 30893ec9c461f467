//! Typed launches of `kernels-cu/conv.cu`: fprop, dgrad and wgrad as implicit GEMMs (the SIMT
//! tier and the Tensor-Core tier), the split-K reduction, and the channel packing of the
//! Tensor-Core tier's NHWC operands — from checked contiguous operands ([`Span`]) whose
//! lengths, dtypes and devices are checked against the convolution's geometry here.

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{dtype_code, float_suffix, launch, MAX_BLOCKS, THREADS};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span};
use crate::kernel_args;
use hemi_engine::backend::Conv2dSpec;
use hemi_engine::{DType, Error, MemoryFormat, Result};

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
    channels_last: i32,
    out_dtype: i32,
    pad: i32,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ConvArgs>() == 144);
    assert!(offset_of!(ConvArgs, channels_last) == 132 && offset_of!(ConvArgs, out_dtype) == 136);
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

/// Which kernels run a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `conv_{mode}_T`: SIMT, any float dtype, NCHW/KCRS or NHWC/KRSC.
    Simt,
    /// `conv_mma_{mode}_T`: Tensor Cores, f16/bf16, NHWC/KRSC with C and K multiples of 8.
    Mma,
}

impl Tier {
    /// (block tile edge, k-tile depth, threads per block).
    fn geometry(self) -> (usize, usize, u32) {
        match self {
            Tier::Simt => (64, 16, 256),
            Tier::Mma => (128, 32, 128),
        }
    }
}

/// Dynamic shared memory of the Tensor-Core tier: 3 stages of two 128x32 16-bit tiles.
const MMA_SMEM: u32 = 3 * 2 * 128 * 32 * 2;

/// The implicit GEMM's (M, N, K) of `mode`.
pub fn gemm_dims(mode: ConvMode, spec: &Conv2dSpec) -> (usize, usize, usize) {
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

/// Split-K factor of `mode` on `tier` (a validated `spec`): a skinny GEMM (wgrad: M = K
/// filters, N = C·R·S, but K = N·P·Q reaches millions; fprop of the late 7x7 layers at small
/// batches) has too few output tiles to fill the GPU, so its K is split until about 256
/// blocks run, each split keeping at least 64 k-tiles; at most 64 splits. 1 = no split.
pub fn splits(mode: ConvMode, tier: Tier, spec: &Conv2dSpec) -> usize {
    let (gm, gn, gk) = gemm_dims(mode, spec);
    let (tile, tk, _) = tier.geometry();
    let blocks = (gm.div_ceil(tile) * gn.div_ceil(tile)).max(1);
    256usize.div_ceil(blocks).min(gk / (64 * tk)).clamp(1, 64)
}

/// Elements of the split-K workspace (f32) for `splits`: `splits · M · N` of the GEMM.
pub fn workspace_len(mode: ConvMode, spec: &Conv2dSpec, splits: usize) -> usize {
    let (gm, gn, _) = gemm_dims(mode, spec);
    if splits > 1 {
        splits * gm * gn
    } else {
        0
    }
}

fn small(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} {v} is too large")))
}

/// Runs `mode` of the convolution `spec` (groups 1) with `tier`'s kernels on checked
/// operands dense in `spec.format`, the output in `spec.out_dtype` (default: the inputs'). With
/// `splits > 1` the GEMM's f32 partials go to `ws` (`workspace_len` elements) and a second
/// launch sums them. The Tensor-Core tier needs f16/bf16, channels-last, and C and K multiples
/// of 8 (callers pack other shapes with [`pack`]).
#[allow(clippy::too_many_arguments)]
pub fn conv(
    mode: ConvMode,
    tier: Tier,
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
    let out_dtype = spec.out_dtype.unwrap_or(a.dtype());
    expect_len(op, a_what, a.len(), a_len)?;
    expect_len(op, b_what, b.len(), b_len)?;
    expect_len(op, out_what, out.len(), out_len)?;
    expect_dtype(op, b_what, b.dtype(), a.dtype())?;
    expect_dtype(op, out_what, out.dtype(), out_dtype)?;
    same_device(op, a.device(), [b.device(), out.device()])?;
    let d = a.driver();
    let suffix = float_suffix(op, d.device(), a.dtype())?;
    let out_code = dtype_code(op, d.device(), out_dtype)?;
    if tier == Tier::Mma {
        let ok = matches!(a.dtype(), DType::F16 | DType::BF16)
            && spec.format == MemoryFormat::ChannelsLast
            && spec.c_in.is_multiple_of(8)
            && spec.c_out.is_multiple_of(8);
        if !ok {
            return Err(Error::invalid(
                op,
                format!(
                    "the Tensor-Core kernels take f16/bf16 channels-last operands with channels \
                     divisible by 8, got {} {:?} with {} -> {} channels",
                    a.dtype(),
                    spec.format,
                    spec.c_in,
                    spec.c_out
                ),
            ));
        }
    }
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
    if !(1..=64).contains(&splits) {
        return Err(Error::invalid(
            op,
            format!("split-K factor {splits} (1..=64)"),
        ));
    }
    let ws_ptr = match ws {
        Some(w) if splits > 1 => {
            expect_len(
                op,
                "the split-K workspace",
                w.len(),
                workspace_len(mode, spec, splits),
            )?;
            expect_dtype(op, "the split-K workspace", w.dtype(), DType::F32)?;
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
    let (tile, _, threads) = tier.geometry();
    let (bx, by) = (gm.div_ceil(tile) as u64, gn.div_ceil(tile) as u64);
    if bx > u32::MAX as u64 || by > 65535 {
        return Err(Error::invalid(
            op,
            format!("a {gm}x{gn} implicit GEMM exceeds one launch"),
        ));
    }
    let mode_name = match mode {
        ConvMode::Fprop => "fprop",
        ConvMode::Dgrad => "dgrad",
        ConvMode::Wgrad => "wgrad",
    };
    let (name, reduce, smem) = match tier {
        Tier::Simt => (
            format!("conv_{mode_name}_{suffix}"),
            format!("conv_reduce_{mode_name}"),
            0,
        ),
        Tier::Mma => (
            format!("conv_mma_{mode_name}_{suffix}"),
            format!("conv_mma_reduce_{mode_name}"),
            MMA_SMEM,
        ),
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
        channels_last: i32::from(spec.format == MemoryFormat::ChannelsLast),
        out_dtype: out_code,
        pad: 0,
    };
    let cfg = LaunchConfig {
        grid: [bx as u32, by as u32, splits as u32],
        block: [threads, 1, 1],
        smem,
    };
    let mut kargs = kernel_args![args];
    // SAFETY: conv_{,mma_}{fprop,dgrad,wgrad}_T(ConvArgs) by value, with the block size and
    // dynamic shared memory of its tier; the three spans were checked to hold exactly the
    // elements the mode's indices reach (x, w, y sizes of `spec` in its format; the output
    // in its dtype code), the Tensor-Core tier's channel counts to be multiples of 8 (16-byte
    // chunks), and a split launch's workspace its splits·M·N f32 partials.
    unsafe { launch(d, &name, cfg, &mut kargs) }?;
    if splits > 1 {
        let cfg = LaunchConfig::linear(gm * gn, THREADS, MAX_BLOCKS);
        // SAFETY: conv_{,mma_}reduce_{mode}(ConvArgs): reads the splits·M·N partials, writes
        // the M·N outputs (both checked above).
        unsafe { launch(d, &reduce, cfg, &mut kargs) }?;
    }
    Ok(())
}

/// Geometry of a channel (un)packing: `n` images of `s` pixels with `c` channels, padded to
/// `cp` in the Tensor-Core tier's NHWC buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packing {
    /// Images (or filters).
    pub n: usize,
    /// Real channels.
    pub c: usize,
    /// Pixels per image (H·W, or R·S of a filter).
    pub s: usize,
    /// Channels of the packed buffer (≥ c).
    pub cp: usize,
    /// The unpacked side is channels-last ([n][s][c]) rather than [n][c][s].
    pub channels_last: bool,
}

/// `pack`: `src` [n][c][s] (or [n][s][c]) into `dst` [n][s][cp] with zero channels past c;
/// `unpack` the inverse. One dtype on both sides.
pub fn repack(pack: bool, g: Packing, src: &Span<'_>, dst: &Span<'_>) -> Result<()> {
    let op = if pack { "conv_pack" } else { "conv_unpack" };
    if g.cp < g.c {
        return Err(Error::invalid(
            op,
            format!("{} packed channels for {}", g.cp, g.c),
        ));
    }
    let small = g.n * g.c * g.s;
    let big = g.n * g.cp * g.s;
    let (src_len, dst_len) = if pack { (small, big) } else { (big, small) };
    expect_len(op, "the source", src.len(), src_len)?;
    expect_len(op, "the destination", dst.len(), dst_len)?;
    expect_dtype(op, "the destination", dst.dtype(), src.dtype())?;
    same_device(op, src.device(), [dst.device()])?;
    if dst_len == 0 {
        return Ok(());
    }
    let d = src.driver();
    let name = format!("{op}_{}", float_suffix(op, d.device(), src.dtype())?);
    let (mut sp, mut dp) = (src.ptr(), dst.ptr());
    let (mut n, mut c, mut s, mut cp) = (g.n as i64, g.c as i64, g.s as i64, g.cp as i64);
    let mut cl = i32::from(g.channels_last);
    let cfg = LaunchConfig::linear(dst_len, THREADS, MAX_BLOCKS);
    let mut kargs = kernel_args![sp, dp, n, c, s, cp, cl];
    // SAFETY: conv_{pack,unpack}_T(const T*, T*, i64 n, i64 c, i64 s, i64 cp, int): the source
    // and destination spans were checked to hold the n·c·s and n·cp·s elements of T the two
    // sides index, on one device.
    unsafe { launch(d, &name, cfg, &mut kargs) }
}
