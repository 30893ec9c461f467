//! Constructors: filled tensors and tensors from host data.

use super::Tensor;
use crate::backend_for;
use crate::{CpuStorage, DType, Device, Element, Error, Result, Shape};

impl Tensor {
    /// A tensor of `shape` filled with `value` rounded to `dtype`.
    pub fn full(
        shape: impl Into<Shape>,
        value: f64,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.checked_elem_count("full")?;
        let s = backend_for(device)?.full(dtype, n, value)?;
        Ok(Tensor::contiguous_from(s, shape))
    }
    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype, device)
    }
    /// A tensor of ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype, device)
    }
    /// Zeros with the shape, dtype and device of `self`.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape().clone(), self.dtype(), self.device())
    }
    /// Ones with the shape, dtype and device of `self`.
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape().clone(), self.dtype(), self.device())
    }
    /// A one-element tensor of shape `[]`.
    pub fn scalar(value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full((), value, dtype, device)
    }
    /// A tensor holding `data` (row-major) with the given shape; the length must match.
    pub fn from_vec<T: Element>(
        data: Vec<T>,
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.checked_elem_count("from_vec")?;
        if data.len() != n {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements for shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        Tensor::from_host(CpuStorage::from_vec(data), shape, device)
    }
    /// A tensor copied from a slice (row-major) with the given shape.
    pub fn from_slice<T: Element>(
        data: &[T],
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Tensor> {
        Tensor::from_vec(crate::alloc::copy_of(data)?, shape, device)
    }
    /// A tensor from host storage with the given shape; the length must match.
    pub fn from_host(data: CpuStorage, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.checked_elem_count("from_host")? {
            return Err(Error::shape(
                "from_host",
                format!("{} elements for shape {shape:?}", data.len()),
            ));
        }
        // Host data becomes a CPU tensor's storage as it is (no copy); other devices upload it.
        let s = backend_for(device)?.upload_owned(data)?;
        Ok(Tensor::contiguous_from(s, shape))
    }
}
