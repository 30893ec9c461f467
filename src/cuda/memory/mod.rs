//! The CUDA memory family: `MemoryOps` for [`CudaBackend`].

pub(crate) mod launch;

use super::backend::{value_bits, CudaBackend};
use super::operand::{Span, View};
use hemi_engine::backend::*;
use hemi_engine::{BackendStorage, CpuStorage, DType, Layout, Result, StorageRef};
use std::sync::Arc;

impl MemoryOps for CudaBackend {
    fn upload(&self, data: &CpuStorage) -> Result<StorageRef> {
        let buf = self.buffer(data.dtype(), data.len())?;
        if !data.is_empty() {
            buf.write_bytes(0, data.as_bytes())?;
        }
        Ok(Arc::new(buf))
    }

    fn to_host(&self, s: &StorageRef, layout: &Layout) -> Result<CpuStorage> {
        check_bounds("to_host", s, layout)?;
        let contiguous = self.copy_strided(s, layout)?;
        let buf = self.get("to_host", &contiguous)?;
        // One host allocation, read into directly (fallible: a device tensor larger than host
        // memory is `Err(OutOfMemory)` on the CPU).
        let mut out = CpuStorage::full(buf.dtype(), buf.len(), 0.0)?;
        if !out.is_empty() {
            buf.read_bytes(0, out.as_bytes_mut())?;
        }
        Ok(out)
    }

    fn full(&self, dtype: DType, n: usize, value: f64) -> Result<StorageRef> {
        let buf = self.buffer(dtype, n)?;
        launch::fill(&Span::all(&buf), value_bits(dtype, value))?;
        Ok(Arc::new(buf))
    }

    fn copy_strided(&self, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        let src = self.get("contiguous", s)?;
        let x = View::new("contiguous", src, layout)?;
        let buf = self.buffer(src.dtype(), layout.elem_count())?;
        launch::copy_strided(&x, &Span::all(&buf))?;
        Ok(Arc::new(buf))
    }

    fn cast(&self, s: &StorageRef, layout: &Layout, dtype: DType) -> Result<StorageRef> {
        let src = self.get("to_dtype", s)?;
        if src.dtype() == dtype {
            return self.copy_strided(s, layout);
        }
        let x = View::new("to_dtype", src, layout)?;
        let buf = self.buffer(dtype, layout.elem_count())?;
        launch::cast(&x, &Span::all(&buf))?;
        Ok(Arc::new(buf))
    }

    fn copy_into(
        &self,
        dst: &StorageRef,
        dst_offset: usize,
        src: &StorageRef,
        src_layout: &Layout,
    ) -> Result<()> {
        const OP: &str = "copy_into";
        check_copy_into(dst, dst_offset, src, src_layout)?;
        let d = self.get(OP, dst)?;
        let n = src_layout.elem_count();
        let y = Span::new(OP, d, dst_offset, n)?;
        // A source in the destination's own buffer may overlap it: copy through a temporary.
        let staged;
        let (s, l) = if Arc::ptr_eq(dst, src) {
            staged = self.copy_strided(src, src_layout)?;
            (
                self.get(OP, &staged)?,
                Layout::contiguous(src_layout.shape().clone()),
            )
        } else {
            (self.get(OP, src)?, src_layout.clone())
        };
        let x = View::new(OP, s, &l)?;
        if s.dtype() == d.dtype() {
            launch::copy_strided(&x, &y)
        } else {
            launch::cast(&x, &y)
        }
    }
}
