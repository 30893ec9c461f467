//! Host staging for collectives of libraries that take host memory (MPI): a tensor's values
//! as a flat buffer of a type the library reduces natively, and back.

#[cfg(feature = "mpi")]
use crate::{DType, Device};
use crate::{Error, Result, Tensor};

/// A tensor's values on the host: f32 (f16 and bf16 widened exactly), f64 or i64.
#[cfg(feature = "mpi")]
#[derive(Debug, Clone)]
pub(crate) enum HostBuf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

#[cfg(feature = "mpi")]
impl HostBuf {
    /// `tensor`'s values in logical order, widened where needed.
    pub(crate) fn read(tensor: &Tensor) -> Result<HostBuf> {
        Ok(match tensor.dtype() {
            DType::F32 => HostBuf::F32(tensor.to_vec()?),
            DType::F16 | DType::BF16 => HostBuf::F32(tensor.to_dtype(DType::F32)?.to_vec()?),
            DType::F64 => HostBuf::F64(tensor.to_vec()?),
            DType::I64 => HostBuf::I64(tensor.to_vec()?),
        })
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            HostBuf::F32(v) => v.len(),
            HostBuf::F64(v) => v.len(),
            HostBuf::I64(v) => v.len(),
        }
    }

    /// Writes the values into `tensor` in place (rounded once to its dtype).
    pub(crate) fn write(self, tensor: &Tensor) -> Result<()> {
        tensor.assign(&self.into_tensor_like(tensor)?)
    }

    /// The values as a new tensor of `like`'s shape, dtype (rounded once) and device; on the
    /// CPU with `like`'s dtype without a copy.
    pub(crate) fn into_tensor_like(self, like: &Tensor) -> Result<Tensor> {
        let shape = like.shape().clone();
        let t = match self {
            HostBuf::F32(v) => Tensor::from_vec(v, shape, Device::Cpu)?,
            HostBuf::F64(v) => Tensor::from_vec(v, shape, Device::Cpu)?,
            HostBuf::I64(v) => Tensor::from_vec(v, shape, Device::Cpu)?,
        };
        let t = if t.dtype() == like.dtype() {
            t
        } else {
            t.to_dtype(like.dtype())?
        };
        t.to_device(like.device())
    }
}

/// Collectives reduce in place: the tensor must be contiguous.
pub(crate) fn check_contiguous(op: &'static str, t: &Tensor) -> Result<()> {
    if t.layout().is_contiguous() {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!(
                "collectives work in place on contiguous tensors; this {:?} tensor is a strided \
                 view (reduce a .contiguous() copy and assign it back)",
                t.dims()
            ),
        ))
    }
}

/// A root rank must exist.
pub(crate) fn check_root(op: &'static str, root: usize, world: usize) -> Result<()> {
    if root < world {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("root rank {root} is out of range for a world of {world} ranks"),
        ))
    }
}
