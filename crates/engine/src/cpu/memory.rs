//! The CPU memory family: uploads are copies, `to_host` gathers, and `copy_into` writes a
//! view into an existing buffer (the in-place `Tensor::assign`).

use super::compute::{buffer, gather_same, host};
use super::wrap;
use crate::backend::{check_bounds, check_copy_into};
use crate::{CpuStorage, DType, Error, Layout, Result, StorageRef};

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
        // Gathered (and rounded to dst's dtype) before the write lock: `src` may be `dst`.
        let vals = super::elementwise::cast(&*host(OP, src)?, src_layout, dst.dtype())?;
        write_range(&mut dbuf.write(), dst_offset, &vals)
    }
}

/// Copies `src` (same dtype) over `dst[offset .. offset + src.len()]`.
fn write_range(dst: &mut CpuStorage, offset: usize, src: &CpuStorage) -> Result<()> {
    fn put<T: Copy>(d: &mut [T], offset: usize, s: &[T]) {
        d[offset..offset + s.len()].copy_from_slice(s);
    }
    match (dst, src) {
        (CpuStorage::F16(d), CpuStorage::F16(s)) => put(d, offset, s),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => put(d, offset, s),
        (CpuStorage::F32(d), CpuStorage::F32(s)) => put(d, offset, s),
        (CpuStorage::F64(d), CpuStorage::F64(s)) => put(d, offset, s),
        (CpuStorage::I64(d), CpuStorage::I64(s)) => put(d, offset, s),
        (d, s) => {
            return Err(Error::dtype(
                "copy_into",
                format!("{} into {}", s.dtype(), d.dtype()),
            ))
        }
    }
    Ok(())
}
