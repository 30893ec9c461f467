//! Typed launches of `kernels-cu/matmul.cu`: one `GemmArgs` by value per launch, built here
//! from checked operands ([`GemmOperands`]) whose shapes, dtypes and devices are checked
//! against the problem size first.

use crate::cuda::driver::{DevicePtr, LaunchConfig};
use crate::cuda::launch::{dtype_code, launch};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span, View};
use crate::kernel_args;
use hemi_engine::backend::MatmulSpec;
use hemi_engine::{DType, Error, Result};

/// The operands of one batched GEMM `out = alpha·a·b + beta·c + bias`.
#[derive(Debug)]
pub struct GemmOperands<'a> {
    /// `[batch, m, k]` (stride 0 broadcasts over the batch).
    pub a: View<'a>,
    /// `[batch, k, n]`, the dtype of `a`.
    pub b: View<'a>,
    /// `[batch, m, n]` in the output dtype, read when `beta != 0`.
    pub c: Option<View<'a>>,
    /// F32 `[n]`.
    pub bias: Option<Span<'a>>,
    /// Contiguous `batch·m·n` of the output dtype (F32, F16 or BF16).
    pub out: Span<'a>,
}

/// Scalars of the epilogue.
#[derive(Debug, Clone, Copy)]
pub struct GemmScalars {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `c` (ignored without `c`).
    pub beta: f32,
}

impl GemmOperands<'_> {
    /// Checks every operand against `spec` and builds the kernel's argument record.
    pub fn args(&self, spec: &MatmulSpec, s: GemmScalars) -> Result<GemmArgs> {
        const OP: &str = "gemm";
        let MatmulSpec { batch, m, n, k } = *spec;
        let dims = |v: &View<'_>, what: &str, want: [usize; 3]| -> Result<()> {
            if v.layout().dims() != want {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{what} is {:?}, the product needs {want:?}",
                        v.layout().dims()
                    ),
                ));
            }
            Ok(())
        };
        dims(&self.a, "lhs", [batch, m, k])?;
        dims(&self.b, "rhs", [batch, k, n])?;
        expect_dtype(OP, "rhs", self.b.dtype(), self.a.dtype())?;
        let out_dtype = self.out.dtype();
        let total = batch
            .checked_mul(m)
            .and_then(|v| v.checked_mul(n))
            .ok_or_else(|| Error::shape(OP, format!("[{batch}, {m}, {n}] overflows")))?;
        expect_len(OP, "the output", self.out.len(), total)?;
        let device = self.a.device();
        let mut devices = vec![self.b.device(), self.out.device()];
        let c_in = match &self.c {
            Some(c) if s.beta != 0.0 => {
                dims(c, "c", [batch, m, n])?;
                expect_dtype(OP, "c", c.dtype(), out_dtype)?;
                devices.push(c.device());
                operand(c)
            }
            _ => Operand::default(),
        };
        let bias = match &self.bias {
            Some(b) => {
                expect_len(OP, "the bias", b.len(), n)?;
                expect_dtype(OP, "the bias", b.dtype(), DType::F32)?;
                devices.push(b.device());
                b.ptr()
            }
            None => 0,
        };
        same_device(OP, device, devices)?;
        Ok(GemmArgs {
            m: m as i64,
            n: n as i64,
            k: k as i64,
            alpha: s.alpha,
            beta: if c_in.ptr == 0 { 0.0 } else { s.beta },
            a: operand(&self.a),
            b: operand(&self.b),
            c_in,
            bias,
            out: Operand {
                ptr: self.out.ptr(),
                batch_stride: (m * n) as i64,
                row_stride: n as i64,
                col_stride: 1,
            },
            out_dtype: dtype_code(OP, device, out_dtype)?,
            pad: 0,
        })
    }
}

/// The operand record of a checked `[batch, rows, cols]` view.
fn operand(v: &View<'_>) -> Operand {
    let st = v.layout().strides();
    Operand {
        ptr: v.start(),
        batch_stride: st[0] as i64,
        row_stride: st[1] as i64,
        col_stride: st[2] as i64,
    }
}

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
    let aligned = |o: &Operand| o.ptr.is_multiple_of(16) && o.batch_stride % 8 == 0;
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

/// Launches `kernel` on the checked operands.
pub fn gemm(
    kernel: GemmKernel,
    ops: &GemmOperands<'_>,
    spec: &MatmulSpec,
    scalars: GemmScalars,
) -> Result<()> {
    let args = ops.args(spec, scalars)?;
    let (input, batch) = (ops.a.dtype(), spec.batch);
    if batch * spec.m * spec.n == 0 {
        return Ok(());
    }
    let d = ops.a.driver();
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
    // SAFETY: every GEMM kernel takes one `GemmArgs` by value; `GemmOperands::args` checked
    // every operand view (inside its buffer) against m, n, k and batch.
    unsafe { launch(d, name, cfg, &mut a) }
}

/// Kernel (ii): grouped 1-D grid over 128x128 tiles, 128 threads, 48 KiB of dynamic smem.
fn gemm_mma(
    d: &dyn crate::cuda::driver::Driver,
    input: DType,
    batch: usize,
    args: GemmArgs,
) -> Result<()> {
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
    // `GemmOperands::args` the operands.
    unsafe { launch(d, name, cfg, &mut a) }
}
