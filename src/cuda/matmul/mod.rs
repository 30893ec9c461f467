//! The CUDA matmul family: `MatmulOps` for [`CudaBackend`].

pub mod gemm;
mod launch;

use super::backend::CudaBackend;
use super::launch::dtype_code;
use super::storage::CudaBuffer;
use hemi_engine::backend::*;
use hemi_engine::{BackendStorage, DType, Error, Layout, Result, StorageRef};
use std::sync::Arc;

impl MatmulOps for CudaBackend {
    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef> {
        check_matmul(lhs, lhs_layout, rhs, rhs_layout, spec)?;
        let (a, b) = (self.get("matmul", lhs)?, self.get("matmul", rhs)?);
        if a.dtype() != b.dtype() {
            let msg = format!("lhs is {} but rhs is {}", a.dtype(), b.dtype());
            return Err(Error::DTypeMismatch { op: "matmul", msg });
        }
        let mut kernel = match a.dtype() {
            DType::F32 => launch::GemmKernel::SimtF32,
            DType::F16 | DType::BF16 => launch::GemmKernel::MmaPipeline,
            other => {
                return Err(Error::Unsupported {
                    op: "matmul",
                    device: self.device(),
                    msg: format!("{other} tensors run on the CPU backend only"),
                })
            }
        };
        let MatmulSpec { batch, m, n, k } = *spec;
        let out = self.buffer(a.dtype(), batch * m * n)?;
        if batch * m * n == 0 {
            return Ok(Arc::new(out));
        }
        let operand = |buf: &CudaBuffer, l: &Layout| launch::Operand {
            ptr: buf.ptr() + (l.offset() * buf.dtype().size_in_bytes()) as u64,
            batch_stride: l.strides()[0] as i64,
            row_stride: l.strides()[1] as i64,
            col_stride: l.strides()[2] as i64,
        };
        let args = launch::GemmArgs {
            m: m as i64,
            n: n as i64,
            k: k as i64,
            alpha: 1.0,
            beta: 0.0,
            a: operand(a, lhs_layout),
            b: operand(b, rhs_layout),
            c_in: launch::Operand::default(),
            bias: 0,
            out: launch::Operand {
                ptr: out.ptr(),
                batch_stride: (m * n) as i64,
                row_stride: n as i64,
                col_stride: 1,
            },
            out_dtype: dtype_code("matmul", self.device(), a.dtype())?,
            pad: 0,
        };
        if kernel == launch::GemmKernel::MmaPipeline && launch::mma_layout(&args, 2).is_none() {
            kernel = launch::GemmKernel::Wmma;
        }
        launch::gemm(self.driver(), kernel, a.dtype(), batch, args)?;
        Ok(Arc::new(out))
    }
}
