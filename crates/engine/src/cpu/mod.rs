//! The CPU backend: the reference implementation of every op. Simple loops over f32/f64
//! compute vectors, GEMM through the `gemm` crate, parallel with rayon.

mod amp;
mod buffer;
pub(crate) mod compute;
mod conv;
mod elementwise;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod reduce;
mod sum;

use crate::backend::{
    check_bounds, AdamTensors, Backend, BatchNormBackward, BatchNormForward, BinaryOp, Conv2dSpec,
    CrossEntropySpec, FusedAdamSpec, MatmulSpec, Pool2dSpec, ReduceOp, ScaleState, ScaleUpdateSpec,
    UnaryOp,
};
use crate::{CpuStorage, DType, Device, Layout, Result, StorageRef};
use compute::host;

pub use buffer::CpuBuffer;
use std::sync::Arc;

/// The host backend (see the module docs).
#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A new CPU backend (stateless).
    pub fn new() -> Self {
        CpuBackend
    }
}

/// Wraps host data as a counted CPU storage.
pub(crate) fn wrap(s: CpuStorage) -> StorageRef {
    Arc::new(CpuBuffer::new(s))
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload(&self, data: &CpuStorage) -> Result<StorageRef> {
        Ok(wrap(data.clone()))
    }

    fn to_host(&self, s: &StorageRef, layout: &Layout) -> Result<CpuStorage> {
        check_bounds("to_host", s, layout)?;
        Ok(compute::gather_same(host("to_host", s)?, layout))
    }

    fn full(&self, dtype: DType, n: usize, value: f64) -> Result<StorageRef> {
        Ok(wrap(CpuStorage::full(dtype, n, value)))
    }

    fn copy_strided(&self, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        check_bounds("contiguous", s, layout)?;
        Ok(wrap(compute::gather_same(host("contiguous", s)?, layout)))
    }

    fn cast(&self, s: &StorageRef, layout: &Layout, dtype: DType) -> Result<StorageRef> {
        check_bounds("to_dtype", s, layout)?;
        Ok(wrap(elementwise::cast(host("to_dtype", s)?, layout, dtype)))
    }

    fn cat(&self, inputs: &[(StorageRef, Layout)], dim: usize) -> Result<StorageRef> {
        let parts = inputs
            .iter()
            .map(|(s, l)| {
                check_bounds("cat", s, l)?;
                Ok((compute::gather_same(host("cat", s)?, l), l.dims().to_vec()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(wrap(elementwise::cat(&parts, dim)?))
    }

    fn unary(&self, op: UnaryOp, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        check_bounds("unary", s, layout)?;
        Ok(wrap(elementwise::unary(op, host("unary", s)?, layout)?))
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
    ) -> Result<StorageRef> {
        check_bounds("binary", lhs, lhs_layout)?;
        check_bounds("binary", rhs, rhs_layout)?;
        let (a, b) = (host("binary", lhs)?, host("binary", rhs)?);
        Ok(wrap(elementwise::binary(op, a, lhs_layout, b, rhs_layout)?))
    }

    fn reduce(
        &self,
        op: ReduceOp,
        s: &StorageRef,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<StorageRef> {
        check_bounds("reduce", s, layout)?;
        Ok(wrap(reduce::reduce(op, host("reduce", s)?, layout, dims)?))
    }

    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef> {
        check_bounds("matmul", lhs, lhs_layout)?;
        check_bounds("matmul", rhs, rhs_layout)?;
        Ok(wrap(matmul::matmul(
            lhs, lhs_layout, rhs, rhs_layout, spec,
        )?))
    }

    fn conv2d(&self, x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<StorageRef> {
        Ok(wrap(conv::conv2d(x, w, spec)?))
    }

    fn conv2d_backward_input(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(conv::conv2d_backward_input(dy, w, spec)?))
    }

    fn conv2d_backward_weight(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(conv::conv2d_backward_weight(x, dy, spec)?))
    }

    fn batch_norm_train(
        &self,
        x: &StorageRef,
        weight: &StorageRef,
        bias: &StorageRef,
        dims: (usize, usize, usize),
        eps: f64,
    ) -> Result<BatchNormForward> {
        norm::batch_norm_train(x, weight, bias, dims, eps)
    }

    fn batch_norm_backward(
        &self,
        dy: &StorageRef,
        x: &StorageRef,
        weight: &StorageRef,
        mean: &StorageRef,
        invstd: &StorageRef,
        dims: (usize, usize, usize),
    ) -> Result<BatchNormBackward> {
        norm::batch_norm_backward(dy, x, weight, mean, invstd, dims)
    }

    fn max_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<(StorageRef, StorageRef)> {
        let (y, i) = pool::max_pool2d(x, spec)?;
        Ok((wrap(y), wrap(i)))
    }

    fn max_pool2d_backward(
        &self,
        dy: &StorageRef,
        indices: &StorageRef,
        spec: &Pool2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(pool::max_pool2d_backward(dy, indices, spec)?))
    }

    fn avg_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        Ok(wrap(pool::avg_pool2d(x, spec)?))
    }

    fn avg_pool2d_backward(&self, dy: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        Ok(wrap(pool::avg_pool2d_backward(dy, spec)?))
    }

    fn adaptive_avg_pool2d(
        &self,
        x: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
    ) -> Result<StorageRef> {
        Ok(wrap(pool::adaptive_avg_pool2d(x, dims, out)?))
    }

    fn adaptive_avg_pool2d_backward(
        &self,
        dy: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
    ) -> Result<StorageRef> {
        Ok(wrap(pool::adaptive_avg_pool2d_backward(dy, dims, out)?))
    }

    fn softmax(
        &self,
        x: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        Ok(wrap(loss::softmax(x, dims, log)?))
    }

    fn softmax_backward(
        &self,
        y: &StorageRef,
        dy: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        Ok(wrap(loss::softmax_backward(y, dy, dims, log)?))
    }

    fn cross_entropy(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        Ok(wrap(loss::cross_entropy(logits, targets, n_c, spec)?))
    }

    fn cross_entropy_backward(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        dloss: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        Ok(wrap(loss::cross_entropy_backward(
            logits, targets, dloss, n_c, spec,
        )?))
    }

    fn non_finite_check_and_unscale(
        &self,
        grads: &[StorageRef],
        found_inf: &StorageRef,
        inv_scale: &StorageRef,
    ) -> Result<(Vec<StorageRef>, StorageRef)> {
        amp::non_finite_check_and_unscale(grads, found_inf, inv_scale)
    }

    fn update_scale(
        &self,
        state: &ScaleState,
        found_inf: &StorageRef,
        spec: &ScaleUpdateSpec,
    ) -> Result<ScaleState> {
        amp::update_scale(state, found_inf, spec)
    }

    fn fused_adam(
        &self,
        tensors: &[AdamTensors],
        spec: &FusedAdamSpec,
        grad_scale: Option<&StorageRef>,
        found_inf: Option<&StorageRef>,
    ) -> Result<Vec<AdamTensors>> {
        optim::fused_adam(tensors, spec, grad_scale, found_inf)
    }
}
