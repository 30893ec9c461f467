//! The CUDA elementwise family: `ElementwiseOps` for [`CudaBackend`].

mod launch;

use super::backend::CudaBackend;
use super::memory::launch::copy_view;
use super::operand::{Span, View};
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
        if out_layout.elem_count() == 0 {
            return Ok(Arc::new(buf)); // nothing to copy (strides may be saturated)
        }
        let stride = out_layout.strides()[dim];
        let mut start = 0;
        for (s, l) in inputs {
            let src = View::new("cat", self.get("cat", s)?, l)?;
            let slice = Layout::new(
                l.shape().clone(),
                out_layout.strides().to_vec(),
                start * stride,
            );
            copy_view(&src, &View::new("cat", &buf, &slice)?)?;
            start += l.dims()[dim];
        }
        Ok(Arc::new(buf))
    }

    fn unary(&self, op: UnaryOp, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        let src = self.get("unary", s)?;
        let x = View::new("unary", src, layout)?;
        let buf = self.buffer(src.dtype(), layout.elem_count())?;
        launch::unary(op, &x, &Span::all(&buf))?;
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
        let (a, b) = (self.get("binary", lhs)?, self.get("binary", rhs)?);
        let (x, z) = (
            View::new("binary", a, lhs_layout)?,
            View::new("binary", b, rhs_layout)?,
        );
        if a.dtype() != b.dtype() {
            return Err(Error::DTypeMismatch {
                op: "binary",
                msg: format!("{op:?} of {} and {}", a.dtype(), b.dtype()),
            });
        }
        let buf = self.buffer(a.dtype(), lhs_layout.elem_count())?;
        launch::binary(op, &x, &z, &Span::all(&buf))?;
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
        // The binary kernel reads element i of both inputs before writing element i, so the
        // output may be the first input.
        let (dv, sv) = (Span::all(d), Span::all(s));
        launch::binary(BinaryOp::Add, &dv.view(), &sv.view(), &dv)
    }
}
