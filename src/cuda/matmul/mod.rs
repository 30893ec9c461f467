//! The CUDA matmul family (`kernels-cu/matmul.cu`): `MatmulOps` for [`CudaBackend`], over the
//! three GEMM tiers — (iii) tiled fp32 SIMT, (i) `nvcuda::wmma`, (ii) `mma.sync` + `ldmatrix` +
//! `cp.async` pipeline — with the alpha/beta/bias epilogue and f32/f16/bf16 output.
//!
//! Error bound of every kernel (DESIGN.md §4), element-wise against an f64 reference from the
//! same rounded inputs: `|C − C64| ≤ K·2⁻²³·(|A||B|) + u_out·|C64|` (plus the epilogue's f32
//! rounding of `alpha`, `beta·C` and `bias`).

mod launch;

use super::backend::CudaBackend;
use super::operand::{Span, View};
use hemi_engine::backend::{
    check_gemm, check_matmul, BackendDevice, GemmAlgo, GemmEpilogue, MatmulOps, MatmulSpec,
};
use hemi_engine::{BackendStorage, DType, Error, Layout, Result, StorageRef};
use launch::{GemmArgs, GemmKernel, GemmOperands, GemmScalars};
use std::sync::Arc;

impl CudaBackend {
    /// The kernel for `algo` on inputs of `dt` (`Auto`: SIMT for F32, the `mma.sync` pipeline
    /// for F16/BF16 when the layout suits it, else wmma).
    fn gemm_kernel(&self, algo: GemmAlgo, dt: DType, args: &GemmArgs) -> Result<GemmKernel> {
        let unsupported = |msg: String| Error::Unsupported {
            op: "gemm",
            device: self.device(),
            msg,
        };
        Ok(match (algo, dt) {
            (GemmAlgo::Auto | GemmAlgo::SimtF32, DType::F32) => GemmKernel::SimtF32,
            (GemmAlgo::Auto, DType::F16 | DType::BF16) => match launch::mma_layout(args, 2) {
                Some(_) => GemmKernel::MmaPipeline,
                None => GemmKernel::Wmma,
            },
            (GemmAlgo::Wmma, DType::F16 | DType::BF16) => GemmKernel::Wmma,
            (GemmAlgo::MmaPipeline, DType::F16 | DType::BF16) => GemmKernel::MmaPipeline,
            (algo, dt) => return Err(unsupported(format!("{algo:?} on {dt} inputs"))),
        })
    }
}

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
        let ep = GemmEpilogue::plain(lhs.dtype());
        self.gemm(lhs, lhs_layout, rhs, rhs_layout, spec, &ep)
    }

    fn gemm(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
        ep: &GemmEpilogue,
    ) -> Result<StorageRef> {
        const OP: &str = "gemm";
        check_gemm(lhs, lhs_layout, rhs, rhs_layout, spec, ep)?;
        let (a, b) = (self.get(OP, lhs)?, self.get(OP, rhs)?);
        if a.dtype() != b.dtype() {
            let msg = format!("lhs is {} but rhs is {}", a.dtype(), b.dtype());
            return Err(Error::DTypeMismatch { op: OP, msg });
        }
        let MatmulSpec { batch, m, n, .. } = *spec;
        let out = self.buffer(ep.out_dtype, batch * m * n)?;
        let ops = GemmOperands {
            a: View::new(OP, a, lhs_layout)?,
            b: View::new(OP, b, rhs_layout)?,
            c: match &ep.c {
                Some((c, cl)) => Some(View::new(OP, self.get(OP, c)?, cl)?),
                None => None,
            },
            bias: match &ep.bias {
                Some(b) => Some(Span::all(self.get(OP, b)?)),
                None => None,
            },
            out: Span::all(&out),
        };
        let scalars = GemmScalars {
            alpha: ep.alpha,
            beta: ep.beta,
        };
        let kernel = self.gemm_kernel(ep.algo, a.dtype(), &ops.args(spec, scalars)?)?;
        launch::gemm(kernel, &ops, spec, scalars)?;
        Ok(Arc::new(out))
    }
}
