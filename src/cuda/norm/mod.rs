//! The CUDA norm family (`kernels-cu/norm.cu`): `NormOps` for [`CudaBackend`] — training-mode
//! batch norm forward (statistics by a block per channel with compensated two-pass sums) and
//! backward, optionally fused with the following ReLU. Channels-last storage (`[N·H·W, C, 1]`)
//! takes coalesced statistics kernels: 32 channels per block, rows split over blocks. Eval mode and the running-statistics update are tensor ops (`ops/norm.rs`).

mod launch;

use super::backend::CudaBackend;
use super::operand::Span;
use super::storage::CudaBuffer;
use hemi_engine::backend::{BatchNormBackward, BatchNormForward, NormOps};
use hemi_engine::{BackendStorage, DType, Result, StorageRef};
use std::sync::Arc;

impl CudaBackend {
    /// The f32 scratch of the coalesced channels-last statistics when `dims` is `[M, C, 1]`
    /// (channels-last storage), else `None` (the per-channel kernels).
    fn nhwc_scratch(&self, (m, c, s): (usize, usize, usize)) -> Result<Option<CudaBuffer>> {
        if s != 1 || m * c == 0 {
            return Ok(None);
        }
        Ok(Some(
            self.buffer(DType::F32, launch::nhwc_scratch_len(m, c))?,
        ))
    }
}

impl NormOps for CudaBackend {
    fn batch_norm_train(
        &self,
        x: &StorageRef,
        weight: &StorageRef,
        bias: &StorageRef,
        dims: (usize, usize, usize),
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormForward> {
        const OP: &str = "batch_norm";
        let (xb, wb, bb) = (self.get(OP, x)?, self.get(OP, weight)?, self.get(OP, bias)?);
        let c = dims.1;
        let sdt = wb.dtype();
        let (mean, var, invstd) = (
            self.buffer(sdt, c)?,
            self.buffer(sdt, c)?,
            self.buffer(sdt, c)?,
        );
        let affine = self.buffer(DType::F32, 2 * c)?;
        let y = self.buffer(xb.dtype(), xb.len())?;
        let scratch = self.nhwc_scratch(dims)?;
        launch::batch_norm_train(
            &Span::all(xb),
            &Span::all(wb),
            &Span::all(bb),
            (dims, eps, relu),
            [&Span::all(&mean), &Span::all(&var), &Span::all(&invstd)],
            (
                &Span::all(&affine),
                scratch.as_ref().map(Span::all).as_ref(),
            ),
            &Span::all(&y),
        )?;
        Ok(BatchNormForward {
            y: Arc::new(y),
            mean: Arc::new(mean),
            var: Arc::new(var),
            invstd: Arc::new(invstd),
        })
    }

    fn batch_norm_backward(
        &self,
        dy: &StorageRef,
        x: &StorageRef,
        weight: &StorageRef,
        mean: &StorageRef,
        invstd: &StorageRef,
        dims: (usize, usize, usize),
        relu_out: Option<&StorageRef>,
    ) -> Result<BatchNormBackward> {
        const OP: &str = "batch_norm_backward";
        let (gb, xb, wb) = (self.get(OP, dy)?, self.get(OP, x)?, self.get(OP, weight)?);
        let (mb, ib) = (self.get(OP, mean)?, self.get(OP, invstd)?);
        let c = dims.1;
        let (dweight, dbias) = (self.buffer(wb.dtype(), c)?, self.buffer(wb.dtype(), c)?);
        let sums = self.buffer(DType::F32, 2 * c)?;
        let dx = self.buffer(gb.dtype(), gb.len())?;
        let scratch = self.nhwc_scratch(dims)?;
        let z = relu_out.map(|z| self.get(OP, z)).transpose()?;
        launch::batch_norm_backward(
            &Span::all(gb),
            z.map(Span::all).as_ref(),
            &Span::all(xb),
            [&Span::all(wb), &Span::all(mb), &Span::all(ib)],
            dims,
            [&Span::all(&dweight), &Span::all(&dbias)],
            (&Span::all(&sums), scratch.as_ref().map(Span::all).as_ref()),
            &Span::all(&dx),
        )?;
        Ok(BatchNormBackward {
            dx: Arc::new(dx),
            dweight: Arc::new(dweight),
            dbias: Arc::new(dbias),
        })
    }
}
