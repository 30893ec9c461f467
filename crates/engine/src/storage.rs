//! Tensor storage: the host representation [`CpuStorage`] and the backend-agnostic
//! [`BackendStorage`] that every device's buffer implements.

use crate::{DType, Device, Element, Error, Result};
use half::{bf16, f16};
use std::any::Any;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts the in-place writes to one storage (PyTorch's version counter). Every view and
/// detached handle of the storage sees the same count; autograd compares it with the count
/// a saved tensor had when it was saved.
#[derive(Debug, Default)]
pub struct VersionCounter(AtomicU64);

impl VersionCounter {
    /// The current version (0 for a fresh storage).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    /// Records one in-place write.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// A device buffer of one dtype. Backends downcast it to their concrete type with `as_any`.
pub trait BackendStorage: Any + Send + Sync + Debug {
    /// The device holding the buffer.
    fn device(&self) -> Device;
    /// The element type.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when the buffer has no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// For downcasting to the backend's concrete buffer type.
    fn as_any(&self) -> &dyn Any;
    /// The storage's in-place write counter.
    fn version(&self) -> &VersionCounter;
}

/// Shared handle to a device buffer.
pub type StorageRef = Arc<dyn BackendStorage>;

/// Host memory of one dtype.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum CpuStorage {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl CpuStorage {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::I64(_) => DType::I64,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
        }
    }
    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Wraps a vector of any element type.
    pub fn from_vec<T: Element>(v: Vec<T>) -> CpuStorage {
        T::into_storage(v)
    }
    /// `n` copies of `value`, rounded to `dtype`; `Err(OutOfMemory)` when the host cannot
    /// hold them.
    pub fn full(dtype: DType, n: usize, value: f64) -> Result<CpuStorage> {
        use crate::alloc::filled;
        Ok(match dtype {
            DType::F16 => CpuStorage::F16(filled(n, f16::from_f64(value))?),
            DType::BF16 => CpuStorage::BF16(filled(n, bf16::from_f64(value))?),
            DType::F32 => CpuStorage::F32(filled(n, value as f32)?),
            DType::F64 => CpuStorage::F64(filled(n, value)?),
            DType::I64 => CpuStorage::I64(filled(n, value as i64)?),
        })
    }
    /// A copy, or `Err(OutOfMemory)` when the host cannot hold it (`clone` aborts instead).
    pub fn try_clone(&self) -> Result<CpuStorage> {
        use crate::alloc::copy_of;
        Ok(match self {
            CpuStorage::F16(v) => CpuStorage::F16(copy_of(v)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(copy_of(v)?),
            CpuStorage::F32(v) => CpuStorage::F32(copy_of(v)?),
            CpuStorage::F64(v) => CpuStorage::F64(copy_of(v)?),
            CpuStorage::I64(v) => CpuStorage::I64(copy_of(v)?),
        })
    }
    /// Borrows the elements as `T`; errors when `T` is not this storage's dtype.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        T::slice_of(self).ok_or(Error::ReadBack {
            requested: T::DTYPE,
            actual: self.dtype(),
        })
    }
    /// Size in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }
    /// The elements as little-endian bytes (this crate targets little-endian hosts).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::F64(v) => bytemuck::cast_slice(v),
            CpuStorage::I64(v) => bytemuck::cast_slice(v),
        }
    }
    /// The elements as mutable little-endian bytes (to fill a buffer from a device or a file).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            CpuStorage::F16(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::F32(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::F64(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::I64(v) => bytemuck::cast_slice_mut(v),
        }
    }
    /// Elements of `dtype` from little-endian bytes (any alignment; a trailing partial
    /// element is an error; `Err(OutOfMemory)` when the host cannot hold the copy).
    pub fn from_bytes(dtype: DType, b: &[u8]) -> Result<CpuStorage> {
        if !b.len().is_multiple_of(dtype.size_in_bytes()) {
            return Err(Error::InvalidArgument {
                op: "from_bytes",
                msg: format!(
                    "{} bytes are not a whole number of {dtype} elements",
                    b.len()
                ),
            });
        }
        Ok(match dtype {
            DType::F16 => CpuStorage::F16(pod_vec(b)?),
            DType::BF16 => CpuStorage::BF16(pod_vec(b)?),
            DType::F32 => CpuStorage::F32(pod_vec(b)?),
            DType::F64 => CpuStorage::F64(pod_vec(b)?),
            DType::I64 => CpuStorage::I64(pod_vec(b)?),
        })
    }
}

/// `b` reinterpreted as `T`s (`b.len()` a multiple of `T`'s size) in a fresh, aligned vector.
fn pod_vec<T: bytemuck::Pod>(b: &[u8]) -> Result<Vec<T>> {
    let n = b.len() / std::mem::size_of::<T>();
    let mut v = crate::alloc::filled(n, T::zeroed())?;
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(b);
    Ok(v)
}

/// Conversion between typed vectors and [`CpuStorage`]; implemented for every [`Element`].
pub trait StorageElement: Sized {
    /// Wraps a vector.
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    /// Borrows the vector if the dtype matches.
    fn slice_of(s: &CpuStorage) -> Option<&[Self]>;
    /// Takes the vector out if the dtype matches (no copy).
    fn from_storage(s: CpuStorage) -> Option<Vec<Self>>;
}

macro_rules! storage_element {
    ($t:ty, $v:ident) => {
        impl StorageElement for $t {
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
            fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn from_storage(s: CpuStorage) -> Option<Vec<Self>> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
storage_element!(f16, F16);
storage_element!(bf16, BF16);
storage_element!(f32, F32);
storage_element!(f64, F64);
storage_element!(i64, I64);
