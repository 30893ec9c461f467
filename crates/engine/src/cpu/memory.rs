//! The CPU memory family: uploads are copies, `to_host` gathers, and `copy_into` writes a
//! view into an existing buffer (the in-place `Tensor::assign`).

use super::compute::{buffer, gather_same, host};
use super::{wrap, CpuBuffer};
use crate::backend::{check_bounds, check_copy_into};
use crate::{CpuStorage, DType, Error, Layout, Result, StorageRef};
use std::sync::Arc;

impl crate::backend::MemoryOps for super::CpuBackend {
    fn upload(&self, data: &CpuStorage) -> Result<StorageRef> {
        Ok(wrap(data.try_clone()?))
    }

    fn upload_owned(&self, data: CpuStorage) -> Result<StorageRef> {
        Ok(wrap(data))
    }

    fn to_host(&self, s: &StorageRef, layout: &Layout) -> Result<CpuStorage> {
        check_bounds("to_host", s, layout)?;
        gather_same(&*host("to_host", s)?, layout)
    }

    fn full(&self, dtype: DType, n: usize, value: f64) -> Result<StorageRef> {
        Ok(wrap(CpuStorage::full(dtype, n, value)?))
    }

    fn copy_strided(&self, s: &StorageRef, layout: &Layout) -> Result<StorageRef> {
        check_bounds("contiguous", s, layout)?;
        Ok(wrap(gather_same(&*host("contiguous", s)?, layout)?))
    }

    fn cast(&self, s: &StorageRef, layout: &Layout, dtype: DType) -> Result<StorageRef> {
        check_bounds("to_dtype", s, layout)?;
        Ok(wrap(super::elementwise::cast(
            &*host("to_dtype", s)?,
            layout,
            dtype,
        )?))
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
        let dbuf = buffer(OP, dst)?;
        let same_buffer = std::ptr::addr_eq(Arc::as_ptr(dst), Arc::as_ptr(src));
        if !same_buffer && src.dtype() == dst.dtype() && src_layout.is_contiguous() {
            // One copy straight from the source's buffer. Both locks are taken in address
            // order, so two threads copying between the same buffers in opposite directions
            // cannot deadlock.
            let sbuf = buffer(OP, src)?;
            let range = src_layout.offset()..src_layout.offset() + src_layout.elem_count();
            return if (sbuf as *const CpuBuffer) < (dbuf as *const CpuBuffer) {
                let s = sbuf.read();
                copy_range(&mut dbuf.write(), dst_offset, &s, range)
            } else {
                let mut d = dbuf.write();
                copy_range(&mut d, dst_offset, &sbuf.read(), range)
            };
        }
        // Gathered (and rounded to dst's dtype) before the write lock: `src` may be `dst`.
        let vals = super::elementwise::cast(&*host(OP, src)?, src_layout, dst.dtype())?;
        let n = vals.len();
        copy_range(&mut dbuf.write(), dst_offset, &vals, 0..n)
    }
}

/// Copies `src[range]` (same dtype) over `dst[offset .. offset + range.len()]` (the ranges
/// were checked by `check_copy_into`).
fn copy_range(
    dst: &mut CpuStorage,
    offset: usize,
    src: &CpuStorage,
    range: std::ops::Range<usize>,
) -> Result<()> {
    fn copy<T: Copy>(d: &mut [T], offset: usize, s: &[T], range: &std::ops::Range<usize>) {
        d[offset..offset + range.len()].copy_from_slice(&s[range.clone()]);
    }
    match (dst, src) {
        (CpuStorage::F16(d), CpuStorage::F16(s)) => copy(d, offset, s, &range),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => copy(d, offset, s, &range),
        (CpuStorage::F32(d), CpuStorage::F32(s)) => copy(d, offset, s, &range),
        (CpuStorage::F64(d), CpuStorage::F64(s)) => copy(d, offset, s, &range),
        (CpuStorage::I64(d), CpuStorage::I64(s)) => copy(d, offset, s, &range),
        (d, s) => {
            return Err(Error::dtype(
                "copy_into",
                format!("{} into {}", s.dtype(), d.dtype()),
            ))
        }
    }
    Ok(())
}
