//! Device buffers of the CUDA backend.

use super::alloc::CachingAllocator;
use super::driver::DevicePtr;
use hemi_engine::{BackendStorage, DType, Device, Error, Result, StorageRef, VersionCounter};
use std::any::Any;
use std::sync::Arc;

/// `len` elements of `dtype` in device memory from the caching allocator; returned to it on
/// drop.
#[derive(Debug)]
pub struct CudaBuffer {
    ptr: DevicePtr,
    block: usize,
    len: usize,
    dtype: DType,
    alloc: Arc<CachingAllocator>,
    version: VersionCounter,
}

impl CudaBuffer {
    /// A new uninitialized buffer.
    pub fn new(alloc: &Arc<CachingAllocator>, dtype: DType, len: usize) -> Result<Self> {
        let bytes = len
            .checked_mul(dtype.size_in_bytes())
            .ok_or(Error::OutOfMemory {
                device: alloc.driver().device(),
                requested: usize::MAX,
            })?;
        let (ptr, block) = alloc.alloc(bytes)?;
        Ok(CudaBuffer {
            ptr,
            block,
            len,
            dtype,
            alloc: alloc.clone(),
            version: VersionCounter::default(),
        })
    }
    /// Device address of element 0 (crate-private: launches take checked operands built from
    /// the buffer, `cuda::operand`, never a raw address from outside).
    pub(crate) fn ptr(&self) -> DevicePtr {
        self.ptr
    }
    /// The driver of the buffer's device.
    pub fn driver(&self) -> &Arc<dyn super::driver::Driver> {
        self.alloc.driver()
    }
    /// Size of the data in bytes.
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }
    /// Errors unless `offset .. offset + len` bytes lie inside the buffer.
    fn check_range(&self, op: &'static str, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.bytes()) {
            return Err(Error::ShapeMismatch {
                op,
                msg: format!("bytes {offset}..+{len} of a {}-byte buffer", self.bytes()),
            });
        }
        Ok(())
    }
    /// Copies host bytes into the buffer at byte `offset` (bounds-checked).
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check_range("upload", offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the range was checked to lie inside this live allocation of the driver.
        unsafe { self.driver().upload(self.ptr + offset as u64, src) }
    }
    /// Copies bytes from the buffer at byte `offset` to the host (bounds-checked).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check_range("download", offset, dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: as in `write_bytes`.
        unsafe { self.driver().download(self.ptr + offset as u64, dst) }
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        self.alloc.release(self.ptr, self.block);
    }
}

impl BackendStorage for CudaBuffer {
    fn device(&self) -> Device {
        self.alloc.driver().device()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn version(&self) -> &VersionCounter {
        &self.version
    }
}

/// Downcasts a storage to a CUDA buffer of `device`.
pub fn cuda_buffer<'a>(
    op: &'static str,
    s: &'a StorageRef,
    device: Device,
) -> Result<&'a CudaBuffer> {
    s.as_any()
        .downcast_ref::<CudaBuffer>()
        .filter(|b| b.device() == device)
        .ok_or(Error::DeviceMismatch {
            op,
            lhs: device,
            rhs: s.device(),
        })
}
