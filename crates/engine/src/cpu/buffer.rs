//! The CPU backend's storage type: host memory that reports itself to [`crate::memory`].

use crate::{memory, BackendStorage, CpuStorage, DType, Device};
use std::any::Any;

/// Host memory owned by one tensor storage; counted in the CPU memory stats while alive.
#[derive(Debug)]
pub struct CpuBuffer {
    data: CpuStorage,
}

impl CpuBuffer {
    /// Takes ownership of `data` and records its size.
    pub fn new(data: CpuStorage) -> Self {
        memory::record_alloc(Device::Cpu, data.size_in_bytes());
        CpuBuffer { data }
    }
    /// The elements.
    pub fn data(&self) -> &CpuStorage {
        &self.data
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        memory::record_free(Device::Cpu, self.data.size_in_bytes());
    }
}

impl BackendStorage for CpuBuffer {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> DType {
        self.data.dtype()
    }
    fn len(&self) -> usize {
        self.data.len()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
