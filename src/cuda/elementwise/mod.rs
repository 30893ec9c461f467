//! The CUDA elementwise family: `ElementwiseOps` for [`CudaBackend`].

mod launch;

use super::backend::CudaBackend;
use super::memory::launch::copy_view;
use hemi_engine::backend::*;
use hemi_engine::{BackendStorage, Error, Layout, Result, StorageRef};
use std::sync::Arc;

impl ElementwiseOps for CudaBackend {
    fn cat(&self, inputs: &[(StorageRef, Layout)], dim: usize) -> Result<StorageRef> {
        check_cat(inputs, dim)?;
        let Some((first, fl)) = inputs.first() else {
            return Err(Error::InvalidArgument {
                op: "cat",
                msg: "needs at least one tensor".into(),
            });
        };
        let dtype = self.get("cat", first)?.dtype();
        let mut dims = fl.dims().to_vec();
        dims[dim] = inputs.iter().map(|(_, l)| l.dims()[dim]).sum();
        let out_layout = Layout::contiguous(dims);
        let buf = self.buffer(dtype, out_layout.elem_count())?;
        let stride = out_layout.strides()[dim];
        let mut start = 0;
        for (s, l) in inputs {
            check_bounds("cat", s, l)?;
            let src = self.get("cat", s)?;
            let slice = Layout::new(
                l.shape().clone(),
                out_layout.strides().to_vec(),
                start * stride,
            );
            if l.elem_count() > 0 {
                copy_view(self.driver(), dtype, src.ptr(), l, buf.ptr(), &slice)?;
            }
            start += l.dims()[dim];
        }
        Ok(Arc::new(buf))
    }

    fn unary(&self, op: UnaryOp, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        check_bounds("unary", s, layout)?;
        let src = self.get("unary", s)?;
        let buf = self.buffer(src.dtype(), layout.elem_count())?;
        if layout.elem_count() > 0 {
            launch::unary(self.driver(), op, src.dtype(), src.ptr(), layout, buf.ptr())?;
        }
        Ok(Arc::new(buf))
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
        let (a, b) = (self.get("binary", lhs)?, self.get("binary", rhs)?);
        if a.dtype() != b.dtype() {
            return Err(Error::DTypeMismatch {
                op: "binary",
                msg: format!("{op:?} of {} and {}", a.dtype(), b.dtype()),
            });
        }
        let buf = self.buffer(a.dtype(), lhs_layout.elem_count())?;
        if lhs_layout.elem_count() > 0 {
            let d = self.driver();
            launch::binary(
                d,
                op,
                a.dtype(),
                a.ptr(),
                lhs_layout,
                b.ptr(),
                rhs_layout,
                buf.ptr(),
            )?;
        }
        Ok(Arc::new(buf))
    }

    fn accumulate(&self, dst: &StorageRef, src: &StorageRef) -> Result<()> {
        const OP: &str = "accumulate";
        let (d, s) = (self.get(OP, dst)?, self.get(OP, src)?);
        if d.len() != s.len() {
            let msg = format!("{} elements into {}", s.len(), d.len());
            return Err(Error::ShapeMismatch { op: OP, msg });
        }
        let l = Layout::contiguous([d.len()]);
        // A source of another dtype is rounded into dst's first (one temporary).
        let cast;
        let s = if s.dtype() == d.dtype() {
            s
        } else {
            cast = self.cast(src, &l, d.dtype())?;
            self.get(OP, &cast)?
        };
        if d.len() == 0 {
            return Ok(());
        }
        // The binary kernel reads element i of both inputs before writing element i, so the
        // output may be the first input.
        launch::binary(
            self.driver(),
            BinaryOp::Add,
            d.dtype(),
            d.ptr(),
            &l,
            s.ptr(),
            &l,
            d.ptr(),
        )
    }
}
