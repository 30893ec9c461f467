//! The CUDA pool family (`kernels-cu/pool.cu`): `PoolOps` for [`CudaBackend`] — max pooling
//! with argmax, average and adaptive average pooling over NCHW or channels-last images, forward
//! and backward (gradients gather per input element: deterministic, no atomics).

mod launch;

use super::backend::CudaBackend;
use super::operand::Span;
use hemi_engine::backend::{Pool2dSpec, PoolOps};
use hemi_engine::{BackendStorage, DType, Error, MemoryFormat, Result, StorageRef};
use launch::Pool;
use std::sync::Arc;

impl CudaBackend {
    fn pool_forward(&self, pool: Pool, x: &StorageRef, out_len: usize) -> Result<StorageRef> {
        let xb = self.get("pool", x)?;
        let y = self.buffer(xb.dtype(), out_len)?;
        launch::forward(pool, &Span::all(xb), &Span::all(&y), None)?;
        Ok(Arc::new(y))
    }

    fn pool_backward(
        &self,
        pool: Pool,
        dy: &StorageRef,
        indices: Option<&StorageRef>,
        in_len: usize,
    ) -> Result<StorageRef> {
        let gb = self.get("pool_backward", dy)?;
        let dx = self.buffer(gb.dtype(), in_len)?;
        let idx = match indices {
            Some(i) => Some(Span::all(self.get("max_pool2d_backward", i)?)),
            None => None,
        };
        launch::backward(pool, &Span::all(gb), idx.as_ref(), &Span::all(&dx))?;
        Ok(Arc::new(dx))
    }
}

/// `n·c·a·b`, or an error naming `op` on overflow.
fn volume(op: &'static str, n: usize, c: usize, a: usize, b: usize) -> Result<usize> {
    [c, a, b]
        .iter()
        .try_fold(n, |v, &d| v.checked_mul(d))
        .ok_or_else(|| Error::shape(op, format!("[{n}, {c}, {a}, {b}] overflows")))
}

impl PoolOps for CudaBackend {
    fn max_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<(StorageRef, StorageRef)> {
        const OP: &str = "max_pool2d";
        spec.validate(OP)?;
        let len = volume(OP, spec.n, spec.c, spec.out_h(), spec.out_w())?;
        let xb = self.get(OP, x)?;
        let (y, idx) = (self.buffer(xb.dtype(), len)?, self.buffer(DType::I64, len)?);
        launch::forward(
            Pool::Max(*spec),
            &Span::all(xb),
            &Span::all(&y),
            Some(&Span::all(&idx)),
        )?;
        Ok((Arc::new(y), Arc::new(idx)))
    }

    fn max_pool2d_backward(
        &self,
        dy: &StorageRef,
        indices: &StorageRef,
        spec: &Pool2dSpec,
    ) -> Result<StorageRef> {
        let len = volume("max_pool2d_backward", spec.n, spec.c, spec.h, spec.w)?;
        self.pool_backward(Pool::Max(*spec), dy, Some(indices), len)
    }

    fn avg_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        spec.validate("avg_pool2d")?;
        let len = volume("avg_pool2d", spec.n, spec.c, spec.out_h(), spec.out_w())?;
        self.pool_forward(Pool::Avg(*spec), x, len)
    }

    fn avg_pool2d_backward(&self, dy: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        let len = volume("avg_pool2d_backward", spec.n, spec.c, spec.h, spec.w)?;
        self.pool_backward(Pool::Avg(*spec), dy, None, len)
    }

    fn adaptive_avg_pool2d(
        &self,
        x: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
        format: MemoryFormat,
    ) -> Result<StorageRef> {
        let len = volume("adaptive_avg_pool2d", dims[0], dims[1], out.0, out.1)?;
        self.pool_forward(Pool::Adaptive(dims, out, format), x, len)
    }

    fn adaptive_avg_pool2d_backward(
        &self,
        dy: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
        format: MemoryFormat,
    ) -> Result<StorageRef> {
        let [n, c, h, w] = dims;
        let len = volume("adaptive_avg_pool2d_backward", n, c, h, w)?;
        self.pool_backward(Pool::Adaptive(dims, out, format), dy, None, len)
    }
}
