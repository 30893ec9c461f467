//! The memory family: moving data between the host and a device, filling, copying, casting,
//! and the in-place copy behind `Tensor::assign`.

use super::{check_bounds, BackendDevice};
use crate::{CpuStorage, DType, Error, Layout, Result, StorageRef};

/// Checks the arguments of [`MemoryOps::copy_into`]: `src_layout` inside `src`, and the
/// `elem_count` elements from `dst_offset` inside `dst`.
pub fn check_copy_into(
    dst: &StorageRef,
    dst_offset: usize,
    src: &StorageRef,
    src_layout: &Layout,
) -> Result<()> {
    check_bounds("copy_into", src, src_layout)?;
    let n = src_layout.elem_count();
    if dst_offset.checked_add(n).is_none_or(|end| end > dst.len()) {
        return Err(Error::shape(
            "copy_into",
            format!(
                "{n} elements at offset {dst_offset} of a {}-element buffer",
                dst.len()
            ),
        ));
    }
    Ok(())
}

/// Transfers, fills, strided copies and casts.
pub trait MemoryOps: BackendDevice {
    /// Copies host data to a new device buffer.
    fn upload(&self, data: &CpuStorage) -> Result<StorageRef>;
    /// Moves host data into a new device buffer; the default uploads a copy, the CPU backend
    /// keeps the vector itself (no second host buffer).
    fn upload_owned(&self, data: CpuStorage) -> Result<StorageRef> {
        self.upload(&data)
    }
    /// Copies the elements of `layout` (in logical order) back to the host.
    fn to_host(&self, s: &StorageRef, layout: &Layout) -> Result<CpuStorage>;
    /// A buffer of `n` elements, all `value` rounded to `dtype`.
    fn full(&self, dtype: DType, n: usize, value: f64) -> Result<StorageRef>;
    /// Materializes a strided view as a contiguous buffer of the same dtype.
    fn copy_strided(&self, s: &StorageRef, layout: &Layout) -> Result<StorageRef>;
    /// Converts a strided view to `dtype` (round to nearest even; contiguous output).
    fn cast(&self, s: &StorageRef, layout: &Layout, dtype: DType) -> Result<StorageRef>;
    /// In place: writes the elements of the view `src` (any float dtype, rounded to `dst`'s
    /// dtype) into the contiguous range of `dst` that starts at element `dst_offset` (as many
    /// elements as `src_layout` has). `src` may be `dst` itself.
    fn copy_into(
        &self,
        dst: &StorageRef,
        dst_offset: usize,
        src: &StorageRef,
        src_layout: &Layout,
    ) -> Result<()>;
}
