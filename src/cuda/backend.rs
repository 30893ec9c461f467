//! [`CudaBackend`]: the engine's op families over hemi's CUDA kernels; each family's trait
//! implementation lives in `src/cuda/<family>.rs`. Families without kernels yet (conv, norm,
//! pool) use the traits' default bodies, which return `Unsupported` naming the op.

use super::alloc::CachingAllocator;
use super::driver::Driver;
use super::loss::launch as softmax;
use super::operand::Span;
use super::storage::{cuda_buffer, CudaBuffer};
use hemi_engine::backend::{BackendDevice, CrossEntropySpec};
use hemi_engine::{BackendStorage, DType, Device, Error, Result, StorageRef};
use std::sync::{Arc, Mutex, MutexGuard};

/// The CUDA backend of one device (a GPU or the emulator).
#[derive(Debug)]
pub struct CudaBackend {
    alloc: Arc<CachingAllocator>,
    /// The device buffer multi-tensor launches read their record tables from, grown as
    /// needed and reused, so a steady-state optimizer step allocates nothing.
    tables: Mutex<Option<CudaBuffer>>,
}

/// A launch table uploaded to the device; holds the table buffer until the launch is issued.
pub(crate) struct Table<'a> {
    _guard: MutexGuard<'a, Option<CudaBuffer>>,
    /// Device address of the first record.
    pub ptr: u64,
}

impl CudaBackend {
    /// A backend over `driver`, with a fresh caching allocator.
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        CudaBackend {
            alloc: Arc::new(CachingAllocator::new(driver)),
            tables: Mutex::new(None),
        }
    }

    /// The caching allocator (for `empty_cache`).
    pub fn allocator(&self) -> &Arc<CachingAllocator> {
        &self.alloc
    }

    pub(crate) fn driver(&self) -> &dyn Driver {
        self.alloc.driver().as_ref()
    }

    pub(crate) fn buffer(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        CudaBuffer::new(&self.alloc, dtype, len)
    }

    pub(crate) fn get<'a>(&self, op: &'static str, s: &'a StorageRef) -> Result<&'a CudaBuffer> {
        cuda_buffer(op, s, self.device())
    }

    pub(crate) fn expect_len(&self, op: &'static str, b: &CudaBuffer, want: usize) -> Result<()> {
        if b.len() != want {
            let msg = format!("buffer has {} elements, expected {want}", b.len());
            return Err(Error::ShapeMismatch { op, msg });
        }
        Ok(())
    }

    /// Uploads plain records (a multi-tensor launch's table) into the reused table buffer.
    /// Reuse is safe: uploads are ordered after every launch already issued (the drivers
    /// synchronize their stream before a copy), and the guard keeps other threads out until
    /// this launch is issued.
    pub(crate) fn upload_table<T: bytemuck::Pod>(&self, records: &[T]) -> Result<Table<'_>> {
        let bytes: &[u8] = bytemuck::cast_slice(records);
        let mut guard = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|b| b.bytes() < bytes.len()) {
            *guard = None;
            *guard = Some(self.buffer(DType::F32, bytes.len().div_ceil(4).max(64))?);
        }
        let Some(buf) = guard.as_ref() else {
            return Err(Error::Backend {
                device: self.device(),
                msg: "launch table buffer missing".into(),
            });
        };
        buf.write_bytes(0, bytes)?;
        let ptr = buf.ptr();
        Ok(Table { _guard: guard, ptr })
    }

    /// Checks cross-entropy inputs, including every target (one host read of the first bad
    /// row: PyTorch's device-side assert, as an `Err`).
    pub(crate) fn ce_inputs<'a>(
        &self,
        op: &'static str,
        logits: &'a StorageRef,
        targets: &'a StorageRef,
        (n, c): (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<(&'a CudaBuffer, &'a CudaBuffer)> {
        if !(0.0..=1.0).contains(&spec.label_smoothing) {
            let msg = format!("label_smoothing {} must be in [0, 1]", spec.label_smoothing);
            return Err(Error::InvalidArgument { op, msg });
        }
        let (x, t) = (self.get(op, logits)?, self.get(op, targets)?);
        self.expect_len(op, x, n * c)?;
        self.expect_len(op, t, n)?;
        if t.dtype() != DType::I64 {
            let msg = format!("targets must be int64 class indices, got {}", t.dtype());
            return Err(Error::DTypeMismatch { op, msg });
        }
        let bad = self.buffer(DType::I64, 1)?;
        bad.write_bytes(0, &(n as i64).to_le_bytes())?;
        softmax::validate_targets(&Span::all(t), c, spec.ignore_index, &Span::all(&bad))?;
        let mut b = [0u8; 8];
        bad.read_bytes(0, &mut b)?;
        let row = i64::from_le_bytes(b) as usize;
        if row < n {
            t.read_bytes(8 * row, &mut b)?;
            return Err(Error::TargetOutOfRange {
                op,
                target: i64::from_le_bytes(b),
                index: row,
                classes: c,
            });
        }
        Ok((x, t))
    }
}

/// The bit pattern of `value` rounded to `dtype` (as the CPU backend rounds it).
pub(crate) fn value_bits(dtype: DType, value: f64) -> u64 {
    use hemi_engine::{bf16, f16};
    match dtype {
        DType::F16 => u64::from(f16::from_f64(value).to_bits()),
        DType::BF16 => u64::from(bf16::from_f64(value).to_bits()),
        DType::F32 => u64::from((value as f32).to_bits()),
        DType::F64 => value.to_bits(),
        DType::I64 => (value as i64) as u64,
    }
}

impl BackendDevice for CudaBackend {
    fn device(&self) -> Device {
        self.alloc.driver().device()
    }
}
