//! The CPU backend's storage type: host memory that reports itself to [`crate::memory`].
//!
//! The elements sit behind a read-write lock so that training updates can write into an
//! existing buffer (every view of it sees the write) while other handles only read.

use crate::{memory, BackendStorage, CpuStorage, DType, Device, VersionCounter};
use std::any::Any;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Host memory owned by one tensor storage; counted in the CPU memory stats while alive.
#[derive(Debug)]
pub struct CpuBuffer {
    data: RwLock<CpuStorage>,
    dtype: DType,
    len: usize,
    version: VersionCounter,
}

impl CpuBuffer {
    /// Takes ownership of `data` and records its size.
    pub fn new(data: CpuStorage) -> Self {
        memory::record_alloc(Device::Cpu, data.size_in_bytes());
        CpuBuffer {
            dtype: data.dtype(),
            len: data.len(),
            data: RwLock::new(data),
            version: VersionCounter::default(),
        }
    }
    /// Shared access to the elements.
    pub fn read(&self) -> RwLockReadGuard<'_, CpuStorage> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Exclusive access to the elements, for in-place training updates (the length and dtype
    /// must not change).
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, CpuStorage> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        memory::record_free(Device::Cpu, self.len * self.dtype.size_in_bytes());
        // Large blocks go back to the host cache for the next op of the same size.
        let data = self.data.get_mut().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(data, CpuStorage::F32(Vec::new())) {
            CpuStorage::F16(v) => crate::alloc::recycle(v),
            CpuStorage::BF16(v) => crate::alloc::recycle(v),
            CpuStorage::F32(v) => crate::alloc::recycle(v),
            CpuStorage::F64(v) => crate::alloc::recycle(v),
            CpuStorage::I64(v) => crate::alloc::recycle(v),
        }
    }
}

impl BackendStorage for CpuBuffer {
    fn device(&self) -> Device {
        Device::Cpu
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
