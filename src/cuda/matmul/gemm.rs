//! The full GEMM entry point of the CUDA backend: `out = alpha · A·B + beta · C + bias`,
//! with the kernel, the output dtype and the epilogue chosen by the caller. `Tensor::matmul`
//! on a CUDA device uses it with alpha 1, beta 0 and no bias.
//!
//! Error bound of every kernel (DESIGN.md §4), element-wise against an f64 reference from the
//! same rounded inputs: `|C − C64| ≤ K·2⁻²³·(|A||B|) + u_out·|C64|` (plus the epilogue's
//! f32 rounding of `alpha`, `beta·C` and `bias`).

pub use super::launch::GemmKernel;

use super::launch::{gemm as launch_gemm, GemmArgs, Operand};
use crate::cuda::launch::dtype_code;
use crate::cuda::storage::cuda_buffer;
use hemi_engine::{BackendStorage, DType, Error, Layout, Result, Shape, Tensor};

/// Options of [`gemm`].
#[derive(Debug, Clone)]
pub struct GemmOptions {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `c` (ignored without `c`).
    pub beta: f32,
    /// Added matrix `[batch, m, n]` (or `[m, n]`) in the output dtype.
    pub c: Option<Tensor>,
    /// Per-column bias `[n]`, F32.
    pub bias: Option<Tensor>,
    /// F32, F16 or BF16.
    pub out_dtype: DType,
    /// Which kernel runs (it fixes the input dtype: F32 for SIMT, F16/BF16 for wmma).
    pub kernel: GemmKernel,
}

fn rank3(t: &Tensor) -> Result<Layout> {
    let l = t.layout();
    match l.dims().len() {
        2 => Ok(Layout::new(
            Shape::new([1, l.dims()[0], l.dims()[1]]),
            vec![0, l.strides()[0], l.strides()[1]],
            l.offset(),
        )),
        3 => Ok(l.clone()),
        _ => Err(Error::ShapeMismatch {
            op: "gemm",
            msg: format!(
                "operands must be [m, k] or [batch, m, k], got {:?}",
                t.shape()
            ),
        }),
    }
}

fn operand(t: &Tensor, l: &Layout) -> Result<Operand> {
    let s = t.storage();
    let buf = cuda_buffer("gemm", &s, t.device())?;
    let bs = if l.dims()[0] == 1 { 0 } else { l.strides()[0] };
    Ok(Operand {
        ptr: buf.ptr() + (l.offset() * buf.dtype().size_in_bytes()) as u64,
        batch_stride: bs as i64,
        row_stride: l.strides()[1] as i64,
        col_stride: l.strides()[2] as i64,
    })
}

/// `alpha · a·b + beta · c + bias` on the CUDA device of `a` (not recorded by autograd).
/// `a` is `[m, k]` or `[batch, m, k]`, `b` is `[k, n]` or `[batch, k, n]`, any strides;
/// returns `[batch, m, n]` in `out_dtype`.
pub fn gemm(a: &Tensor, b: &Tensor, o: &GemmOptions) -> Result<Tensor> {
    let (la, lb) = (rank3(a)?, rank3(b)?);
    let (ba, m, k) = (la.dims()[0], la.dims()[1], la.dims()[2]);
    let (bb, k2, n) = (lb.dims()[0], lb.dims()[1], lb.dims()[2]);
    if k != k2 || (ba != bb && ba != 1 && bb != 1) || a.device() != b.device() {
        return Err(Error::ShapeMismatch {
            op: "gemm",
            msg: format!(
                "{:?} on {} and {:?} on {} do not multiply",
                a.shape(),
                a.device(),
                b.shape(),
                b.device()
            ),
        });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op: "gemm",
            msg: format!("{} and {}", a.dtype(), b.dtype()),
        });
    }
    let batch = ba.max(bb);
    let dev = a.device();
    let out = Tensor::zeros([batch, m, n], o.out_dtype, dev)?;
    let out_op = Operand {
        ptr: cuda_buffer("gemm", &out.storage(), dev)?.ptr(),
        batch_stride: (m * n) as i64,
        row_stride: n as i64,
        col_stride: 1,
    };
    let c_in = match &o.c {
        Some(c) => {
            let lc = rank3(c)?;
            if c.dtype() != o.out_dtype || lc.dims()[1..] != [m, n] || c.device() != dev {
                return Err(Error::ShapeMismatch {
                    op: "gemm",
                    msg: format!(
                        "c {:?} ({}) for an output [{batch}, {m}, {n}] ({})",
                        c.shape(),
                        c.dtype(),
                        o.out_dtype
                    ),
                });
            }
            operand(c, &lc)?
        }
        None => Operand::default(),
    };
    let bias = match &o.bias {
        Some(bias) => {
            if bias.dims() != [n] || bias.dtype() != DType::F32 || bias.device() != dev {
                return Err(Error::ShapeMismatch {
                    op: "gemm",
                    msg: format!("bias {:?} ({}) for {n} columns", bias.shape(), bias.dtype()),
                });
            }
            let bias = bias.contiguous()?;
            cuda_buffer("gemm", &bias.storage(), dev)?.ptr()
        }
        None => 0,
    };
    let args = GemmArgs {
        m: m as i64,
        n: n as i64,
        k: k as i64,
        alpha: o.alpha,
        beta: if o.c.is_some() { o.beta } else { 0.0 },
        a: operand(a, &la)?,
        b: operand(b, &lb)?,
        c_in,
        bias,
        out: out_op,
        out_dtype: dtype_code("gemm", dev, o.out_dtype)?,
        pad: 0,
    };
    if batch * m * n > 0 {
        let s = a.storage();
        let driver = cuda_buffer("gemm", &s, dev)?.driver().clone();
        launch_gemm(driver.as_ref(), o.kernel, a.dtype(), batch, args)?;
    }
    Ok(out)
}
