//! Typed launches of `kernels-cu/matmul.cu`: one `GemmArgs` by value per launch.

use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
use crate::cuda::launch::launch;
use crate::kernel_args;
use hemi_engine::{DType, Error, Result};

/// A batched operand: address and element strides (batch, row, col) — `struct Operand`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Operand {
    /// Address of element (0, 0, 0).
    pub ptr: DevicePtr,
    /// Elements between batches (0 broadcasts one matrix over the batch).
    pub batch_stride: i64,
    /// Elements between rows.
    pub row_stride: i64,
    /// Elements between columns.
    pub col_stride: i64,
}

/// `struct GemmArgs` of matmul.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct GemmArgs {
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub alpha: f32,
    pub beta: f32,
    pub a: Operand,
    pub b: Operand,
    pub c_in: Operand,
    pub bias: DevicePtr,
    pub out: Operand,
    pub out_dtype: i32,
    pub pad: i32,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Operand>() == 32 && offset_of!(Operand, col_stride) == 24);
    assert!(size_of::<GemmArgs>() == 176 && offset_of!(GemmArgs, alpha) == 24);
    assert!(offset_of!(GemmArgs, a) == 32 && offset_of!(GemmArgs, bias) == 128);
    assert!(offset_of!(GemmArgs, out) == 136 && offset_of!(GemmArgs, out_dtype) == 168);
};

/// Which GEMM kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    /// (iii) tiled fp32 SIMT (F32 inputs).
    SimtF32,
    /// (i) `nvcuda::wmma` Tensor-Core kernel (F16 or BF16 inputs).
    Wmma,
    /// (ii) `mma.sync.m16n8k16` + `ldmatrix` + 3-stage `cp.async` pipeline (F16 or BF16
    /// inputs; operand layouts per [`mma_layout`]).
    MmaPipeline,
}

/// Whether the operands suit kernel (ii): A k-contiguous (or m-contiguous with M % 8 == 0),
/// B k-contiguous (or n-contiguous with N % 8 == 0), 16-byte aligned rows and bases, K a
/// multiple of 8, 2-byte elements. Returns the kernel's `(a_kcontig, b_kcontig)` flags.
pub fn mma_layout(args: &GemmArgs, elem_bytes: u64) -> Option<(i32, i32)> {
    let aligned = |o: &Operand| o.ptr % 16 == 0 && o.batch_stride % 8 == 0;
    let (a, b) = (&args.a, &args.b);
    if elem_bytes != 2 || args.k % 8 != 0 || !aligned(a) || !aligned(b) {
        return None;
    }
    let a_flag = if a.col_stride == 1 && a.row_stride % 8 == 0 {
        1
    } else if a.row_stride == 1 && a.col_stride % 8 == 0 && args.m % 8 == 0 {
        0
    } else {
        return None;
    };
    let b_flag = if b.row_stride == 1 && b.col_stride % 8 == 0 {
        1
    } else if b.col_stride == 1 && b.row_stride % 8 == 0 && args.n % 8 == 0 {
        0
    } else {
        return None;
    };
    Some((a_flag, b_flag))
}

/// Launches `kernel` over `batch` products with input dtype `input`.
pub fn gemm(
    d: &dyn Driver,
    kernel: GemmKernel,
    input: DType,
    batch: usize,
    args: GemmArgs,
) -> Result<()> {
    if kernel == GemmKernel::MmaPipeline {
        return gemm_mma(d, input, batch, args);
    }
    let (name, tile, threads) = match (kernel, input) {
        (GemmKernel::SimtF32, DType::F32) => ("gemm_simt_f32", 64, 256),
        (GemmKernel::Wmma, DType::F16) => ("gemm_wmma_f16", 64, 128),
        (GemmKernel::Wmma, DType::BF16) => ("gemm_wmma_bf16", 64, 128),
        (k, dt) => {
            return Err(Error::DTypeMismatch {
                op: "matmul",
                msg: format!("{k:?} kernel does not take {dt} inputs"),
            })
        }
    };
    if batch > 65535 {
        return Err(Error::InvalidArgument {
            op: "matmul",
            msg: format!("batch {batch} exceeds one launch's 65535"),
        });
    }
    let blocks = |n: i64| (n as u64).div_ceil(tile).max(1) as u32;
    let cfg = LaunchConfig {
        grid: [blocks(args.n), blocks(args.m), batch.max(1) as u32],
        block: [threads, 1, 1],
        smem: 0,
    };
    let mut g = args;
    let mut a = kernel_args![g];
    // SAFETY: every GEMM kernel takes one `GemmArgs` by value; the caller bounds-checked the
    // operands for m, n, k and batch.
    unsafe { launch(d, name, cfg, &mut a) }
}

/// Kernel (ii): grouped 1-D grid over 128x128 tiles, 128 threads, 48 KiB of dynamic smem.
fn gemm_mma(d: &dyn Driver, input: DType, batch: usize, args: GemmArgs) -> Result<()> {
    let name = match input {
        DType::F16 => "gemm_mma_f16",
        DType::BF16 => "gemm_mma_bf16",
        other => {
            return Err(Error::DTypeMismatch {
                op: "matmul",
                msg: format!("the mma.sync kernel takes float16 or bfloat16, not {other}"),
            })
        }
    };
    let Some((a_kcontig, b_kcontig)) = mma_layout(&args, 2) else {
        return Err(Error::InvalidArgument {
            op: "matmul",
            msg: "operand layout does not suit the mma.sync kernel (A k- or m-contiguous, B k- or n-contiguous, 16-byte aligned, K % 8 == 0)".into(),
        });
    };
    if batch > 65535 {
        return Err(Error::InvalidArgument {
            op: "matmul",
            msg: format!("batch {batch} exceeds one launch's 65535"),
        });
    }
    let tiles = |n: i64| (n as u64).div_ceil(128).max(1);
    let blocks = tiles(args.m) * tiles(args.n);
    if blocks > u32::MAX as u64 {
        return Err(Error::InvalidArgument {
            op: "matmul",
            msg: format!("{blocks} tiles exceed one launch"),
        });
    }
    let cfg = LaunchConfig {
        grid: [blocks as u32, 1, batch.max(1) as u32],
        block: [128, 1, 1],
        smem: 3 * 2 * 128 * 32 * 2,
    };
    let (mut g, mut fa, mut fb) = (args, a_kcontig, b_kcontig);
    let mut a = kernel_args![g, fa, fb];
    // SAFETY: gemm_mma_T(GemmArgs, int, int); `mma_layout` checked the layout preconditions and
    // the caller bounds-checked the operands.
    unsafe { launch(d, name, cfg, &mut a) }
}
