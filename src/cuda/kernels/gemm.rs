//! Wrappers of `kernels-cu/gemm.cu`: one `GemmArgs` by value per launch.

use super::launch;
use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
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

/// `struct GemmArgs` of gemm.cu.
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

/// Which GEMM kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    /// (iii) tiled fp32 SIMT (F32 inputs).
    SimtF32,
    /// (i) `nvcuda::wmma` Tensor-Core kernel (F16 or BF16 inputs).
    Wmma,
}

/// Output dtype code of the GEMM epilogue.
pub fn out_code(dt: DType) -> Result<i32> {
    match dt {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::BF16 => Ok(2),
        other => Err(Error::DTypeMismatch {
            op: "matmul",
            msg: format!("GEMM output must be float32, float16 or bfloat16, got {other}"),
        }),
    }
}

/// Launches `kernel` over `batch` products with input dtype `input`.
pub fn gemm(
    d: &dyn Driver,
    kernel: GemmKernel,
    input: DType,
    batch: usize,
    args: GemmArgs,
) -> Result<()> {
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
