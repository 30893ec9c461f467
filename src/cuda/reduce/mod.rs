//! The CUDA reduce family: `ReduceOps` for [`CudaBackend`].

mod launch;

use super::backend::CudaBackend;
use super::operand::{Span, View};
use hemi_engine::backend::*;
use hemi_engine::{BackendStorage, Layout, Result, StorageRef};
use launch as reduce;
use std::sync::Arc;

impl ReduceOps for CudaBackend {
    fn reduce(
        &self,
        op: ReduceOp,
        s: &StorageRef,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<StorageRef> {
        check_reduce(s, layout, dims)?;
        let src = self.get("reduce", s)?;
        let rank = layout.dims().len();
        let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(dims.iter()).copied().collect();
        let chunk: usize = dims.iter().map(|&d| layout.dims()[d]).product();
        let outer: usize = kept.iter().map(|&d| layout.dims()[d]).product();
        let x = View::new("reduce", src, layout)?.permute(&perm);
        let buf = self.buffer(src.dtype(), outer)?;
        reduce::reduce(op, &x, &Span::all(&buf), (outer, chunk))?;
        Ok(Arc::new(buf))
    }
}
